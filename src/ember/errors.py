"""Error types. Each message names the op, the shapes/dtypes involved and the fix."""


class OpError(ValueError):
    """An op received inputs it cannot handle."""


class ShapeError(OpError):
    """Input shapes are incompatible for an op."""


class GradError(RuntimeError):
    """Backward was asked for something autograd cannot do."""
