"""Indexing: basic slicing (a view), integer/boolean indexing (a copy) and the scatter that is
the gradient of both; gather/scatter/index_select/masked_* are built from these three."""

from __future__ import annotations

import numpy as np

from ..autograd.engine import GradMode, no_grad
from ..errors import GradError, IndexingError, OpError, ShapeError
from ..tensor import Tensor
from .elementwise import where
from .helpers import add_at, as_tensor, norm_dim
from .registry import apply, primitive


class IndexArg:
    """Marks the place of the k-th index *tensor input* inside an index template, so that
    indices computed at run time (token ids, targets) are graph inputs, not constants."""

    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __repr__(self):
        return f"IndexArg({self.k})"

    def __eq__(self, other):
        return type(other) is IndexArg and other.k == self.k

    def __hash__(self):
        return hash(("IndexArg", self.k))


def _fill(template, idx):
    return tuple(idx[e.k] if type(e) is IndexArg else e for e in template)


def _is_basic(template):
    return not any(type(e) is IndexArg or isinstance(e, np.ndarray) for e in template)


def _infer_index(x, *idx, template, unique=False):
    fake = tuple(np.zeros(i.shape, np.intp) for i in idx)
    return np.empty(x.shape, dtype=np.bool_)[_fill(template, fake)].shape, x.np_dtype


GETITEM = primitive("getitem", lambda x, template: x[template],
                    (lambda g, out, x, template: index_put(g, (), template, x.shape, False),),
                    infer=_infer_index, saves=(), is_view=True,
                    scatter_grad=lambda g, x, template: (template, g.data, False))


def _index_vjp(g, out, needs, x, *idx, template, unique=False):
    # ``unique``: no position is picked twice, so the scatter can assign instead of accumulate
    gx = index_put(g, idx, template, x.shape, not unique) if needs[0] else None
    return [gx] + [None] * len(idx)


_INDEX_INPUTS = tuple(range(1, 64))  # keep the index tensors, not the indexed values

INDEX = primitive("index", lambda x, *idx, template, unique=False: x[_fill(template, idx)], vjp=_index_vjp,
                  infer=_infer_index, saves=_INDEX_INPUTS,
                  scatter_grad=lambda g, x, *idx, template, unique=False:
                      (_fill(template, [i.data for i in idx]), g.data, not unique))


def _index_put_np(v, *idx, template, shape, accumulate):
    z = np.zeros(shape, dtype=v.dtype)
    index = _fill(template, idx)
    if accumulate:
        add_at(z, index, v)
    else:
        z[index] = v
    return z


def _index_put_vjp(g, out, needs, v, *idx, template, shape, accumulate):
    gv = _take(g, idx, template) if needs[0] else None
    return [gv] + [None] * len(idx)


INDEX_PUT = primitive(
    "index_put", _index_put_np, vjp=_index_put_vjp, saves=_INDEX_INPUTS,
    infer=lambda v, *idx, template, shape, accumulate: (tuple(shape), v.np_dtype))


def _take(x, idx, template):
    if not idx and _is_basic(template):
        return apply(GETITEM, (x,), {"template": template})
    return apply(INDEX, (x,) + tuple(idx), {"template": template})


def index_put(values, idx, template, shape, accumulate=True):
    """zeros(shape) with ``values`` written (or, with ``accumulate``, added) at the index
    ``template`` filled with the index tensors ``idx``."""
    return apply(INDEX_PUT, (as_tensor(values),) + tuple(idx),
                 {"template": template, "shape": tuple(shape), "accumulate": accumulate})


