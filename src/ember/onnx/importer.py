"""``em.onnx.load``: an ONNX file as an ``em.Model`` that runs the graph with ember ops.

Every ONNX node is evaluated by a function in ``OPS`` written with ember's tensor ops, so
an imported model supports everything an ember model does: autograd and fine-tuning (float
initializers become parameters), ``em.jit``, ``fit``, saving. An ONNX op without an entry
in ``OPS`` raises ``UnsupportedOp`` naming it, never a wrong result.
"""

from __future__ import annotations

import re

import numpy as np

from .. import nn
from ..errors import OpError
from ..tensor import Tensor
from ..training.model import Model


class UnsupportedOp(OpError):
    """An ONNX operator (or attribute value) that ember does not implement."""


#: op_type -> fn(node_ctx, *inputs) -> output tensor or tuple of outputs
OPS: dict = {}


def op(*names):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return register


class NodeContext:
    """An ONNX node's attributes and opset, as the op functions see them."""

    def __init__(self, node, opset, model):
        self.node, self.opset, self.model = node, opset, model
        self._attrs = None

    @property
    def attrs(self):
        if self._attrs is None:
            from onnx import helper

            self._attrs = {a.name: helper.get_attribute_value(a) for a in self.node.attribute}
            for k, v in list(self._attrs.items()):
                if isinstance(v, bytes):
                    self._attrs[k] = v.decode()
        return self._attrs

    def attr(self, name, default=None):
        return self.attrs.get(name, default)

    def unsupported(self, what):
        return UnsupportedOp(f"ONNX {self.node.op_type} (node '{self.node.name}'): {what} is not supported by ember")

    @property
    def n_outputs(self):
        return len(self.node.output)


def _safe_name(name):
    s = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    return s if s and not s[0].isdigit() else "p_" + s


class OnnxModel(Model):
    """An imported ONNX graph. ``forward(*inputs)`` takes the graph inputs in order (those
    with initializers excluded) and returns the output, or a tuple of outputs."""

    def __init__(self, path_or_bytes=None, trainable=True, _proto=None):
        super().__init__(name="onnx_model")
        import onnx

        proto = _proto if _proto is not None else (
            onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray))
            else onnx.load(str(path_or_bytes)))
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "opset", next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                                               1))
        graph = proto.graph
        from onnx import numpy_helper

        names = {}
        for init in graph.initializer:
            arr = numpy_helper.to_array(init).copy()
            attr = _safe_name(init.name)
            while attr in self.__dict__ or attr in names.values():
                attr += "_"
            if trainable and arr.dtype.kind == "f":
                self.register_parameter(attr, nn.Parameter(Tensor._make(arr)))
            else:
                self.register_buffer(attr, Tensor._make(arr))
            names[init.name] = attr
        object.__setattr__(self, "_initializer_attrs", names)
        initialized = set(names)
        object.__setattr__(self, "input_names", [i.name for i in graph.input if i.name not in initialized])
        object.__setattr__(self, "output_names", [o.name for o in graph.output])
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedOp(f"ONNX node '{node.name}' is from domain '{node.domain}', which ember does "
                                    "not support")
            if node.op_type not in OPS:
                raise UnsupportedOp(f"ONNX operator {node.op_type} (node '{node.name}') is not supported by ember; "
                                    f"supported operators: {', '.join(sorted(OPS))}")
        for role, values in (("input", graph.input), ("output", graph.output)):
            for value in values:
                kind = value.type.WhichOneof("value")
                if kind not in (None, "tensor_type"):  # ember values are tensors: no sequences, optionals, maps
                    raise UnsupportedOp(f"ONNX graph {role} '{value.name}' has type "
                                        f"{kind.replace('_type', '')}, which ember does not support (only tensors)")

    def forward(self, *inputs):
        env = run_graph(self.proto.graph, self, self.opset, dict(zip(self.input_names, inputs)))
        outs = [env[name] for name in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _as_tensor(x):
    if isinstance(x, Tensor) or x is None:
        return x
    return Tensor._make(np.asarray(x))


def run_graph(graph, model, opset, feeds, outer=None):
    """Evaluate an ONNX graph on ember tensors; returns the environment (name -> tensor).
    ``outer``: values visible from an enclosing graph (for If/Loop bodies)."""
    from onnx import numpy_helper

    env = dict(outer or {})
    for init in graph.initializer:
        attr = getattr(model, "_initializer_attrs", {}).get(init.name) if model is not None else None
        env[init.name] = getattr(model, attr) if attr else Tensor._make(numpy_helper.to_array(init).copy())
    for name, value in feeds.items():
        env[name] = _as_tensor(value)
    for node in graph.node:
        fn = OPS.get(node.op_type)
        if fn is None:
            raise UnsupportedOp(f"ONNX operator {node.op_type} (node '{node.name}') is not supported by ember")
        args = [env[name] if name else None for name in node.input]
        ctx = NodeContext(node, opset, model)
        ctx.env = env
        out = fn(ctx, *args)
        outs = out if isinstance(out, tuple) else (out,)
        for name, value in zip(node.output, outs):
            if name:
                env[name] = _as_tensor(value)
    return env


def load(path, trainable=True) -> OnnxModel:
    """Load an ONNX model file as an ember model (eval mode; call ``.train()`` to fine-tune)."""
    from . import ops as _ops  # noqa: F401  (fills OPS)

    model = OnnxModel(path, trainable=trainable)
    model.eval()
    return model
