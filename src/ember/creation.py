"""Tensor factories: zeros, ones, arange, eye, from_numpy..."""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .ops.helpers import norm_shape
from .tensor import Tensor, tensor


def _finish(arr, requires_grad):
    t = Tensor._make(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _np_dtype(dtype, default=None):
    if dtype is None:
        return (default or _dt.default_float).np
    return _dt.get_dtype(dtype).np


def zeros(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.zeros(norm_shape(shape), _np_dtype(dtype)), requires_grad)


def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.ones(norm_shape(shape), _np_dtype(dtype)), requires_grad)


def empty(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.empty(norm_shape(shape), _np_dtype(dtype)), requires_grad)


def full(shape, fill_value, dtype=None, requires_grad=False) -> Tensor:
    if dtype is None:
        dtype = (_dt.bool_ if isinstance(fill_value, bool) else
                 _dt.int64 if isinstance(fill_value, (int, np.integer)) else _dt.default_float)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _finish(np.full(shape, fill_value, _np_dtype(dtype)), requires_grad)


def _like(x, dtype):
    return x.data.dtype if dtype is None else _dt.get_dtype(dtype).np


def zeros_like(x, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.zeros(x.shape, _like(x, dtype)), requires_grad)


def ones_like(x, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.ones(x.shape, _like(x, dtype)), requires_grad)


def empty_like(x, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.empty(x.shape, _like(x, dtype)), requires_grad)


def full_like(x, fill_value, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.full(x.shape, fill_value, _like(x, dtype)), requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad=False) -> Tensor:
    """Values from start (inclusive) to end (exclusive); int64 unless a bound is a float."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        is_float = any(isinstance(v, float) for v in (start, end, step))
        dtype = _dt.default_float if is_float else _dt.int64
    return _finish(np.arange(start, end, step).astype(_np_dtype(dtype)), requires_grad)


def linspace(start, end, steps, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.linspace(start, end, int(steps)).astype(_np_dtype(dtype)), requires_grad)


def logspace(start, end, steps, base=10.0, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.logspace(start, end, int(steps), base=base).astype(_np_dtype(dtype)),
                   requires_grad)


def eye(n, m=None, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.eye(n, m, dtype=_np_dtype(dtype)), requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (writes to one show in the other)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a NumPy array, got {type(array).__name__}")
    _dt.from_numpy_dtype(array.dtype)
    return Tensor._make(array)


def as_tensor(data, dtype=None) -> Tensor:
    """Like tensor(), but shares memory with a NumPy array or tensor when no conversion is needed."""
    if isinstance(data, Tensor) and (dtype is None or data.dtype == _dt.get_dtype(dtype)):
        return data
    if isinstance(data, np.ndarray) and (dtype is None or data.dtype == _dt.get_dtype(dtype).np):
        return from_numpy(data)
    return tensor(data, dtype=dtype)
