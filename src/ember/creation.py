"""Tensor factories: zeros, ones, arange, eye, from_numpy..."""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as _dt
from .ops.helpers import norm_size
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
    return _finish(np.zeros(norm_size(shape, "zeros"), _np_dtype(dtype)), requires_grad)


def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.ones(norm_size(shape, "ones"), _np_dtype(dtype)), requires_grad)


def empty(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.empty(norm_size(shape, "empty"), _np_dtype(dtype)), requires_grad)


def full(shape, fill_value, dtype=None, requires_grad=False) -> Tensor:
    """A tensor of ``shape`` filled with ``fill_value``; the dtype follows the value as in PyTorch (bool, int64,
    else float32), also for NumPy scalars and 0-d tensors."""
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    if dtype is None:
        dtype = (_dt.bool_ if isinstance(fill_value, (bool, np.bool_)) else
                 _dt.int64 if isinstance(fill_value, (int, np.integer)) else _dt.default_float)
    size = norm_size((shape,), "full")
    return _finish(np.full(size, fill_value, _np_dtype(dtype)), requires_grad)


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


def _number(v, op, name):
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, (np.bool_, bool)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a number, got {v!r}")
    return v


def arange(start, end=None, step=1, dtype=None, requires_grad=False) -> Tensor:
    """Values from start (inclusive) to end (exclusive) by ``step``, shape (ceil((end - start) / step),);
    int64 unless a bound or the step is a float (then float32). With an integer ``dtype`` the bounds and the
    step are truncated to integers first, as in PyTorch."""
    if end is None:
        start, end = 0, start
    start, end, step = (_number(v, "arange", n) for v, n in ((start, "start"), (end, "end"), (step, "step")))
    if dtype is None:
        is_float = any(isinstance(v, (float, np.floating)) for v in (start, end, step))
        dtype = _dt.default_float if is_float else _dt.int64
    np_dtype = _np_dtype(dtype)
    if np_dtype.kind in "iub":
        start, end, step = int(start), int(end), int(step)
    if step == 0:
        raise ValueError(f"arange: step must be nonzero, got step={step}"
                         + (f" (after truncation to {np_dtype})" if np_dtype.kind in "iub" else ""))
    if not np.isfinite([start, end]).all():
        raise ValueError(f"arange: start and end must be finite, got start={start}, end={end}")
    if (end - start) * step < 0:
        raise ValueError(f"arange: the step's sign does not lead from start to end (start={start}, end={end}, "
                         f"step={step}); use a {'negative' if end < start else 'positive'} step")
    # PyTorch's arithmetic: n = ceil((end - start) / step) values start + i * step, each computed from i (not by
    # repeated addition, as np.arange does: np.arange(10, 11, 0.1)[3] is 10.299999999999999, torch's is 10.3)
    if np_dtype.kind in "iub":
        n = max(0, -(-(end - start) // step))
        return _finish((start + step * np.arange(n, dtype=np.int64)).astype(np_dtype), requires_grad)
    n = max(0, math.ceil((float(end) - float(start)) / float(step)))
    return _finish((float(start) + float(step) * np.arange(n, dtype=np.float64)).astype(np_dtype), requires_grad)


def linspace(start, end, steps, dtype=None, requires_grad=False) -> Tensor:
    """``steps`` evenly spaced values from start to end, both included; shape (steps,)."""
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"linspace: steps must be a non-negative int, got {steps!r}")
    start, end = _number(start, "linspace", "start"), _number(end, "linspace", "end")
    np_dtype = _np_dtype(dtype)
    # PyTorch's kernel: the bounds converted to the dtype first, the first half counted up from start and the
    # second down from end, in the dtype's precision (float64 for integer dtypes, then truncated)
    step_dtype = np.dtype(np.float64 if np_dtype.kind in "iub" else np_dtype)
    start, end = (np.asarray(v).astype(np_dtype).astype(step_dtype) for v in (start, end))
    if steps == 1:
        return _finish(np.full(1, start, np_dtype), requires_grad)
    step = (end - start) / step_dtype.type(steps - 1)
    i = np.arange(steps, dtype=np.int64)
    down = (steps - i - 1).astype(step_dtype)
    values = np.where(i < steps // 2, start + step * i.astype(step_dtype), end - step * down)
    return _finish(values.astype(np_dtype), requires_grad)


def logspace(start, end, steps, base=10.0, dtype=None, requires_grad=False) -> Tensor:
    return _finish(np.logspace(start, end, int(steps), base=base).astype(_np_dtype(dtype)),
                   requires_grad)


def eye(n, m=None, dtype=None, requires_grad=False) -> Tensor:
    """The (n, m) matrix (m defaults to n) with ones on the diagonal."""
    n, m = norm_size((n, n if m is None else m), "eye")
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