def _norm_index(index):
    """(template, index tensors): integer tensors become inputs; lists, arrays and boolean
    masks (as their nonzero() coordinates) become constants in the template."""
    if not isinstance(index, tuple):
        index = (index,)
    template, tensors = [], []
    for i in index:
        if isinstance(i, Tensor):
            if i.data.dtype.kind in "iu" and i.ndim > 0:
                template.append(IndexArg(len(tensors)))
                tensors.append(i)
                continue
            i = i.data
        if isinstance(i, list):
            i = np.asarray(i)
            if i.dtype == object or (i.size == 0 and i.dtype.kind == "f"):
                i = i.astype(np.intp)
        if isinstance(i, (bool, np.bool_)):
            i = np.asarray(i)
        if isinstance(i, np.ndarray):
            if i.dtype == np.bool_:
                template.extend(i.nonzero() if i.ndim else (i,))
                continue
            if i.dtype.kind not in "iu":
                raise OpError(f"getitem: tensors used as indices must be integer or bool, got "
                              f"{i.dtype}")
            template.append(int(i) if i.ndim == 0 else i.astype(np.intp, copy=False))
        elif isinstance(i, (int, np.integer)):
            template.append(int(i))
        elif i is None or i is Ellipsis:
            template.append(i)
        elif isinstance(i, slice):
            template.append(slice(*(int(v) if isinstance(v, Tensor) else v
                                    for v in (i.start, i.stop, i.step))))
        else:
            raise OpError(f"getitem: unsupported index {i!r} of type {type(i).__name__}")
    return tuple(template), tuple(tensors)




def _index_values(i):
    """The NumPy value of one index entry (None for slices, None and Ellipsis)."""
    if isinstance(i, Tensor):
        return i.data if is_concrete(i) else None
    if isinstance(i, (list, bool, np.bool_, int, np.integer)):
        a = np.asarray(i)
        return a.astype(np.intp) if a.dtype == object or (a.size == 0 and a.dtype.kind == "f") else a
    return i if isinstance(i, np.ndarray) else None


def _check_index(shape, index, op):
    """Raise IndexingError unless ``index`` fits a tensor of ``shape`` (NumPy would raise an
    unhelpful message, or, for a boolean mask turned into coordinates, nothing at all)."""
    if not isinstance(index, tuple):
        index = (index,)
    vals = [_index_values(i) for i in index]
    used = [0 if i is None or i is Ellipsis else
            (v.ndim if v is not None and v.dtype == np.bool_ else 1) for i, v in zip(index, vals)]
    if sum(1 for i in index if i is Ellipsis) > 1:
        raise IndexingError(f"{op}: an index can only have a single ellipsis (...)")
    if sum(used) > len(shape):
        raise IndexingError(f"{op}: too many indices for a tensor of shape {tuple(shape)}: "
                            f"{sum(used)} dims are indexed")
    d = 0
    for k, (i, v, n) in enumerate(zip(index, vals, used)):
        if i is Ellipsis:
            d = len(shape) - sum(used[k + 1:])
            continue
        if v is not None and v.dtype == np.bool_:
            if tuple(v.shape) != tuple(shape[d:d + n]):
                raise IndexingError(f"{op}: the boolean mask of shape {tuple(v.shape)} does not "
                                    f"match dims {d}..{d + n - 1} of the indexed tensor, which "
                                    f"have shape {tuple(shape[d:d + n])}")
        elif v is not None and v.size and v.dtype.kind in "iu":
            lo, hi, size = int(v.min()), int(v.max()), shape[d]
            if lo < -size or hi >= size:
                raise IndexingError(f"{op}: index {lo if lo < -size else hi} is out of range for "
                                    f"dim {d} of size {size} (tensor of shape {tuple(shape)})")
        d += n


def is_concrete(t) -> bool:
    """True for tensors holding real values (not symbolic ones being traced)."""
    return isinstance(t.data, np.ndarray)


def getitem(x, index):
    """``x[index]`` with NumPy/PyTorch semantics; gradients flow for every index kind."""
    x = as_tensor(x)
    _check_index(x.shape, index, "getitem")
    template, idx = _norm_index(index)
    return _take(x, idx, template)


def _assigned(x, index, value):
    """``x`` with ``x[index]`` replaced by ``value``, out of place: the gradient reaching ``x``
    is zero at the assigned positions and the rest goes to ``value`` (summed over broadcasting)."""
    template, idx = _norm_index(index)
    with no_grad():
        shape = getitem(x.detach(), index).shape
    v = as_tensor(value)
    if v.dtype != x.dtype:
        v = v.astype(x.dtype)
    if tuple(v.shape) != tuple(shape):
        try:
            np.broadcast_shapes(tuple(v.shape), tuple(shape))
        except ValueError:
            raise ShapeError(f"setitem: cannot assign a value of shape {tuple(v.shape)} to x[index] of shape "
                             f"{tuple(shape)} (x has shape {tuple(x.shape)})") from None
        v = v.expand(shape)
    put = index_put(v, idx, template, x.shape, accumulate=False)
    with no_grad():
        hit = index_put(Tensor._make(np.ones(shape, dtype=bool)), idx, template, x.shape, accumulate=False)
    return where(hit, put, x)


