"""Reductions and scans: sum, amax/amin, prod, cumsum, argmax... and their composites."""

from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from ..errors import OpError
from .elementwise import cast, eq, exp, isinf, log, logical_and, logical_or, sqrt, where
from .helpers import as_tensor, const, norm_dim, norm_dims
from .registry import apply, primitive

ValuesIndices = namedtuple("return_types", ["values", "indices"])


def _dims(dim, ndim, op):
    """``dim`` as a sorted tuple; PyTorch reads an empty dim list as "all dims" for the
    numeric reductions (sum, mean, amax, var, norm...)."""
    if isinstance(dim, (tuple, list)) and len(dim) == 0:
        dim = None
    return norm_dims(dim, ndim, op)


def _reduced_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _reduce_infer(x, dims, keepdim, **_):
    return _reduced_shape(x.shape, dims, keepdim), x.np_dtype


def _unsqueeze_reduced(g, x_shape, dims, keepdim):
    """View a reduced gradient with the reduced dims kept as size 1."""
    if keepdim or not dims:
        return g
    return g.reshape(_reduced_shape(x_shape, dims, True))


def _sum_np(x, dims, keepdim):
    if x.dtype.kind in "iub":
        return np.sum(x, axis=dims, keepdims=keepdim, dtype=np.int64)
    if x.dtype == np.float16:  # accumulate in float32, as PyTorch does
        return np.sum(x, axis=dims, keepdims=keepdim, dtype=np.float32).astype(np.float16)
    # the ufunc itself: np.sum's argument handling costs as much as summing a 64x64 array
    return np.add.reduce(x, axis=None if not keepdim and len(dims) == x.ndim else dims, keepdims=keepdim)


def _sum_infer(x, dims, keepdim):
    shape = _reduced_shape(x.shape, dims, keepdim)
    return shape, (np.dtype(np.int64) if x.np_dtype.kind in "iub" else x.np_dtype)


SUM = primitive(
    "sum", _sum_np,
    (lambda g, out, x, dims, keepdim: _unsqueeze_reduced(g, x.shape, dims, keepdim).expand(x.shape),),
    infer=_sum_infer, saves=())


def _amax_grad(g, out, x, dims, keepdim):
    g = _unsqueeze_reduced(g, x.shape, dims, keepdim)
    out = _unsqueeze_reduced(out, x.shape, dims, keepdim)
    mask = cast(eq(x, out), g.data.dtype)
    return g * mask / mask.sum(dims, keepdim=True)


AMAX = primitive("amax", lambda x, dims, keepdim: np.amax(x, axis=dims, keepdims=keepdim),
                 (_amax_grad,), infer=_reduce_infer, uses_out=True)
AMIN = primitive("amin", lambda x, dims, keepdim: np.amin(x, axis=dims, keepdims=keepdim),
                 (_amax_grad,), infer=_reduce_infer, uses_out=True)


def _arg_infer(x, dim, keepdim):
    if dim is None:
        return (), np.dtype(np.int64)
    return _reduced_shape(x.shape, (dim,), keepdim), np.dtype(np.int64)


def _argreduce(fn):
    def forward(x, dim, keepdim):
        if dim is None:
            r = fn(x.reshape(-1))
            return np.asarray(r, dtype=np.int64).reshape((1,) * x.ndim if keepdim else ())
        return fn(x, axis=dim, keepdims=keepdim).astype(np.int64, copy=False)

    return forward


ARGMAX = primitive("argmax", _argreduce(np.argmax), infer=_arg_infer)
ARGMIN = primitive("argmin", _argreduce(np.argmin), infer=_arg_infer)


def _scan_dtype(x):
    return np.int64 if x.dtype.kind in "iub" else None


