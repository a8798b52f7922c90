"""Linear, Bilinear, Identity, Flatten, Unflatten."""

from __future__ import annotations

import math

from ... import creation
from .. import functional as F
from .. import init
from ..module import Module, Parameter


def _dtype_np(dtype):
    from ...dtypes import default_float, get_dtype

    return (default_float if dtype is None else get_dtype(dtype))


class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), PyTorch's init."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: feature sizes must be positive, got in_features="
                             f"{in_features}, out_features={out_features}")
        self.in_features, self.out_features = in_features, out_features
        d = _dtype_np(dtype)
        self.weight = Parameter(creation.empty(out_features, in_features, dtype=d))
        self.bias = Parameter(creation.empty(out_features, dtype=d)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if x.shape[-1:] != (self.in_features,):
            from ...errors import ShapeError

            raise ShapeError(f"Linear(in_features={self.in_features}, out_features="
                             f"{self.out_features}): input has shape {x.shape}, expected the last "
                             f"dim to be {self.in_features}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Bilinear(Module):
    def __init__(self, in1_features, in2_features, out_features, bias=True, dtype=None):
        super().__init__()
        d = _dtype_np(dtype)
        self.in1_features, self.in2_features, self.out_features = in1_features, in2_features, out_features
        self.weight = Parameter(creation.empty(out_features, in1_features, in2_features, dtype=d))
        self.bias = Parameter(creation.empty(out_features, dtype=d)) if bias else None
        bound = 1 / math.sqrt(in1_features)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x1, x2):
        return F.bilinear(x1, x2, self.weight, self.bias)

    def extra_repr(self):
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, x):
        return x.unflatten(self.dim, self.unflattened_size)

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