def setitem(x, index, value):
    """``x[index] = value`` in place (PyTorch semantics): recorded by autograd when ``x`` or
    ``value`` requires grad (not for a leaf that requires grad), and compiled under ``em.jit``."""
    from .inplace import inplace

    _check_index(x.shape, index, "setitem")
    if x._base is not None and GradMode.enabled and x._base.requires_grad and not x.requires_grad:
        raise GradError("setitem: cannot assign into a view of a tensor that requires grad when the view was made "
                        "under em.no_grad(); assign under em.no_grad() too, or index the tensor itself")
    recording = GradMode.enabled and (x.requires_grad or (isinstance(value, Tensor) and value.requires_grad))
    if recording or not is_concrete(x) or (isinstance(value, Tensor) and not is_concrete(value)):
        if x.requires_grad and x._node is None and GradMode.enabled:
            raise GradError(f"setitem: cannot assign into a leaf tensor that requires grad (shape {x.shape}); "
                            "assign under `with em.no_grad():` if this is not part of the model, or build the "
                            "result out of place (em.where, masked_fill, index_put)")
        return inplace(x, "setitem", _assigned, index, value)
    if not x.data.flags.writeable:
        raise OpError(f"setitem: this tensor (shape {x.shape}) is a read-only broadcast view; "
                      "call .clone() or .contiguous() before writing to it")
    template, idx = _norm_index(index)
    index = _fill(template, tuple(t.data for t in idx))
    v = value.data if isinstance(value, Tensor) else value
    try:
        x.data[index] = v
    except (ValueError, IndexError) as e:
        vs = getattr(v, "shape", ())
        raise ShapeError(f"setitem: cannot assign a value of shape {tuple(vs)} into tensor of "
                         f"shape {x.shape} at index {index}: {e}") from None
    x._version[0] += 1


def _gather_template(index_shape, dim):
    """Pick along ``dim`` by the index tensor (input 0) and keep every other coordinate."""
    ndim = len(index_shape)
    template = []
    for d in range(ndim):
        if d == dim:
            template.append(IndexArg(0))
        else:
            shape = [1] * ndim
            shape[d] = index_shape[d]
            template.append(np.arange(index_shape[d]).reshape(shape))
    return tuple(template)


def _index_tensor(index, op):
    t = index if isinstance(index, Tensor) else Tensor._make(np.asarray(index))
    if t.data.dtype.kind not in "iu":
        raise OpError(f"{op}: index must be an integer tensor, got {t.dtype}")
    return t


def _check_range(idx, size, op, dim):
    if is_concrete(idx) and idx.data.size:
        lo, hi = idx.data.min(), idx.data.max()
        if lo < -size or hi >= size:
            raise OpError(f"{op}: index values must be in [0, {size}) for dim {dim}, got min "
                          f"{lo} and max {hi}")


def gather(x, dim, index):
    """out[i][j][k] = x[index[i][j][k]][j][k] for dim=0 (and so on), as torch.gather."""
    x = as_tensor(x)
    idx = _index_tensor(index, "gather")
    d = norm_dim(dim, x.ndim, "gather")
    if idx.ndim != x.ndim:
        raise ShapeError(f"gather: index has {idx.ndim} dims but input has {x.ndim}; they must "
                         f"match (input {x.shape}, index {idx.shape})")
    for k in range(x.ndim):
        if k != d and idx.shape[k] > x.shape[k]:
            raise ShapeError(f"gather: index shape {idx.shape} is larger than input shape "
                             f"{x.shape} in dim {k}")
    _check_range(idx, x.shape[d], "gather", dim)
    # with one index per row along dim, every output reads a different input position
    return apply(INDEX, (x, idx), {"template": _gather_template(idx.shape, d), "unique": idx.shape[d] == 1})