def _prod_grad(g, out, x, dim, keepdim):
    """d prod / d x_i = product of all other elements: exclusive prefix times exclusive
    suffix products, which stays exact when x holds zeros."""
    from .movement import cat, flip, narrow

    g = _unsqueeze_reduced(g, x.shape, (dim,), keepdim)
    n = x.shape[dim]
    if n == 0:  # the empty product is 1 and has no inputs to differentiate
        return g.expand(x.shape)
    shape = tuple(1 if i == dim else s for i, s in enumerate(x.shape))
    one = const(1, x.data.dtype).expand(shape)
    left = cumprod(cat([one, narrow(x, dim, 0, n - 1)], dim), dim)
    right = flip(cumprod(flip(cat([narrow(x, dim, 1, n - 1), one], dim), dim), dim), dim)
    return g * left * right


def _int64_if_integer(np_dtype):
    """PyTorch accumulates integer and bool products and scans in int64."""
    return np.dtype(np.int64) if np_dtype.kind in "iub" else np_dtype


PROD = primitive("prod",
                 lambda x, dim, keepdim: np.prod(x, axis=dim, keepdims=keepdim,
                                                 dtype=_scan_dtype(x)),
                 (_prod_grad,),
                 infer=lambda x, dim, keepdim: (_reduced_shape(x.shape, (dim,), keepdim),
                                                _int64_if_integer(x.np_dtype)))


def _rev_cumsum(g, dim):
    from .movement import flip

    return flip(cumsum(flip(g, dim), dim), dim)


CUMSUM = primitive("cumsum", lambda x, dim: np.cumsum(x, axis=dim, dtype=_scan_dtype(x)),
                   (lambda g, out, x, dim: _rev_cumsum(g, dim),),
                   infer=lambda x, dim: (x.shape, np.dtype(np.int64) if x.np_dtype.kind in "iub"
                                         else x.np_dtype), saves=())


def _cumprod_grad(g, out, x, dim):
    """d/dx_i of sum_j g_j out_j = sum_{j>=i} g_j prod_{k<=j, k!=i} x_k, exact with zeros.

    Before the first zero along ``dim`` it is revcumsum(g * out) / x_i. At the first zero k it
    is prod_{m<k} x_m * sum_{j>=k} g_j prod_{k<m<=j} x_m (cumprods with the earlier entries
    set to 1). After the first zero every term holds that zero, so it is 0. (PyTorch's
    formula; only ember ops, so it is traceable and differentiable again.)"""
    zero = eq(x, 0)
    seen = cumsum(zero, dim)                     # zeros at or before each position
    before = eq(seen, 0)
    first = logical_and(zero, eq(seen, 1))
    one = const(1, x.data.dtype)
    plain = _rev_cumsum(g * out, dim) / where(before, x, one)
    prefix = cumprod(where(before, x, one), dim)  # = prod_{m<k} x_m at the first zero k
    tail = cumprod(where(logical_or(before, first), one, x), dim)  # prod_{k<m<=j} x_m for j >= k
    at_zero = prefix * _rev_cumsum(g * tail, dim)
    return where(before, plain, where(first, at_zero, const(0, x.data.dtype)))


CUMPROD = primitive("cumprod", lambda x, dim: np.cumprod(x, axis=dim, dtype=_scan_dtype(x)),
                    (_cumprod_grad,),
                    infer=lambda x, dim: (x.shape, _int64_if_integer(x.np_dtype)), uses_out=True)
ALL = primitive("all", lambda x, dims, keepdim: np.all(x, axis=dims, keepdims=keepdim),
                infer=lambda x, dims, keepdim: (_reduced_shape(x.shape, dims, keepdim), np.dtype(np.bool_)))
ANY = primitive("any", lambda x, dims, keepdim: np.any(x, axis=dims, keepdims=keepdim),
                infer=lambda x, dims, keepdim: (_reduced_shape(x.shape, dims, keepdim), np.dtype(np.bool_)))


# ---- public functions -----------------------------------------------------------------

