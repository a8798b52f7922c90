"""Activations as modules (thin wrappers over ember.nn.functional)."""

from __future__ import annotations

from .. import functional as F
from ..module import Module


class _Act(Module):
    fn = None

    def forward(self, x):
        return type(self).fn(x)


def _simple(name, fn, doc):
    cls = type(name, (_Act,), {"fn": staticmethod(fn), "__doc__": doc})

    def __init__(self, inplace=False):  # `inplace` accepted for PyTorch compatibility
        Module.__init__(self)

    cls.__init__ = __init__
    return cls


ReLU = _simple("ReLU", F.relu, "max(x, 0)")
Sigmoid = _simple("Sigmoid", F.sigmoid, "1 / (1 + exp(-x))")
Tanh = _simple("Tanh", F.tanh, "tanh(x)")
SiLU = _simple("SiLU", F.silu, "x * sigmoid(x)")
Mish = _simple("Mish", F.mish, "x * tanh(softplus(x))")
ReLU6 = _simple("ReLU6", F.relu6, "min(max(x, 0), 6)")
SELU = _simple("SELU", F.selu, "scaled ELU")
Hardswish = _simple("Hardswish", F.hardswish, "x * hardsigmoid(x)")
Hardsigmoid = _simple("Hardsigmoid", F.hardsigmoid, "clamp(x / 6 + 0.5, 0, 1)")
LogSigmoid = _simple("LogSigmoid", F.logsigmoid, "log(sigmoid(x))")
Softsign = _simple("Softsign", F.softsign, "x / (1 + |x|)")


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softplus(Module):
    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        return F.softplus(x, self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class Hardtanh(Module):
    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x):
        return F.hardtanh(x, self.min_val, self.max_val)


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, -1 if self.dim is None else self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, -1 if self.dim is None else self.dim)


class GLU(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.glu(x, self.dim)


class Dropout(Module):
    """Zeroes elements with probability p while training; identity in eval mode."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
