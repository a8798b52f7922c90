"""Shape and layout primitives (reshape, permute, expand, cat, pad, flip) and the shape
functions built from them."""

from __future__ import annotations

import numpy as np

from ..errors import OpError, ShapeError
from .helpers import NO_ATTRS, as_tensor, broadcast_shapes, norm_dim, norm_dims, norm_shape
from .registry import apply, primitive

# ---- primitives -----------------------------------------------------------------------

RESHAPE = primitive("reshape", lambda x, shape: x.reshape(shape),
                    (lambda g, out, x, shape: g.reshape(x.shape),),
                    infer=lambda x, shape: (tuple(shape), x.np_dtype), saves=(), is_view=True)


def _inverse_perm(dims):
    inv = [0] * len(dims)
    for i, d in enumerate(dims):
        inv[d] = i
    return tuple(inv)


PERMUTE = primitive("permute", lambda x, dims: np.transpose(x, dims),
                    (lambda g, out, x, dims: g.permute(_inverse_perm(dims)),),
                    infer=lambda x, dims: (tuple(x.shape[d] for d in dims), x.np_dtype),
                    saves=(), is_view=True)


def _expand_infer(x, shape):
    broadcast_shapes(x.shape, shape, op="expand")
    if broadcast_shapes(x.shape, shape) != tuple(shape):
        raise ShapeError(f"expand: a tensor of shape {x.shape} cannot be expanded to {shape}; "
                         "only size-1 dims can grow")
    return tuple(shape), x.np_dtype


EXPAND = primitive("expand", lambda x, shape: np.broadcast_to(x, shape),
                   (lambda g, out, x, shape: g.sum_to_shape(x.shape),),
                   infer=_expand_infer, saves=(), is_view=True)


def _cat_vjp(g, out, needs, *xs, dim):
    grads, start = [], 0
    for need, x in zip(needs, xs):
        n = x.shape[dim]
        grads.append(narrow(g, dim, start, n) if need else None)
        start += n
    return grads


def _cat_infer(*xs, dim):
    first = xs[0].shape
    for x in xs[1:]:
        if len(x.shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(x.shape, first))
                                             if i != dim):
            raise ShapeError(f"cat: all tensors must have the same shape except in dim {dim}; "
                             f"got {[tuple(t.shape) for t in xs]}")
        if x.np_dtype != xs[0].np_dtype:
            raise OpError(f"cat: all tensors must share one dtype, got "
                          f"{[str(t.np_dtype) for t in xs]}")
    shape = list(first)
    shape[dim] = sum(x.shape[dim] for x in xs)
    return tuple(shape), xs[0].np_dtype


CAT = primitive("cat", lambda *xs, dim: np.concatenate(xs, axis=dim), vjp=_cat_vjp,
                infer=_cat_infer, saves=())


def _pad_grad(g, out, x, pad_width, value):
    from .indexing import getitem

    return getitem(g, tuple(slice(lo, lo + n) for (lo, _), n in zip(pad_width, x.shape)))


PAD = primitive("pad", lambda x, pad_width, value: np.pad(x, pad_width, constant_values=value),
                (_pad_grad,),
                infer=lambda x, pad_width, value: (
                    tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, pad_width)), x.np_dtype),
                saves=())
FLIP = primitive("flip", lambda x, dims: np.flip(x, axis=dims),
                 (lambda g, out, x, dims: flip(g, dims),),
                 infer=lambda x, dims: (x.shape, x.np_dtype), saves=(), is_view=True)
COPY = primitive("copy", lambda x: np.array(x, copy=True, order="C"), (lambda g, out, x: g,),
                 infer=lambda x: (x.shape, x.np_dtype), saves=())


# ---- public functions -----------------------------------------------------------------