def take_along_dim(x, indices, dim=None):
    x = as_tensor(x)
    idx = _index_tensor(indices, "take_along_dim")
    if dim is None:
        return gather(x.reshape(-1), 0, idx.reshape(-1))
    d = norm_dim(dim, x.ndim, "take_along_dim")
    xs, ishape = list(x.shape), list(idx.shape)
    xs[d] = ishape[d] = 1
    b = list(np.broadcast_shapes(tuple(xs), tuple(ishape)))
    bx, bi = list(b), list(b)
    bx[d], bi[d] = x.shape[d], idx.shape[d]
    return gather(x.expand(tuple(bx)), d, idx.expand(tuple(bi)))


def _scatter_src(x, d, idx, src, op):
    """Check PyTorch's scatter shape rules and cut ``src`` to the index's shape."""
    if idx.ndim != x.ndim or src.ndim != x.ndim:
        raise ShapeError(f"{op}: index {idx.shape}, src {src.shape} and input {x.shape} must "
                         "have the same number of dims")
    for k in range(x.ndim):
        if idx.shape[k] > src.shape[k] or (k != d and idx.shape[k] > x.shape[k]):
            raise ShapeError(f"{op}: index of shape {idx.shape} is larger than src {src.shape} "
                             f"or, outside dim {d}, than the input {x.shape} in dim {k}")
    _check_range(idx, x.shape[d], op, d)
    if idx.shape != src.shape:
        src = src[tuple(slice(0, n) for n in idx.shape)]
    return src


def scatter_add(x, dim, index, src):
    """out = x, then out[index[i][j]][j] += src[i][j] (dim=0), accumulating duplicates."""
    x, src = as_tensor(x), as_tensor(src)
    idx = _index_tensor(index, "scatter_add")
    d = norm_dim(dim, x.ndim, "scatter_add")
    src = _scatter_src(x, d, idx, src, "scatter_add")
    return x + index_put(src, (idx,), _gather_template(idx.shape, d), x.shape, accumulate=True)


def scatter(x, dim, index, src=None, value=None, reduce=None):
    """out = x with out[index[i][j]][j] = src[i][j] (dim=0); ``value`` for a scalar source."""
    x = as_tensor(x)
    idx = _index_tensor(index, "scatter")
    if src is not None and not isinstance(src, Tensor) and np.ndim(src) == 0:
        src, value = None, src  # x.scatter(dim, index, 2.5): PyTorch's scalar form
    if src is None:
        src = Tensor._make(np.full(idx.shape, value, dtype=x.data.dtype))
    src = as_tensor(src)
    if reduce == "add":
        return scatter_add(x, dim, idx, src)
    if reduce is not None:
        raise OpError(f"scatter: reduce must be None or 'add', got {reduce!r} (for other "
                      "reductions compute them out of place, e.g. with index_put or where)")
    d = norm_dim(dim, x.ndim, "scatter")
    src = _scatter_src(x, d, idx, src, "scatter")
    template = _gather_template(idx.shape, d)
    ones = Tensor._make(np.ones(idx.shape, dtype=np.bool_))
    mask = index_put(ones, (idx,), template, x.shape, accumulate=False)
    return where(mask, index_put(src, (idx,), template, x.shape, accumulate=False), x)


def index_select(x, dim, index):
    x = as_tensor(x)
    idx = _index_tensor(index, "index_select").reshape(-1)
    d = norm_dim(dim, x.ndim, "index_select")
    _check_range(idx, x.shape[d], "index_select", dim)
    return apply(INDEX, (x, idx), {"template": (slice(None),) * d + (IndexArg(0),)})


def index_add(x, dim, index, source, alpha=1):
    x, source = as_tensor(x), as_tensor(source)
    idx = _index_tensor(index, "index_add").reshape(-1)
    d = norm_dim(dim, x.ndim, "index_add")
    _check_range(idx, x.shape[d], "index_add", dim)
    if alpha != 1:
        source = source * alpha
    return x + index_put(source, (idx,), (slice(None),) * d + (IndexArg(0),), x.shape)


