"""Error types. Each message names the op, the shapes/dtypes involved and the fix."""


class OpError(ValueError):
    """An op received inputs it cannot handle."""


class ShapeError(OpError):
    """Input shapes are incompatible for an op."""


class IndexingError(OpError, IndexError):
    """An index out of range, too many indices, or a mask of the wrong shape. It is an
    IndexError, as in PyTorch and NumPy, and an OpError like ember's other op errors."""


class GradError(RuntimeError):
    """Backward was asked for something autograd cannot do."""
