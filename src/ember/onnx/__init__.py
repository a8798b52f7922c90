"""ONNX interop: ``export`` writes a model to an ONNX file through the tracer and each
primitive's ONNX mapping; ``load`` runs an ONNX file as an ember model; ``backend`` is the
standard ONNX backend interface."""

from .export import DEFAULT_OPSET, NotExportable, export  # noqa: F401
from .importer import OPS, OnnxModel, UnsupportedOp  # noqa: F401


def load(path, trainable=True):
    """An ONNX file as an ``em.Model`` running with ember ops (eval mode)."""
    from . import ops as _ops  # noqa: F401  (fills the op table)
    from .importer import load as _load

    return _load(path, trainable)
