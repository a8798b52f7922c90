"""ember's op library. Each submodule registers primitives (``registry.PRIMITIVES``) and the
public functions built on them; this module attaches those functions to ``Tensor`` as
methods and operators."""

from __future__ import annotations

from .. import dtypes as _dt
from ..tensor import Tensor
from . import elementwise as ew
from . import indexing as ix
from . import inplace as ip
from . import linalg as la
from . import movement as mv
from . import nn as nnops
from . import quantized as _quantized  # noqa: F401  (registers the int8 primitives)
from . import reduce as rd
from .registry import PRIMITIVES, Meta, Primitive, apply, primitive  # noqa: F401


def _swap(fn):
    return lambda self, other: fn(other, self)


def _to(self, *args, **kwargs):
    """``t.to(dtype)`` (devices other than 'cpu' are rejected)."""
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, str) and a in ("cpu",) or a is None:
            continue
        if isinstance(a, str) and a.startswith(("cuda", "mps")):
            raise RuntimeError(f"to({a!r}): ember runs on the CPU only")
        dtype = a
    device = kwargs.get("device")
    if device not in (None, "cpu"):
        raise RuntimeError(f"to(device={device!r}): ember runs on the CPU only")
    return self if dtype is None else ew.astype(self, dtype)


def _iop(name):
    fn = getattr(ip, name)
    return lambda self, other: fn(self, other)


