"""ONNX's standard backend interface over ember (``onnx.backend.base.Backend``), so the ONNX
project's own backend test-suite can measure conformance (``benchmarks/onnx_conformance.py``)."""

from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep

from ..autograd.engine import no_grad
from ..tensor import Tensor
from . import ops as _ops  # noqa: F401  (fills the op table)
from .importer import OnnxModel


class EmberRep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            inputs = [inputs[name] for name in self.model.input_names]
        elif not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        with no_grad():
            out = self.model(*[Tensor._make(np.asarray(a)) for a in inputs])
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o.data if isinstance(o, Tensor) else np.asarray(o) for o in outs)


class EmberBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        m = OnnxModel(_proto=model, trainable=False)
        m.eval()
        return EmberRep(m)

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"


prepare = EmberBackend.prepare
run_model = EmberBackend.run_model
supports_device = EmberBackend.supports_device
