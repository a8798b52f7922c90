"""Argument handling shared by the op modules: scalars, promotion, dims, broadcasting."""

from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..errors import OpError, ShapeError
from ..tensor import Tensor, tensor
from .registry import PRIMITIVES, TRACING, apply

NO_ATTRS: dict = {}
FLOAT32 = np.dtype(np.float32)


def as_tensor(x) -> Tensor:
    """A Tensor for ``x`` (tensors pass through; arrays, lists and scalars are wrapped)."""
    if isinstance(x, Tensor):
        return x
    return tensor(x)


def const(value, np_dtype) -> Tensor:
    arr = np.asarray(value, dtype=np_dtype)
    tracer = TRACING[0]
    if tracer is not None:  # a constant baked into the traced graph
        from ..compiler.trace import Sym

        return Tensor._make(Sym(tracer.literal(arr)))
    return Tensor._make(arr)


def cast(x: Tensor, np_dtype) -> Tensor:
    if x.data.dtype == np_dtype:
        return x
    return apply(PRIMITIVES["cast"], (x,), {"dtype": np.dtype(np_dtype)})


def pair(a, b):
    """Two operands as Tensors of one dtype, using PyTorch's promotion rules."""
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            da, db = a.data.dtype, b.data.dtype
            if da is db or da == db:
                return a, b
            rt = _dt.result_type((da, db), (a.data.ndim, b.data.ndim))
            return cast(a, rt), cast(b, rt)
        if isinstance(b, (int, float, bool, np.number, np.bool_)):
            rt = _dt.result_type((a.data.dtype,), (a.data.ndim,), (b,))
            return cast(a, rt), const(b, rt)
        return pair(a, as_tensor(b))
    if isinstance(a, (int, float, bool, np.number, np.bool_)):
        if not isinstance(b, Tensor):
            return pair(as_tensor(a), b)
        b, a = pair(b, a)
        return a, b
    return pair(as_tensor(a), b)


def floating(x: Tensor) -> Tensor:
    """Integer and bool inputs of float functions are computed in the default float dtype."""
    if x.data.dtype.kind == "f":
        return x
    return cast(x, _dt.default_float.np)


def norm_dim(dim, ndim, op) -> int:
    if not isinstance(dim, (int, np.integer)):
        raise OpError(f"{op}: dim must be an int, got {dim!r}")
    lo = -max(ndim, 1)
    hi = max(ndim, 1) - 1
    if not lo <= dim <= hi:
        raise OpError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dims "
                      f"(expected {lo}..{hi})")
    return int(dim) % max(ndim, 1)


def norm_dims(dim, ndim, op) -> tuple:
    """``dim`` (None, int, or sequence) as a sorted tuple of non-negative dims."""
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (int, np.integer)):
        return (norm_dim(dim, ndim, op),) if ndim else ()
    dims = tuple(sorted(norm_dim(d, ndim, op) for d in dim)) if ndim else ()
    if len(set(dims)) != len(dims):
        raise OpError(f"{op}: dim {tuple(dim)} names a dimension twice")
    return dims


def broadcast_shapes(*shapes, op="broadcast"):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        n = max(len(s) for s in shapes)
        for k in range(1, n + 1):
            sizes = {s[-k] for s in shapes if len(s) >= k} - {1}
            if len(sizes) > 1:
                raise ShapeError(
                    f"{op}: shapes {' and '.join(str(tuple(s)) for s in shapes)} cannot be "
                    f"broadcast: dimension -{k} has sizes {sorted(sizes)}; sizes must match or "
                    "be 1") from None
        raise


def norm_shape(shape) -> tuple:
    """Accept f(2, 3), f((2, 3)) and f([2, 3]) as PyTorch does."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 1 and isinstance(shape[0], Tensor):
        shape = tuple(int(v) for v in shape[0].data.reshape(-1))
    for s in shape:
        if not isinstance(s, (int, np.integer)):
            raise TypeError(f"sizes must be integers, got {s!r} in {tuple(shape)}")
    return tuple(int(s) for s in shape)


def norm_size(shape, op) -> tuple:
    """A factory's size argument (``op(2, 3)``, ``op((2, 3))`` or ``op([2, 3])``): non-negative ints."""
    try:
        size = norm_shape(shape)
    except TypeError:
        raise TypeError(f"{op}: sizes must be integers, got {shape[0] if len(shape) == 1 else shape!r}; "
                        f"e.g. {op}(2, 3) or {op}((2, 3))") from None
    if any(s < 0 for s in size):
        raise ValueError(f"{op}: sizes must be non-negative, got {size}")
    return size


_ADD_ROWS_SOURCE = """# ember add_at kernel (format 1)
import numba


@numba.njit(cache=True, nogil=True, error_model="numpy")
def add_rows(buf, idx, rows):
    for r in range(idx.shape[0]):
        out = buf[idx[r]]
        row = rows[r]
        for j in range(row.shape[0]):
            out[j] += row[j]
"""


def add_at(buf: np.ndarray, index, values: np.ndarray) -> None:
    """``np.add.at(buf, index, values)``, much faster for the common gather-along-axis-0 index
    (embedding and cross-entropy gradients). Float rows are added by a numba loop in index
    order, so the sums are bitwise those of ``np.add.at`` (17x faster on a (2048, 128) embedding
    gradient); other dtypes group rows by a stable sort and sum each group once."""
    idx = index[0] if isinstance(index, tuple) and index else index
    rest = index[1:] if isinstance(index, tuple) else ()
    if (not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu" or buf.ndim == 0 or not buf.flags.c_contiguous
            or buf.dtype.kind not in "fiuc" or any(not (isinstance(r, slice) and r == slice(None)) for r in rest)
            or values.shape != idx.shape + buf.shape[1:] or idx.size < 64):
        np.add.at(buf, index, values)
        return
    flat = idx.reshape(-1)
    lowest = flat.min()
    if lowest < 0:
        flat = np.where(flat < 0, flat + buf.shape[0], flat)
        lowest = flat.min()
    if lowest < 0 or flat.max() >= buf.shape[0]:  # (the kernel does not check bounds)
        np.add.at(buf, index, values)  # raises numpy's IndexError
        return
    rows = values.reshape(flat.size, -1)
    if buf.dtype in (np.float32, np.float64) and values.dtype == buf.dtype:
        numba_module(_ADD_ROWS_SOURCE).add_rows(buf.reshape(buf.shape[0], -1), flat, np.ascontiguousarray(rows))
        return
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    sums = np.add.reduceat(rows[order], starts, axis=0)
    buf.reshape(buf.shape[0], -1)[ordered[starts]] += sums.astype(buf.dtype, copy=False)


_NUMBA_MODULES: dict = {}


def numba_module(source):
    """The module of numba kernels written in ``source``, loaded once per process (numba's disk
    cache keeps the compiled code between processes). numba and the compiler are imported on
    the first call, so that ``import ember`` stays light."""
    mod = _NUMBA_MODULES.get(source)  # a str caches its hash: no rehashing of the source per call
    if mod is None:
        from ..compiler.kernels import load_kernel_module

        mod = _NUMBA_MODULES[source] = load_kernel_module(source)
    return mod