_METHODS = {
    # operators
    "__add__": ew.add, "__radd__": _swap(ew.add),
    "__sub__": ew.sub, "__rsub__": _swap(ew.sub),
    "__mul__": ew.mul, "__rmul__": _swap(ew.mul),
    "__truediv__": ew.div, "__rtruediv__": _swap(ew.div),
    "__floordiv__": ew.floor_divide, "__rfloordiv__": _swap(ew.floor_divide),
    "__mod__": ew.remainder, "__rmod__": _swap(ew.remainder),
    "__pow__": ew.pow, "__rpow__": _swap(ew.pow),
    "__matmul__": la.matmul, "__rmatmul__": _swap(la.matmul),
    "__neg__": ew.neg, "__pos__": lambda self: self, "__abs__": ew.abs,
    "__invert__": ew.bitwise_not,
    "__and__": ew.bitwise_and, "__rand__": _swap(ew.bitwise_and),
    "__or__": ew.bitwise_or, "__ror__": _swap(ew.bitwise_or),
    "__xor__": ew.bitwise_xor, "__rxor__": _swap(ew.bitwise_xor),
    "__eq__": ew.eq, "__ne__": ew.ne, "__lt__": ew.lt, "__le__": ew.le, "__gt__": ew.gt,
    "__ge__": ew.ge,
    "__getitem__": ix.getitem, "__setitem__": ix.setitem,
    "__iadd__": _iop("add_"), "__isub__": _iop("sub_"), "__imul__": _iop("mul_"),
    "__itruediv__": _iop("div_"),
    # elementwise
    "add": ew.add, "sub": ew.sub, "subtract": ew.sub, "mul": ew.mul, "multiply": ew.mul,
    "div": ew.div, "divide": ew.div, "true_divide": ew.div, "floor_divide": ew.floor_divide,
    "remainder": ew.remainder, "fmod": ew.remainder, "pow": ew.pow, "maximum": ew.maximum,
    "minimum": ew.minimum, "neg": ew.neg, "negative": ew.neg, "exp": ew.exp, "log": ew.log,
    "log1p": ew.log1p, "expm1": ew.expm1, "sqrt": ew.sqrt, "rsqrt": ew.rsqrt, "abs": ew.abs,
    "sign": ew.sign, "sin": ew.sin, "cos": ew.cos, "asin": ew.asin, "acos": ew.acos, "atan": ew.atan,
    "tanh": ew.tanh, "sigmoid": ew.sigmoid,
    "relu": ew.relu, "erf": ew.erf, "floor": ew.floor, "ceil": ew.ceil, "round": ew.round,
    "trunc": ew.trunc, "clamp": ew.clamp, "clip": ew.clamp, "square": ew.square,
    "reciprocal": ew.reciprocal, "lerp": ew.lerp, "eq": ew.eq, "ne": ew.ne, "lt": ew.lt,
    "le": ew.le, "gt": ew.gt, "ge": ew.ge, "logical_and": ew.logical_and,
    "logical_or": ew.logical_or, "logical_xor": ew.logical_xor, "logical_not": ew.logical_not,
    "isnan": ew.isnan, "isinf": ew.isinf, "isfinite": ew.isfinite,
    "where": lambda self, c, o: ew.where(c, self, o),
    "tril": ew.tril, "triu": ew.triu, "softmax": nnops.softmax, "log_softmax": nnops.log_softmax,
    # dtype
    "astype": ew.astype, "type": ew.astype, "to": _to,
    "float": lambda self: ew.astype(self, _dt.float32),
    "double": lambda self: ew.astype(self, _dt.float64),
    "half": lambda self: ew.astype(self, _dt.float16),
    "long": lambda self: ew.astype(self, _dt.int64),
    "int": lambda self: ew.astype(self, _dt.int32),
    "bool": lambda self: ew.astype(self, _dt.bool_),
    "cpu": lambda self: self,
    # reductions
    "sum": rd.sum, "mean": rd.mean, "amax": rd.amax, "amin": rd.amin, "max": rd.max,
    "min": rd.min, "argmax": rd.argmax, "argmin": rd.argmin, "prod": rd.prod, "var": rd.var,
    "std": rd.std, "logsumexp": rd.logsumexp, "cumsum": rd.cumsum, "cumprod": rd.cumprod,
    "all": rd.all, "any": rd.any, "norm": rd.norm, "sum_to_shape": rd.sum_to_shape,
    "count_nonzero": rd.count_nonzero,
    # linear algebra
    "matmul": la.matmul, "mm": la.mm, "bmm": la.bmm, "dot": la.dot, "outer": la.outer,
    # shape
    "reshape": mv.reshape, "view": mv.view, "permute": mv.permute, "transpose": mv.transpose,
    "swapaxes": mv.transpose, "t": mv.t, "movedim": mv.movedim, "expand": mv.expand,
    "expand_as": mv.expand_as, "broadcast_to": mv.broadcast_to, "squeeze": mv.squeeze,
    "unsqueeze": mv.unsqueeze, "flatten": mv.flatten, "unflatten": mv.unflatten,
    "split": mv.split, "chunk": mv.chunk, "unbind": mv.unbind, "narrow": mv.narrow,
    "flip": mv.flip, "repeat": mv.repeat, "tile": mv.tile,
    "repeat_interleave": mv.repeat_interleave, "roll": mv.roll, "clone": mv.clone,
    "contiguous": mv.contiguous,
    "view_as": lambda self, other: mv.reshape(self, other.shape),
    "reshape_as": lambda self, other: mv.reshape(self, other.shape),
    # indexing
    "gather": ix.gather, "scatter": ix.scatter, "scatter_add": ix.scatter_add,
    "index_select": ix.index_select, "index_add": ix.index_add, "masked_fill": ix.masked_fill,
    "masked_select": ix.masked_select, "take": ix.take, "take_along_dim": ix.take_along_dim,
    "nonzero": ix.nonzero,
    # in place
    "add_": ip.add_, "sub_": ip.sub_, "mul_": ip.mul_, "div_": ip.div_, "pow_": ip.pow_,
    "copy_": ip.copy_, "fill_": ip.fill_, "zero_": ip.zero_, "clamp_": ip.clamp_,
    "clip_": ip.clamp_, "exp_": ip.exp_, "log_": ip.log_, "sqrt_": ip.sqrt_, "neg_": ip.neg_,
    "abs_": ip.abs_, "relu_": ip.relu_, "sigmoid_": ip.sigmoid_, "tanh_": ip.tanh_,
    "masked_fill_": ip.masked_fill_, "uniform_": ip.uniform_, "normal_": ip.normal_,
    "bernoulli_": ip.bernoulli_,
}

for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)



def _reversed_dims(self):
    """``t.T``: the transpose of a matrix. On other ranks it reverses all dims (the identity on 0-d and 1-D
    tensors) with PyTorch's deprecation warning, since PyTorch will make that an error."""
    if self.ndim != 2:
        import warnings

        warnings.warn(f"t.T on a {self.ndim}-D tensor (shape {self.shape}) is deprecated, as in PyTorch: it is "
                      "meant for matrices; use t.mT to transpose batches of matrices or t.permute(*reversed(range("
                      "t.ndim))) to reverse all dims", UserWarning, stacklevel=2)
    return mv.permute(self, tuple(range(self.ndim))[::-1])


Tensor.T = property(_reversed_dims)
Tensor.mT = property(lambda self: mv.transpose(self, -2, -1))
Tensor.__hash__ = lambda self: id(self)  # defining __eq__ would otherwise remove hashing
