"""ONNX interop: ``export`` writes a model to an ONNX file through the tracer and each
primitive's ONNX mapping."""

from .export import DEFAULT_OPSET, NotExportable, export  # noqa: F401