def reshape(x, *shape):
    """Same data in a new shape; one dim may be -1 (inferred)."""
    x = as_tensor(x)
    shape = norm_shape(shape)
    size = x.data.size
    if -1 in shape:
        known = 1
        for s in shape:
            if s != -1:
                known *= s
        if shape.count(-1) > 1 or known == 0 or size % known:
            raise ShapeError(f"reshape: cannot reshape a tensor of shape {x.shape} into "
                             f"{shape}" + (": only one dim may be -1" if shape.count(-1) > 1 else ""))
        shape = tuple(size // known if s == -1 else s for s in shape)
    n = 1
    for s in shape:
        n *= s
    if n != size or any(s < 0 for s in shape):
        raise ShapeError(f"reshape: cannot reshape a tensor of shape {x.shape} ({size} elements) "
                         f"into {shape} ({n} elements)")
    if shape == x.data.shape:
        return x
    return apply(RESHAPE, (x,), {"shape": shape})


def view(x, *shape):
    """``reshape`` under PyTorch's name (ember's views need no contiguous input)."""
    from ..dtypes import DType

    if len(shape) == 1 and isinstance(shape[0], DType):
        raise OpError(f"view: reinterpreting the bytes of a tensor as {shape[0]} (view(dtype)) is "
                      "not supported; use .to(dtype) or .astype(dtype) for a converting copy")
    return reshape(x, *shape)


def permute(x, *dims):
    x = as_tensor(x)
    dims = norm_shape(dims)
    if len(dims) != x.ndim:
        raise ShapeError(f"permute: got {len(dims)} dims {dims} for a tensor with {x.ndim} dims")
    dims = tuple(norm_dim(d, x.ndim, "permute") for d in dims)
    if sorted(dims) != list(range(x.ndim)):
        raise OpError(f"permute: dims {dims} must be a permutation of 0..{x.ndim - 1}")
    if dims == tuple(range(x.ndim)):
        return x
    return apply(PERMUTE, (x,), {"dims": dims})


def transpose(x, dim0, dim1):
    x = as_tensor(x)
    if x.ndim < 2 and dim0 in (0, -1) and dim1 in (0, -1):
        return x
    d0, d1 = norm_dim(dim0, x.ndim, "transpose"), norm_dim(dim1, x.ndim, "transpose")
    dims = list(range(x.ndim))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return permute(x, dims)


swapaxes = transpose


def t(x):
    x = as_tensor(x)
    if x.ndim > 2:
        raise ShapeError(f"t: expects a tensor with <= 2 dims, got shape {x.shape}; "
                         "use transpose(dim0, dim1) or mT")
    return transpose(x, 0, -1) if x.ndim == 2 else x


def movedim(x, source, destination):
    x = as_tensor(x)
    src = [norm_dim(d, x.ndim, "movedim") for d in
           (source if isinstance(source, (tuple, list)) else [source])]
    dst = [norm_dim(d, x.ndim, "movedim") for d in
           (destination if isinstance(destination, (tuple, list)) else [destination])]
    rest = [d for d in range(x.ndim) if d not in src]
    order = [None] * x.ndim
    for s, d in zip(src, dst):
        order[d] = s
    it = iter(rest)
    order = [o if o is not None else next(it) for o in order]
    return permute(x, order)


def expand(x, *shape):
    """Broadcast size-1 dims to ``shape`` without copying; -1 keeps a dim's size."""
    x = as_tensor(x)
    shape = norm_shape(shape)
    lead = len(shape) - x.ndim
    if lead < 0:
        raise ShapeError(f"expand: the target shape {shape} has fewer dims than the tensor "
                         f"{x.shape}")
    shape = tuple(x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(shape))
    if shape == x.data.shape:
        return x
    return apply(EXPAND, (x,), {"shape": shape})


def broadcast_to(x, shape):
    return expand(x, shape)


def expand_as(x, other):
    return expand(x, other.shape)


def broadcast_tensors(*xs):
    xs = [as_tensor(x) for x in xs]
    shape = broadcast_shapes(*[x.shape for x in xs], op="broadcast_tensors")
    return tuple(expand(x, shape) for x in xs)


def squeeze(x, dim=None):
    x = as_tensor(x)
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    dims = norm_dims(dim, x.ndim, "squeeze")
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1)))


def unsqueeze(x, dim):
    x = as_tensor(x)
    d = norm_dim(dim, x.ndim + 1, "unsqueeze")
    shape = list(x.shape)
    shape.insert(d, 1)
    return reshape(x, tuple(shape))