def sum(x, dim=None, keepdim=False, dtype=None):  # noqa: A001
    """Sum over ``dim`` (None: all dims; int or tuple, negative allowed)."""
    x = as_tensor(x)
    if dtype is not None:
        x = x.astype(dtype)
    return apply(SUM, (x,), {"dims": _dims(dim, x.ndim, "sum"), "keepdim": bool(keepdim)})


def mean(x, dim=None, keepdim=False, dtype=None):
    x = as_tensor(x)
    if dtype is not None:
        x = x.astype(dtype)
    if x.data.dtype.kind != "f":
        raise OpError(f"mean: input dtype must be floating point, got {x.dtype}; "
                      "convert with .float() or pass dtype=em.float32")
    dims = _dims(dim, x.ndim, "mean")
    n = 1
    for d in dims:
        n *= x.shape[d]
    return sum(x, dims, keepdim) / n if n else sum(x, dims, keepdim) * float("nan")


def sum_to_shape(g, shape):
    """Sum a broadcast gradient back down to ``shape`` (the inverse of broadcasting)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape)
                                      if s == 1 and g.shape[i + lead] != 1)
    out = apply(SUM, (g,), {"dims": dims, "keepdim": True}) if dims else g
    return out.reshape(shape) if out.shape != shape else out


def amax(x, dim=None, keepdim=False):
    x = as_tensor(x)
    dims = _dims(dim, x.ndim, "amax")
    _check_nonempty(x, "amax", dims)
    return apply(AMAX, (x,), {"dims": dims, "keepdim": bool(keepdim)})


def amin(x, dim=None, keepdim=False):
    x = as_tensor(x)
    dims = _dims(dim, x.ndim, "amin")
    _check_nonempty(x, "amin", dims)
    return apply(AMIN, (x,), {"dims": dims, "keepdim": bool(keepdim)})


def _check_nonempty(x, name, dims=None):
    """Reducing over a zero-size dim has no identity for max/min; other dims may be empty."""
    if dims is None:
        dims = tuple(range(x.ndim))
    if x.data.size == 0 and (not dims or builtins.any(x.shape[d] == 0 for d in dims)):
        raise OpError(f"{name}: the input has no elements to reduce (shape {x.shape}, dims "
                      f"{dims}); the reduction has no identity, so it needs a non-empty dim")


def _max_min(x, dim, keepdim, name, full, arg):
    from .indexing import take_along_dim

    x = as_tensor(x)
    if dim is None:
        return full(x)
    if not isinstance(dim, (int, np.integer)):
        # max(a, b): PyTorch's elementwise form
        from .elementwise import maximum, minimum

        return (maximum if name == "max" else minimum)(x, dim)
    d = norm_dim(dim, x.ndim, name)
    _check_nonempty(x, name, (d,) if x.ndim else ())
    if x.ndim == 0:  # a 0-d tensor is its own max along dim 0 or -1, at index 0
        from .movement import clone

        return ValuesIndices(clone(x), const(0, np.int64))
    idx = arg(x, d, keepdim=True)
    values = take_along_dim(x, idx, d)
    if not keepdim and x.ndim:
        values, idx = values.squeeze(d), idx.squeeze(d)
    return ValuesIndices(values, idx)


def max(x, dim=None, keepdim=False):  # noqa: A001
    """max(x) -> tensor; max(x, dim) -> (values, indices); max(x, other) -> elementwise."""
    return _max_min(x, dim, keepdim, "max", amax, argmax)


def min(x, dim=None, keepdim=False):  # noqa: A001
    return _max_min(x, dim, keepdim, "min", amin, argmin)


def argmax(x, dim=None, keepdim=False):
    x = as_tensor(x)
    d = None if dim is None else norm_dim(dim, x.ndim, "argmax")
    _check_nonempty(x, "argmax", None if d is None or not x.ndim else (d,))
    return apply(ARGMAX, (x,), {"dim": d, "keepdim": bool(keepdim)})


def argmin(x, dim=None, keepdim=False):
    x = as_tensor(x)
    d = None if dim is None else norm_dim(dim, x.ndim, "argmin")
    _check_nonempty(x, "argmin", None if d is None or not x.ndim else (d,))
    return apply(ARGMIN, (x,), {"dim": d, "keepdim": bool(keepdim)})


def prod(x, dim=None, keepdim=False, dtype=None):
    x = as_tensor(x)
    if dtype is not None:
        x = x.astype(dtype)
    if dim is None:
        out = apply(PROD, (x.reshape(-1),), {"dim": 0, "keepdim": False})
        return out.reshape((1,) * x.ndim) if keepdim else out
    d = norm_dim(dim, x.ndim, "prod")
    if x.ndim == 0:
        return x
    return apply(PROD, (x,), {"dim": d, "keepdim": bool(keepdim)})


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """Variance with Bessel's ``correction`` (default 1; ``unbiased=False`` means 0)."""
    x = as_tensor(x)
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    dims = _dims(dim, x.ndim, "var")
    n = 1
    for d in dims:
        n *= x.shape[d]
    centered = x - mean(x, dims, keepdim=True)
    return sum(centered * centered, dims, keepdim) / np.maximum(n - correction, 0)