def masked_fill(x, mask, value):
    """``value`` where ``mask`` is True (broadcasting), else ``x``."""
    x = as_tensor(x)
    m = as_tensor(mask)
    if m.data.dtype != np.bool_:
        raise OpError(f"masked_fill: mask must be a bool tensor, got {m.dtype}")
    if isinstance(value, Tensor):
        value = value.astype(x.dtype)
    else:
        value = np.asarray(value, dtype=x.data.dtype)
        value = Tensor._make(value)
    return where(m, value, x)


def masked_select(x, mask):
    x = as_tensor(x)
    m = as_tensor(mask)
    shape = np.broadcast_shapes(x.shape, m.shape)
    return getitem(x.expand(shape), np.broadcast_to(m.data, shape))


def take(x, index):
    return getitem(as_tensor(x).reshape(-1), _index_tensor(index, "take"))


def nonzero(x, as_tuple=False):
    a = as_tensor(x).data
    if as_tuple:
        return tuple(Tensor._make(i.astype(np.int64)) for i in np.atleast_1d(a).nonzero())
    return Tensor._make(np.argwhere(a).astype(np.int64))


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------

_BIG = np.iinfo(np.int64)


def _onnx_getitem(ctx, n):
    """Basic indexing: one Slice for all slices and integers, Squeeze for the integers,
    Unsqueeze for the Nones."""
    template = ctx.attrs(n)["template"]
    ndim = len(n.inputs[0].shape)
    consumed = sum(1 for e in template if e is not None and e is not Ellipsis)
    expanded = []
    for e in template:
        if e is Ellipsis:
            expanded += [slice(None)] * (ndim - consumed)
        else:
            expanded.append(e)
    expanded += [slice(None)] * (ndim - sum(1 for e in expanded if e is not None))
    starts, ends, axes, steps, squeeze, unsqueeze = [], [], [], [], [], []
    axis = out = 0
    for e in expanded:
        if e is None:
            unsqueeze.append(out)
            out += 1
            continue
        if isinstance(e, int):
            starts.append(e)
            ends.append(e + 1 if e != -1 else _BIG.max)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
        elif e != slice(None):
            step = 1 if e.step is None else e.step
            lo = _BIG.max if step < 0 else 0
            hi = _BIG.min if step < 0 else _BIG.max
            starts.append(lo if e.start is None else e.start)
            ends.append(hi if e.stop is None else e.stop)
            axes.append(axis)
            steps.append(step)
            out += 1
        else:
            out += 1
        axis += 1
    x = ctx.input(n, 0)
    if axes:
        x = ctx.emit("Slice", [x, ctx.shape_tensor(starts, "starts"), ctx.shape_tensor(ends, "ends"),
                               ctx.ints(axes, "axes"), ctx.ints(steps, "steps")])
    if squeeze:
        x = ctx.emit("Squeeze", [x, ctx.ints(squeeze, "axes")])
    if unsqueeze:
        x = ctx.emit("Unsqueeze", [x, ctx.ints(unsqueeze, "axes")])
    return x if (axes or squeeze or unsqueeze) else ctx.emit("Identity", [x])


def _onnx_index(ctx, n):
    template = n.attrs["template"]
    args = [k for k, e in enumerate(template) if type(e) is IndexArg]
    rest = [e for e in template if type(e) is not IndexArg]
    if len(args) == 1 and all(isinstance(e, slice) and e == slice(None) for e in rest):
        return ctx.emit("Gather", [ctx.input(n, 0), ctx.input(n, 1)], axis=args[0])  # embedding, index_select
    if len(args) == 1 and len(template) == len(n.inputs[0].shape) and all(isinstance(e, np.ndarray) for e in rest):
        return ctx.emit("GatherElements", [ctx.input(n, 0), ctx.input(n, 1)], axis=args[0])  # gather/take_along_dim
    from ..onnx.export import NotExportable

    raise NotExportable("index: only embedding-style lookups, index_select and gather export to ONNX; "
                        f"this index {template!r} has no ONNX mapping")


GETITEM.onnx = _onnx_getitem
INDEX.onnx = _onnx_index