def flatten(x, start_dim=0, end_dim=-1):
    x = as_tensor(x)
    if x.ndim == 0:
        return reshape(x, (1,))
    s = norm_dim(start_dim, x.ndim, "flatten")
    e = norm_dim(end_dim, x.ndim, "flatten")
    if s > e:
        raise OpError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    n = 1
    for d in x.shape[s:e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


def unflatten(x, dim, sizes):
    x = as_tensor(x)
    d = norm_dim(dim, x.ndim, "unflatten")
    sizes = tuple(sizes)
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        sizes = tuple(x.shape[d] // known if s == -1 else s for s in sizes)
    return reshape(x, x.shape[:d] + sizes + x.shape[d + 1:])


def cat(tensors, dim=0):
    """Concatenate along an existing dim."""
    xs = [as_tensor(t) for t in tensors]
    if not xs:
        raise OpError("cat: expected a non-empty sequence of tensors")
    if len({x.data.dtype for x in xs}) > 1:
        from ..dtypes import result_type
        from .helpers import cast

        rt = result_type([x.data.dtype for x in xs], [x.ndim for x in xs])
        xs = [cast(x, rt) for x in xs]
    # PyTorch skips 1-D empty tensors, so `out = tensor([]); out = cat([out, x])` works
    kept = [x for x in xs if x.shape != (0,)]
    if kept and len(kept) < len(xs) and any(x.ndim != 1 for x in kept):
        xs = kept
    d = norm_dim(dim, xs[0].ndim, "cat")
    if len(xs) == 1:
        return clone(xs[0])  # a new tensor, never an alias of the input
    return apply(CAT, tuple(xs), {"dim": d})


concat = concatenate = cat


def stack(tensors, dim=0):
    xs = [as_tensor(t) for t in tensors]
    if not xs:
        raise OpError("stack: expected a non-empty sequence of tensors")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise ShapeError(f"stack: all tensors must have the same shape, got {[x.shape for x in xs]}")
    d = norm_dim(dim, xs[0].ndim + 1, "stack")
    return cat([unsqueeze(x, d) for x in xs], d)


def narrow(x, dim, start, length):
    from .indexing import getitem

    x = as_tensor(x)
    d = norm_dim(dim, x.ndim, "narrow")
    if start < 0:
        start += x.shape[d]
    if start < 0 or length < 0 or start + length > x.shape[d]:
        raise OpError(f"narrow: start {start} + length {length} exceeds size {x.shape[d]} of "
                      f"dim {dim}")
    return getitem(x, (slice(None),) * d + (slice(start, start + length),))


def split(x, split_size_or_sections, dim=0):
    """Split into chunks of ``split_size`` (the last may be smaller) or the given sizes."""
    x = as_tensor(x)
    d = norm_dim(dim, x.ndim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = int(split_size_or_sections)
        if size < 0 or (size == 0 and n):
            raise OpError(f"split: split_size must be positive, got {size}")
        # an empty dim still gives one (empty) piece, as in PyTorch
        sizes = [size] * (n // size) + ([n % size] if n % size else []) if n else [0]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise OpError(f"split: sections {sizes} sum to {sum(sizes)}, but dim {dim} has size {n}")
    out, start = [], 0
    for s in sizes:
        out.append(narrow(x, d, start, s))
        start += s
    return tuple(out)


def chunk(x, chunks, dim=0):
    x = as_tensor(x)
    d = norm_dim(dim, x.ndim, "chunk")
    if chunks <= 0:
        raise OpError(f"chunk: the number of chunks must be positive, got {chunks}")
    if x.shape[d] == 0:  # PyTorch gives ``chunks`` empty pieces
        return tuple(narrow(x, d, 0, 0) for _ in range(chunks))
    size = -(-x.shape[d] // chunks)
    return split(x, max(size, 1), d)


def unbind(x, dim=0):
    x = as_tensor(x)
    d = norm_dim(dim, x.ndim, "unbind")
    return tuple(squeeze(s, d) for s in split(x, 1, d))


def pad(x, pad, mode="constant", value=0.0):
    """PyTorch's F.pad: ``pad`` lists (left, right) for the last dim, then the one before...

    Modes: constant, reflect, replicate, circular. Negative constant pads crop.
    """
    x = as_tensor(x)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise OpError(f"pad: pad must have an even length of at most 2*ndim ({2 * x.ndim}), "
                      f"got {tuple(pad)}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if mode == "constant":
        if any(lo < 0 or hi < 0 for lo, hi in widths):
            for d, (lo, hi) in enumerate(widths):
                if lo < 0 or hi < 0:
                    n = x.shape[d]
                    s, e = max(-lo, 0), n - max(-hi, 0)
                    x = narrow(x, d, s, e - s)
            widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
        if all(lo == 0 and hi == 0 for lo, hi in widths):
            return x
        return apply(PAD, (x,), {"pad_width": tuple(widths), "value": value})
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}.get(mode)
    if np_mode is None:
        raise OpError(f"pad: mode must be constant, reflect, replicate or circular, got {mode!r}")
    from .indexing import index_select

    for d, (lo, hi) in enumerate(widths):
        if lo or hi:
            if mode == "reflect" and (lo >= x.shape[d] or hi >= x.shape[d]):
                raise OpError(f"pad: reflect padding ({lo}, {hi}) must be smaller than the size "
                              f"{x.shape[d]} of dim {d}")
            idx = np.pad(np.arange(x.shape[d]), (lo, hi), mode=np_mode)
            x = index_select(x, d, idx)
    return x


def flip(x, *args, dims=None):
    """Reverse the order of elements along ``dims`` (an int, a tuple, or several ints)."""
    x = as_tensor(x)
    if dims is None:
        dims = args[0] if len(args) == 1 else args
    dims = norm_dims(dims, x.ndim, "flip")
    if not dims:
        return x
    return apply(FLIP, (x,), {"dims": dims})


def clone(x):
    return apply(COPY, (as_tensor(x),), NO_ATTRS)


def contiguous(x):
    x = as_tensor(x)
    return x if x.data.flags.c_contiguous else clone(x)


def repeat(x, *sizes):
    """Tile the tensor ``sizes[i]`` times along dim i (PyTorch's Tensor.repeat)."""
    x = as_tensor(x)
    sizes = norm_shape(sizes)
    if len(sizes) < x.ndim:
        raise OpError(f"repeat: got {len(sizes)} repeat counts for a tensor with {x.ndim} dims; "
                      "give at least one per dim")
    shape = (1,) * (len(sizes) - x.ndim) + x.shape
    x = reshape(x, shape)
    inter = []
    target = []
    for r, s in zip(sizes, shape):
        inter += [1, s]
        target += [r, s]
    x = expand(reshape(x, tuple(inter)), tuple(target))
    return reshape(x, tuple(r * s for r, s in zip(sizes, shape)))


def tile(x, dims):
    x = as_tensor(x)
    dims = tuple(dims)
    if len(dims) < x.ndim:
        dims = (1,) * (x.ndim - len(dims)) + dims
    return repeat(x, dims)


def repeat_interleave(x, repeats, dim=None):
    from .indexing import index_select

    x = as_tensor(x)
    if dim is None:
        x, dim = reshape(x, (-1,)), 0
    d = norm_dim(dim, x.ndim, "repeat_interleave")
    reps = repeats.data if hasattr(repeats, "data") else repeats
    idx = np.repeat(np.arange(x.shape[d]), reps)
    return index_select(x, d, idx)


def roll(x, shifts, dims=None):
    from .indexing import index_select

    x = as_tensor(x)
    if dims is None:
        return reshape(roll(reshape(x, (-1,)), shifts, 0), x.shape)
    shifts = shifts if isinstance(shifts, (tuple, list)) else (shifts,)
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    for s, d in zip(shifts, dims):
        d = norm_dim(d, x.ndim, "roll")
        idx = (np.arange(x.shape[d]) - s) % x.shape[d]
        x = index_select(x, d, idx)
    return x


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------

def _onnx_reshape(ctx, n):
    from ..compiler.generalize import Affine

    shape = list(ctx.attrs(n)["shape"])
    batch_dims = [k for k, d in enumerate(shape) if isinstance(d, Affine)]
    if len(batch_dims) == 1:  # one size that depends on the batch: let Reshape infer it
        shape[batch_dims[0]] = -1
    return ctx.emit("Reshape", [ctx.input(n, 0), ctx.shape_tensor(shape)])


def _onnx_pad(ctx, n):
    widths = n.attrs["pad_width"]
    pads = [lo for lo, _ in widths] + [hi for _, hi in widths]
    value = ctx.const(np.asarray(n.attrs["value"], n.output.dtype))
    return ctx.emit("Pad", [ctx.input(n, 0), ctx.ints(pads, "pads"), value], mode="constant")


def _onnx_flip(ctx, n):
    dims = list(n.attrs["dims"])
    big = np.iinfo(np.int64)
    return ctx.emit("Slice", [ctx.input(n, 0), ctx.ints([-1] * len(dims)), ctx.ints([big.min] * len(dims)),
                              ctx.ints(dims), ctx.ints([-1] * len(dims))])


RESHAPE.onnx = _onnx_reshape
PERMUTE.onnx = lambda ctx, n: ctx.emit("Transpose", [ctx.input(n, 0)], perm=list(n.attrs["dims"]))
EXPAND.onnx = lambda ctx, n: ctx.emit("Expand", [ctx.input(n, 0), ctx.shape_tensor(ctx.attrs(n)["shape"])])
CAT.onnx = lambda ctx, n: ctx.emit("Concat", [ctx.input(n, k) for k in range(len(n.inputs))], axis=n.attrs["dim"])
PAD.onnx = _onnx_pad
FLIP.onnx = _onnx_flip
COPY.onnx = lambda ctx, n: ctx.emit("Identity", [ctx.input(n, 0)])