def _root(s, p=2):
    """s ** (1/p) for s >= 0 whose gradient is 0 (not inf * 0 = nan) where s == 0, as
    PyTorch's std and norm backward give for constant or all-zero inputs."""
    zero = eq(s, 0)
    safe = where(zero, const(1, s.data.dtype), s)
    r = sqrt(safe) if p == 2 else safe ** (1.0 / p)
    return where(zero, const(0, s.data.dtype), r)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return _root(var(x, dim, unbiased, keepdim, correction=correction))


def var_mean(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return var(x, dim, unbiased, keepdim, correction=correction), mean(x, dim, keepdim)


def logsumexp(x, dim=None, keepdim=False):
    """log(sum(exp(x))) computed stably by factoring out the max."""
    x = as_tensor(x)
    dims = _dims(dim, x.ndim, "logsumexp")
    if x.data.size == 0:  # an empty sum is 0, so its log is -inf; there is no max to factor
        return log(sum(exp(x), dims, keepdim))
    m = amax(x, dims, keepdim=True).detach()
    m = where(isinf(m), 0.0, m)
    out = log(sum(exp(x - m), dims, keepdim=True)) + m
    if not keepdim:
        out = out.reshape(_reduced_shape(x.shape, dims, False))
    return out


def cumsum(x, dim, dtype=None):
    x = as_tensor(x)
    if dtype is not None:
        x = x.astype(dtype)
    if x.ndim == 0:
        return x.reshape(()) * 1
    return apply(CUMSUM, (x,), {"dim": norm_dim(dim, x.ndim, "cumsum")})


def cumprod(x, dim, dtype=None):
    x = as_tensor(x)
    if dtype is not None:
        x = x.astype(dtype)
    if x.ndim == 0:
        return x * 1
    return apply(CUMPROD, (x,), {"dim": norm_dim(dim, x.ndim, "cumprod")})


def all(x, dim=None, keepdim=False):  # noqa: A001
    x = as_tensor(x)
    return apply(ALL, (x,), {"dims": norm_dims(dim, x.ndim, "all"), "keepdim": bool(keepdim)})


def any(x, dim=None, keepdim=False):  # noqa: A001
    x = as_tensor(x)
    return apply(ANY, (x,), {"dims": norm_dims(dim, x.ndim, "any"), "keepdim": bool(keepdim)})


def norm(x, p=2, dim=None, keepdim=False):
    """Vector p-norm over ``dim`` (all elements by default): p = 2 ('fro'), 1, inf, -inf, 0
    (the count of nonzeros) or any other number."""
    from .elementwise import abs as abs_

    x = as_tensor(x)
    if x.data.dtype.kind != "f":
        raise OpError(f"norm: expects a floating-point tensor, got {x.dtype}; convert it with "
                      ".float()")
    if p == 2 or p == "fro":
        return _root(sum(x * x, dim, keepdim))
    if p == 1:
        return sum(abs_(x), dim, keepdim)
    if p == float("inf"):
        return amax(abs_(x), dim, keepdim)
    if p == -float("inf"):
        return amin(abs_(x), dim, keepdim)
    if p == 0:  # the count of nonzeros; |sign| keeps it in the graph, with gradient 0
        from .elementwise import sign

        return sum(abs_(sign(x)), dim, keepdim)
    if isinstance(p, str):
        raise OpError(f"norm: p must be a number or 'fro', got {p!r} (matrix norms such as "
                      "'nuc' are not supported)")
    return _root(sum(abs_(x) ** p, dim, keepdim), p)


def count_nonzero(x, dim=None):
    x = as_tensor(x)
    return sum(x != 0, dim)


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------

def _onnx_reduce(op_type, axes_as_input_from):
    def mapping(ctx, n):
        x = ctx.input(n, 0)
        if n.inputs[0].dtype != n.output.dtype:
            x = ctx.emit("Cast", [x], to=ctx.dtype(n.output.dtype))
        dims = n.attrs.get("dims", (n.attrs.get("dim"),))
        keep = int(n.attrs["keepdim"])
        if not dims:
            return ctx.emit("Identity", [x])
        if ctx.opset >= axes_as_input_from:
            return ctx.emit(op_type, [x, ctx.ints(dims, "axes")], keepdims=keep)
        return ctx.emit(op_type, [x], axes=list(dims), keepdims=keep)
    return mapping


def _onnx_arg(op_type):
    def mapping(ctx, n):
        x, dim, keep = ctx.input(n, 0), n.attrs["dim"], int(n.attrs["keepdim"])
        if dim is None:
            flat = ctx.emit("Reshape", [x, ctx.ints([-1])])
            out = ctx.emit(op_type, [flat], axis=0, keepdims=0)
            return ctx.emit("Reshape", [out, ctx.ints([1] * len(n.inputs[0].shape) if keep else [])])
        return ctx.emit(op_type, [x], axis=dim, keepdims=keep)
    return mapping


def _onnx_bool_reduce(op_type):
    reduce = _onnx_reduce(op_type, 18)

    def mapping(ctx, n):
        as_int = ctx.emit("Cast", [ctx.input(n, 0)], to=ctx.dtype(np.int32))
        out = reduce(_Renamed(ctx, n, as_int), n)
        return ctx.emit("Cast", [out], to=ctx.dtype(np.bool_))
    return mapping


class _Renamed:
    """A context whose node input 0 is another ONNX value (used to compose mappings)."""

    def __init__(self, ctx, node, name):
        self._ctx, self._node, self._name = ctx, node, name

    def input(self, n, k):
        return self._name if k == 0 else self._ctx.input(n, k)

    def __getattr__(self, item):
        return getattr(self._ctx, item)


SUM.onnx = _onnx_reduce("ReduceSum", 13)
AMAX.onnx = _onnx_reduce("ReduceMax", 18)
AMIN.onnx = _onnx_reduce("ReduceMin", 18)
PROD.onnx = _onnx_reduce("ReduceProd", 18)
ARGMAX.onnx = _onnx_arg("ArgMax")
ARGMIN.onnx = _onnx_arg("ArgMin")
ALL.onnx = _onnx_bool_reduce("ReduceMin")
ANY.onnx = _onnx_bool_reduce("ReduceMax")
CUMSUM.onnx = lambda ctx, n: ctx.emit("CumSum", [ctx.input(n, 0) if n.inputs[0].dtype == n.output.dtype else
                                                 ctx.emit("Cast", [ctx.input(n, 0)], to=ctx.dtype(n.output.dtype)),
                                                 ctx.ints([n.attrs["dim"]])])
