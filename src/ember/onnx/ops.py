"""ONNX operators in ember ops (the table behind ``em.onnx.load``), following the ONNX
operator specification, including the opset-dependent forms (e.g. axes as an attribute
before opset 13/18 and as an input after)."""

from __future__ import annotations

import numpy as np

import ember as em

from ..dtypes import get_dtype
from ..nn import functional as F
from ..tensor import Tensor
from .importer import op


def _np(t):
    """A constant input's values (shapes, axes, pads...), as NumPy."""
    if t is None:
        return None
    return t.data if isinstance(t, Tensor) else np.asarray(t)


def _ints(t):
    return [int(v) for v in np.asarray(_np(t)).reshape(-1)]


def _axes(ctx, tensor_input, name="axes", since=13):
    """Axes from the attribute (older opsets) or the input (newer)."""
    if ctx.opset >= since and tensor_input is not None:
        return _ints(tensor_input)
    value = ctx.attr(name)
    return None if value is None else list(value)


# ---- elementwise ------------------------------------------------------------------------------

def _binary(fn):
    return lambda ctx, a, b: fn(a, b)


for _name, _fn in {"Add": em.add, "Sub": em.sub, "Mul": em.mul, "Pow": None, "Equal": em.eq,
                   "Less": em.lt, "LessOrEqual": em.le, "Greater": em.gt, "GreaterOrEqual": em.ge,
                   "And": em.logical_and, "Or": em.logical_or, "Xor": em.logical_xor,
                   "BitwiseAnd": em.bitwise_and, "BitwiseOr": em.bitwise_or, "BitwiseXor": em.bitwise_xor}.items():
    if _fn is not None:
        op(_name)(_binary(_fn))


@op("Pow")
def _pow(ctx, a, b):
    out = em.pow(a, b.astype(a.dtype) if b.dtype != a.dtype else b)
    return out.astype(a.dtype)


@op("Div")
def _div(ctx, a, b):
    if a.dtype.is_floating_point:
        return em.div(a, b)
    q = em.div(a, b)  # integer division truncates toward zero in ONNX
    return em.trunc(q).astype(a.dtype)


@op("Mod")
def _mod(ctx, a, b):
    if ctx.attr("fmod", 0):
        return (a - em.trunc(em.div(a, b)) * b).astype(a.dtype)
    return em.remainder(a, b)


def _variadic(fn):
    def run(ctx, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


op("Max")(_variadic(em.maximum))
op("Min")(_variadic(em.minimum))
op("Sum")(_variadic(em.add))


@op("Mean")
def _mean(ctx, *xs):
    return _variadic(em.add)(ctx, *xs) / len(xs)


_UNARY = {"Abs": em.abs, "Neg": em.neg, "Exp": em.exp, "Log": em.log, "Sqrt": em.sqrt, "Relu": em.relu,
          "Sigmoid": em.sigmoid, "Tanh": em.tanh, "Sin": em.sin, "Cos": em.cos, "Floor": em.floor, "Ceil": em.ceil,
          "Round": em.round, "Sign": em.sign, "Erf": em.erf, "Not": em.logical_not, "IsNaN": em.isnan,
          "Softsign": F.softsign, "BitwiseNot": em.bitwise_not,
          "Reciprocal": lambda x: 1.0 / x, "Tan": lambda x: em.sin(x) / em.cos(x),
          "Softplus": lambda x: em.softplus(x, 1.0, 1e30), "Identity": lambda x: x,
          "Asin": em.asin, "Acos": em.acos, "Atan": em.atan,
          "Sinh": lambda x: (em.exp(x) - em.exp(-x)) / 2, "Cosh": lambda x: (em.exp(x) + em.exp(-x)) / 2,
          "Asinh": lambda x: em.log(x + em.sqrt(x * x + 1)), "Acosh": lambda x: em.log(x + em.sqrt(x * x - 1)),
          "Atanh": lambda x: 0.5 * em.log((1 + x) / (1 - x))}
for _name, _fn in _UNARY.items():
    op(_name)(lambda ctx, x, _f=_fn: _f(x))


@op("IsInf")
def _isinf(ctx, x):
    pos, neg = ctx.attr("detect_positive", 1), ctx.attr("detect_negative", 1)
    inf = em.isinf(x)
    if pos and neg:
        return inf
    return em.logical_and(inf, x > 0) if pos else em.logical_and(inf, x < 0)


@op("Elu")
def _elu(ctx, x):
    return F.elu(x, ctx.attr("alpha", 1.0))


@op("Selu")
def _selu(ctx, x):
    alpha, gamma = ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875)
    return gamma * em.where(x > 0, x, alpha * em.expm1(x))


@op("Celu")
def _celu(ctx, x):
    alpha = ctx.attr("alpha", 1.0)
    return em.maximum(x, 0.0) + em.minimum(alpha * em.expm1(x / alpha), 0.0)


@op("LeakyRelu")
def _leaky(ctx, x):
    return F.leaky_relu(x, ctx.attr("alpha", 0.01))


@op("ThresholdedRelu")
def _thresholded(ctx, x):
    return em.where(x > ctx.attr("alpha", 1.0), x, 0.0)


@op("PRelu")
def _prelu(ctx, x, slope):
    if slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] != x.shape[-1]:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))  # one slope per channel (older exporters)
    return em.where(x > 0, x, x * slope)


@op("HardSigmoid")
def _hard_sigmoid(ctx, x):
    return em.clamp(x * ctx.attr("alpha", 0.2) + ctx.attr("beta", 0.5), 0.0, 1.0)


@op("HardSwish")
def _hard_swish(ctx, x):
    return x * em.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@op("Gelu")
def _gelu(ctx, x):
    return F.gelu(x, "tanh" if ctx.attr("approximate", "none") == "tanh" else "none")


@op("Mish")
def _mish(ctx, x):
    return F.mish(x)


@op("Clip")
def _clip(ctx, x, lo=None, hi=None):
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    lo = None if lo is None else (lo.item() if isinstance(lo, Tensor) else lo)
    hi = None if hi is None else (hi.item() if isinstance(hi, Tensor) else hi)
    if lo is None and hi is None:
        return x * 1
    out = x
    if lo is not None:
        out = em.maximum(out, em.tensor(lo, dtype=x.dtype))
    if hi is not None:
        out = em.minimum(out, em.tensor(hi, dtype=x.dtype))
    return out


@op("Where")
def _where(ctx, c, a, b):
    return em.where(c, a, b)


@op("Cast")
def _cast(ctx, x):
    from onnx import helper

    to = helper.tensor_dtype_to_np_dtype(ctx.attr("to"))
    try:
        get_dtype(to)
    except TypeError:  # strings, bfloat16, float8, int4...: no ember dtype holds them
        raise ctx.unsupported(f"cast to {to}") from None
    return x.astype(to)


@op("CastLike")
def _cast_like(ctx, x, like):
    return x.astype(like.dtype)


# ---- shape and indexing ---------------------------------------------------------------------------

@op("Reshape")
def _reshape(ctx, x, shape=None):
    dims = _ints(shape) if shape is not None else list(ctx.attr("shape"))
    if not ctx.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(tuple(dims))


@op("Flatten")
def _flatten(ctx, x):
    axis = ctx.attr("axis", 1)
    axis = axis % x.ndim if x.ndim else 0
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1) if x.data.size else x.reshape(lead, int(np.prod(x.shape[axis:])))


@op("Squeeze")
def _squeeze(ctx, x, axes=None):
    ax = _axes(ctx, axes)
    return x.squeeze() if not ax else x.squeeze(tuple(ax))


@op("Unsqueeze")
def _unsqueeze(ctx, x, axes=None):
    ax = sorted(a % (x.ndim + len(_axes(ctx, axes))) for a in _axes(ctx, axes))
    for a in ax:
        x = x.unsqueeze(a)
    return x


@op("Transpose")
def _transpose(ctx, x):
    perm = ctx.attr("perm") or list(range(x.ndim))[::-1]
    return x.permute(tuple(perm))


@op("Concat")
def _concat(ctx, *xs):
    return em.cat([x for x in xs if x is not None], ctx.attr("axis"))


@op("Split")
def _split(ctx, x, split=None):
    axis = ctx.attr("axis", 0)
    sizes = _ints(split) if split is not None else ctx.attr("split")
    if sizes is None:
        n = ctx.attr("num_outputs") or ctx.n_outputs
        size = -(-x.shape[axis] // n)
        sizes = [min(size, x.shape[axis] - size * i) for i in range(n)]
    return tuple(em.split(x, list(sizes), axis))


@op("Slice")
def _slice(ctx, x, starts=None, ends=None, axes=None, steps=None):
    if ctx.opset < 10:
        starts, ends, axes = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes")
        steps = None
    else:
        starts, ends = _ints(starts), _ints(ends)
        axes = _ints(axes) if axes is not None else None
        steps = _ints(steps) if steps is not None else None
    axes = list(range(len(starts))) if axes is None else [a % x.ndim for a in axes]
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        n = x.shape[a]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
        else:
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            if e < 0:
                e = None
        index[a] = slice(s, e, st)
    return x[tuple(index)]


@op("Gather")
def _gather(ctx, x, indices):
    axis = ctx.attr("axis", 0) % x.ndim
    idx = indices.data
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    out = x[(slice(None),) * axis + (Tensor._make(idx.astype(np.int64)) if idx.ndim else int(idx),)]
    return out


@op("GatherElements")
def _gather_elements(ctx, x, indices):
    axis = ctx.attr("axis", 0) % x.ndim
    idx = indices.data
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return em.gather(x, axis, Tensor._make(idx.astype(np.int64)))


@op("GatherND")
def _gather_nd(ctx, x, indices):
    b = ctx.attr("batch_dims", 0)
    idx = indices.data.astype(np.int64)
    k = idx.shape[-1]
    dims = np.array(x.shape[b:b + k])
    idx = np.where(idx < 0, idx + dims, idx)
    batch = idx.shape[:b]
    # the leading batch dims pair up elementwise: index them with broadcast aranges
    lead = [np.arange(n).reshape((-1,) + (1,) * (idx.ndim - 2 - i)) for i, n in enumerate(batch)]
    return x[tuple(Tensor._make(np.broadcast_to(a, idx.shape[:-1]).copy()) for a in lead) +
             tuple(Tensor._make(idx[..., i]) for i in range(k))]


@op("Expand")
def _expand(ctx, x, shape):
    target = np.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))
    return x.expand(target) * 1 if target != x.shape else x * 1


@op("Tile")
def _tile(ctx, x, repeats):
    return x.repeat(*_ints(repeats)) if x.ndim else x


@op("Shape")
def _shape(ctx, x):
    dims = list(x.shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return Tensor._make(np.asarray(dims[start:end], dtype=np.int64))


@op("Size")
def _size(ctx, x):
    return Tensor._make(np.asarray(x.data.size, dtype=np.int64))


@op("Constant")
def _constant(ctx):
    from onnx import numpy_helper

    a = ctx.attrs
    if "value" in a:
        return Tensor._make(numpy_helper.to_array(ctx.node.attribute[0].t).copy())
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return Tensor._make(np.asarray(a[key], dtype=dtype))
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return Tensor._make(np.asarray(list(a[key]), dtype=dtype))
    raise ctx.unsupported(f"a Constant with {list(a)}")


@op("ConstantOfShape")
def _constant_of_shape(ctx, shape):
    from onnx import numpy_helper

    value = np.zeros(1, np.float32)
    for attr in ctx.node.attribute:
        if attr.name == "value":
            value = numpy_helper.to_array(attr.t)
    return Tensor._make(np.full(tuple(_ints(shape)), value.reshape(-1)[0], dtype=value.dtype))


@op("Range")
def _range(ctx, start, limit, delta):
    s, l_, d = (_np(t).reshape(()) for t in (start, limit, delta))
    n = max(int(np.ceil((l_ - s) / d)), 0)
    return Tensor._make((s + np.arange(n) * d).astype(np.asarray(s).dtype))


@op("Pad")
def _pad(ctx, x, pads=None, value=None, axes=None):
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads, value = ctx.attr("pads"), ctx.attr("value", 0.0)
    else:
        pads = _ints(pads)
        value = 0 if value is None else _np(value).reshape(-1)[0].item() if _np(value).size else 0
    n = len(pads) // 2
    axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in _ints(axes)]
    widths = [(0, 0)] * x.ndim
    for k, a in enumerate(axes[:n]):
        widths[a] = (pads[k], pads[k + n])
    torch_pads = []
    for lo, hi in reversed(widths):
        torch_pads += [lo, hi]
    if mode == "edge":
        mode = "replicate"
    elif mode == "wrap":
        mode = "circular"
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ctx.unsupported(f"pad mode {mode!r}")
    return F.pad(x, torch_pads, mode=mode, value=value)


@op("Trilu")
def _trilu(ctx, x, k=None):
    k = 0 if k is None else _ints(k)[0]
    return em.triu(x, k) if ctx.attr("upper", 1) else em.tril(x, k)


@op("OneHot")
def _one_hot(ctx, indices, depth, values):
    d = int(_np(depth).reshape(-1)[0])
    idx = _np(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    axis = ctx.attr("axis", -1)
    oh = (idx[..., None] == np.arange(d))
    oh = np.moveaxis(oh, -1, axis % (idx.ndim + 1))
    v = _np(values)
    return Tensor._make(np.where(oh, v[1], v[0]).astype(v.dtype))


@op("CumSum")
def _cumsum(ctx, x, axis):
    a = _ints(axis)[0]
    y = x.flip(a) if ctx.attr("reverse", 0) else x
    out = em.cumsum(y, a).astype(x.dtype)
    if ctx.attr("exclusive", 0):
        out = out - y
    return out.flip(a) if ctx.attr("reverse", 0) else out


@op("ArgMax", "ArgMin")
def _argmax(ctx, x):
    axis, keep = ctx.attr("axis", 0), bool(ctx.attr("keepdims", 1))
    fn = em.argmax if ctx.node.op_type == "ArgMax" else em.argmin
    if ctx.attr("select_last_index", 0):
        n = x.shape[axis]
        return (n - 1 - fn(x.flip(axis), axis, keep)).astype(em.int64)
    return fn(x, axis, keep)


@op("TopK")
def _topk(ctx, x, k):
    k = _ints(k)[0]
    axis, largest = ctx.attr("axis", -1) % x.ndim, ctx.attr("largest", 1)
    a = x.data
    if largest:  # descending and stable: ties keep the lower index first
        order = np.flip(np.argsort(np.flip(a, axis), axis=axis, kind="stable"), axis)
        order = a.shape[axis] - 1 - order
    else:
        order = np.argsort(a, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return em.take_along_dim(x, Tensor._make(idx), axis), Tensor._make(idx.astype(np.int64))


# ---- reductions -------------------------------------------------------------------------------------

def _reduce(fn, since=18):
    def run(ctx, x, axes=None):
        ax = _axes(ctx, axes, since=since if ctx.node.op_type != "ReduceSum" else 13)
        keep = bool(ctx.attr("keepdims", 1))
        if not ax:
            if ctx.attr("noop_with_empty_axes", 0):
                return x
            ax = list(range(x.ndim))
        return fn(x, tuple(ax), keep)
    return run


op("ReduceSum")(_reduce(lambda x, d, k: em.sum(x, d, k).astype(x.dtype)))
op("ReduceMean")(_reduce(lambda x, d, k: em.mean(x, d, k) if x.dtype.is_floating_point else
                         (em.sum(x, d, k) // int(np.prod([x.shape[i] for i in d]))).astype(x.dtype)))
def _extreme(reduce, identity):
    # ONNX defines the max/min of an empty set as the identity (-inf/+inf, or the dtype's limits).
    def run(x, dims, keep):
        if x.numel() == 0 and any(x.shape[d] == 0 for d in dims):
            dt = x.data.dtype
            if dt.kind == "f":
                init = identity
            elif dt.kind == "b":
                init = identity > 0
            else:
                init = np.iinfo(dt).min if identity < 0 else np.iinfo(dt).max
            return Tensor._make(getattr(np, reduce)(x.data, axis=dims, keepdims=keep, initial=init))
        return getattr(em, reduce)(x, dims, keep)
    return run


op("ReduceMax")(_reduce(_extreme("amax", -np.inf)))
op("ReduceMin")(_reduce(_extreme("amin", np.inf)))
op("ReduceProd")(_reduce(lambda x, d, k: _prod(x, d, k)))
op("ReduceL1")(_reduce(lambda x, d, k: em.sum(em.abs(x), d, k).astype(x.dtype)))
op("ReduceL2")(_reduce(lambda x, d, k: em.sqrt(em.sum(x * x, d, k)).astype(x.dtype)))
op("ReduceSumSquare")(_reduce(lambda x, d, k: em.sum(x * x, d, k).astype(x.dtype)))
op("ReduceLogSum")(_reduce(lambda x, d, k: em.log(em.sum(x, d, k))))
op("ReduceLogSumExp")(_reduce(lambda x, d, k: em.logsumexp(x, d, k).astype(x.dtype)))


def _prod(x, dims, keep):
    out = x
    for d in sorted(dims, reverse=True):
        out = em.prod(out, d, keepdim=True)
    if not keep:
        out = out.reshape(tuple(s for i, s in enumerate(x.shape) if i not in dims))
    return out.astype(x.dtype)


def _softmax_like(fn):
    def run(ctx, x):
        if ctx.opset >= 13:
            return fn(x, ctx.attr("axis", -1))
        axis = ctx.attr("axis", 1) % max(x.ndim, 1)  # older opsets: over the flattened trailing dims
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return fn(flat, 1).reshape(x.shape)
    return run


op("Softmax")(_softmax_like(F.softmax))
op("LogSoftmax")(_softmax_like(F.log_softmax))


@op("Hardmax")
def _hardmax(ctx, x):
    axis = ctx.attr("axis", -1 if ctx.opset >= 13 else 1)
    if ctx.opset < 13:
        axis = axis % x.ndim
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return Tensor._make(np.eye(flat.shape[1], dtype=x.data.dtype)[flat.data.argmax(1)].reshape(x.shape))
    a = x.data
    axis %= a.ndim
    winner = np.expand_dims(a.argmax(axis), axis)
    positions = np.arange(a.shape[axis]).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
    return Tensor._make((winner == positions).astype(a.dtype))


# ---- linear algebra ---------------------------------------------------------------------------------

@op("MatMul")
def _matmul(ctx, a, b):
    return em.matmul(a, b)


@op("Gemm")
def _gemm(ctx, a, b, c=None):
    if ctx.attr("transA", 0):
        a = a.mT
    if ctx.attr("transB", 0):
        b = b.mT
    out = em.matmul(a, b)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        out = out + (c * beta if beta != 1.0 else c)
    return out


@op("Einsum")
def _einsum(ctx, *xs):
    return em.einsum(ctx.attr("equation"), *xs)


# ---- neural-network layers ------------------------------------------------------------------------

def _same_pads(ctx, spatial, kernel, strides, dilations):
    mode = ctx.attr("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        pads = ctx.attr("pads") or [0] * (2 * len(spatial))
        return list(pads)
    if mode == "VALID":
        return [0] * (2 * len(spatial))
    begin, end = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(big if mode == "SAME_LOWER" else small)
        end.append(small if mode == "SAME_LOWER" else big)
    return begin + end


def _explicit_pad(x, pads, value=0.0):
    """Asymmetric padding as an explicit pad (PyTorch order: last dim first)."""
    n = len(pads) // 2
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    return F.pad(x, torch_pads, value=value) if any(torch_pads) else x


def _as_2d(x, w=None):
    """1-D convolutions and pools run as 2-D ones with a height of 1."""
    return x.unsqueeze(2), (None if w is None else w.unsqueeze(2))


def _conv3d(ctx, x, w, b, strides, pads, dilations, group):
    """3-D convolution as a sum of 2-D convolutions over the kernel's depth."""
    x = _explicit_pad(x, [pads[0], 0, 0, pads[3], 0, 0])
    kd = w.shape[2]
    depth = (x.shape[2] - dilations[0] * (kd - 1) - 1) // strides[0] + 1
    planes = []
    for od in range(depth):
        acc = None
        for k in range(kd):
            y = F.conv2d(x[:, :, od * strides[0] + k * dilations[0]], w[:, :, k], None, tuple(strides[1:]),
                         (0, 0), tuple(dilations[1:]), group) if pads[1:3] == [0, 0] and pads[4:] == [0, 0] else \
                F.conv2d(_explicit_pad(x[:, :, od * strides[0] + k * dilations[0]],
                                       [pads[1], pads[2], pads[4], pads[5]]),
                         w[:, :, k], None, tuple(strides[1:]), (0, 0), tuple(dilations[1:]), group)
            acc = y if acc is None else acc + y
        planes.append(acc)
    out = em.stack(planes, 2)
    return out if b is None else out + b.reshape(1, -1, 1, 1, 1)


@op("Conv")
def _conv(ctx, x, w, b=None):
    nd = w.ndim - 2
    if nd == 3:
        kernel = list(w.shape[2:])
        strides = list(ctx.attr("strides") or [1] * 3)
        dilations = list(ctx.attr("dilations") or [1] * 3)
        pads = _same_pads(ctx, x.shape[2:], kernel, strides, dilations)
        return _conv3d(ctx, x, w, b, strides, list(pads), dilations, ctx.attr("group", 1))
    if nd not in (1, 2):
        raise ctx.unsupported(f"{nd}-D convolution")
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    strides = ctx.attr("strides") or [1] * nd
    dilations = ctx.attr("dilations") or [1] * nd
    pads = _same_pads(ctx, x.shape[2:], kernel, strides, dilations)
    group = ctx.attr("group", 1)
    if nd == 1:
        x, w = _as_2d(x, w)
        strides, dilations, pads = [1] + list(strides), [1] + list(dilations), [0, pads[0], 0, pads[1]]
    if pads[:2] == pads[2:]:
        out = F.conv2d(x, w, b, tuple(strides), tuple(pads[:2]), tuple(dilations), group)
    else:
        out = F.conv2d(_explicit_pad(x, pads), w, b, tuple(strides), 0, tuple(dilations), group)
    return out.squeeze(2) if nd == 1 else out


def _conv_transpose3d(x, w, b, strides, dilations, out_pad, pads, group):
    """3-D transposed convolution as 2-D ones: input depth plane i, through kernel depth plane k, adds
    to output plane i * stride + k * dilation; the full result is then cropped by ``pads`` (ONNX
    order, begins then ends; a negative pad extends with zeros)."""
    depth = (x.shape[2] - 1) * strides[0] + (w.shape[2] - 1) * dilations[0] + 1 + out_pad[0]
    planes = [None] * depth
    for i in range(x.shape[2]):
        for k in range(w.shape[2]):
            y = F.conv_transpose2d(x[:, :, i], w[:, :, k], None, tuple(strides[1:]), 0, tuple(out_pad[1:]), group,
                                   tuple(dilations[1:]))
            j = i * strides[0] + k * dilations[0]
            planes[j] = y if planes[j] is None else planes[j] + y
    zeros = planes[0] * 0  # planes no input reaches (stride gaps, output padding)
    out = em.stack([zeros if p is None else p for p in planes], 2)
    out = _explicit_pad(out, [-min(v, 0) for v in pads])
    c = [max(v, 0) for v in pads]
    d, h, wd = out.shape[2:]
    out = out[:, :, c[0]:d - c[3], c[1]:h - c[4], c[2]:wd - c[5]]
    return out if b is None else out + b.reshape(1, -1, 1, 1, 1)


@op("ConvTranspose")
def _conv_transpose(ctx, x, w, b=None):
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        raise ctx.unsupported(f"{nd}-D transposed convolution")
    if nd == 1:
        x, w = _as_2d(x, w)
    kernel = list(w.shape[2:])
    strides = list(ctx.attr("strides") or [1] * nd)
    dilations = list(ctx.attr("dilations") or [1] * nd)
    out_pad = list(ctx.attr("output_padding") or [0] * nd)
    if nd == 1:
        strides, dilations, out_pad = [1] + strides, [1] + dilations, [0] + out_pad
    spatial = x.shape[2:]
    output_shape = ctx.attr("output_shape")
    mode = ctx.attr("auto_pad", "NOTSET")
    if output_shape is not None or mode in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape) if output_shape is not None else [n * s for n, s in zip(spatial, strides)]
        if nd == 1 and len(target) == 1:
            target = [1] + target
        total = [s * (n - 1) + op_ + (k - 1) * d + 1 - t
                 for n, s, op_, k, d, t in zip(spatial, strides, out_pad, kernel, dilations, target)]
        if mode == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - b_ for t, b_ in zip(total, begin)]
        pads = begin + end
    else:
        pads = list(ctx.attr("pads") or [0] * (2 * nd))
        if nd == 1:
            pads = [0, pads[0], 0, pads[1]]
    group = ctx.attr("group", 1)
    if nd == 3:
        return _conv_transpose3d(x, w, b, strides, dilations, out_pad, pads, group)
    sym = [max(min(a, c), 0) for a, c in zip(pads[:2], pads[2:])]
    out = F.conv_transpose2d(x, w, b, tuple(strides), tuple(sym), tuple(out_pad), group, tuple(dilations))
    extra_begin = [a - s for a, s in zip(pads[:2], sym)]
    extra_end = [c - s for c, s in zip(pads[2:], sym)]
    if any(extra_begin) or any(extra_end):  # asymmetric pads crop more on one side; negative ones extend
        grow = [-min(v, 0) for v in extra_begin + extra_end]
        if any(grow):
            out = _explicit_pad(out, grow)
        h, wd = out.shape[2:]
        cb = [max(v, 0) for v in extra_begin]
        ce = [max(v, 0) for v in extra_end]
        out = out[:, :, cb[0]:h - ce[0], cb[1]:wd - ce[1]]
    return out.squeeze(2) if nd == 1 else out


def _pool_args(ctx, x):
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(ctx.attr("strides") or [1] * nd)
    dilations = list(ctx.attr("dilations") or [1] * nd)
    pads = _same_pads(ctx, x.shape[2:], kernel, strides, dilations)
    return nd, kernel, strides, dilations, pads


def _window_slices(spatial, kernel, strides, dilations, out):
    """For each kernel offset: the strided slices of the padded input that it reads."""
    import itertools

    for offset in itertools.product(*[range(k) for k in kernel]):
        yield offset, tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                            for o, d, s, n in zip(offset, dilations, strides, out))


def _pool_out(spatial, kernel, strides, dilations, pads, ceil):
    nd = len(kernel)
    out = []
    for i in range(nd):
        span = spatial[i] + pads[i] + pads[i + nd] - dilations[i] * (kernel[i] - 1) - 1
        n = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (n - 1) * strides[i] >= spatial[i] + pads[i]:
            n -= 1  # the last window must start inside the input or its left padding
        out.append(n)
    return out


def _padded_for_pool(x, pads, out, kernel, strides, dilations, value):
    """Pad (explicit pads, plus what ceil_mode's last windows need) with ``value``."""
    nd = len(kernel)
    extra = [max((o - 1) * s + d * (k - 1) + 1 - (n + pads[i] + pads[i + nd]), 0)
             for i, (o, s, d, k, n) in enumerate(zip(out, strides, dilations, kernel, x.shape[2:]))]
    full = list(pads[:nd]) + [p + e for p, e in zip(pads[nd:], extra)]
    return _explicit_pad(x, full, value=value), extra


@op("MaxPool")
def _max_pool(ctx, x):
    nd, kernel, strides, dilations, pads = _pool_args(ctx, x)
    ceil = bool(ctx.attr("ceil_mode", 0))
    out_shape = _pool_out(x.shape[2:], kernel, strides, dilations, pads, ceil)
    if nd == 2 and not (ctx.n_outputs > 1 and ctx.node.output[1]) and pads[:2] == pads[2:] and \
            all(p <= k // 2 for p, k in zip(pads[:2], kernel)):
        return F.max_pool2d(x, tuple(kernel), tuple(strides), tuple(pads[:2]), tuple(dilations), ceil)
    xp, _ = _padded_for_pool(x, pads, out_shape, kernel, strides, dilations, -np.inf)
    best = None
    for _, sl in _window_slices(x.shape[2:], kernel, strides, dilations, out_shape):
        v = xp[(slice(None), slice(None)) + sl]
        best = v if best is None else em.maximum(best, v)
    if not (ctx.n_outputs > 1 and ctx.node.output[1]):
        return best
    # Indices: flat positions in the (unpadded) input of the first maximum of each window
    a = xp.data
    winner = np.full(best.shape, -1, dtype=np.int64)
    spatial = x.shape[2:]
    grids = np.meshgrid(*[np.arange(o) for o in out_shape], indexing="ij")
    for offset, sl in _window_slices(spatial, kernel, strides, dilations, out_shape):
        v = a[(slice(None), slice(None)) + sl]
        coords = [g * s + o * d - p for g, s, o, d, p in zip(grids, strides, offset, dilations, pads[:nd])]
        if ctx.attr("storage_order", 0) == 1 and nd == 2:
            flat = coords[1] * spatial[0] + coords[0]
        else:
            flat = np.zeros_like(coords[0])
            for c, n in zip(coords, spatial):
                flat = flat * n + c
        take = (v == best.data) & (winner < 0)
        winner = np.where(take, flat, winner)
    n, c = x.shape[:2]
    channel_base = (np.arange(n)[:, None] * c + np.arange(c)[None, :]).reshape((n, c) + (1,) * nd) * \
        int(np.prod(spatial))
    return best, Tensor._make(winner + channel_base)


@op("AveragePool")
def _avg_pool(ctx, x):
    nd, kernel, strides, dilations, pads = _pool_args(ctx, x)
    include = bool(ctx.attr("count_include_pad", 0))
    ceil = bool(ctx.attr("ceil_mode", 0))
    out_shape = _pool_out(x.shape[2:], kernel, strides, dilations, pads, ceil)
    if nd == 2 and dilations == [1, 1] and pads[:2] == pads[2:] and \
            all(p <= k // 2 for p, k in zip(pads[:2], kernel)):
        return F.avg_pool2d(x, tuple(kernel), tuple(strides), tuple(pads[:2]), ceil, include)
    xp, extra = _padded_for_pool(x, pads, out_shape, kernel, strides, dilations, 0.0)
    # which padded cells count: the input, plus the explicit pads if count_include_pad
    mask = np.zeros(xp.shape[2:], dtype=x.data.dtype)
    inner = tuple(slice(0 if include else p, (p + n + q) if include else p + n)
                  for p, q, n in zip(pads[:nd], pads[nd:], x.shape[2:]))
    mask[inner] = 1
    total, count = None, None
    for _, sl in _window_slices(x.shape[2:], kernel, strides, dilations, out_shape):
        v = xp[(slice(None), slice(None)) + sl]
        total = v if total is None else total + v
        m = mask[sl]
        count = m if count is None else count + m
    return total / Tensor._make(np.maximum(count, 1).astype(x.data.dtype))


@op("LpPool")
def _lp_pool(ctx, x):
    nd, kernel, strides, dilations, pads = _pool_args(ctx, x)
    p = ctx.attr("p", 2)
    out_shape = _pool_out(x.shape[2:], kernel, strides, dilations, pads, bool(ctx.attr("ceil_mode", 0)))
    xp, _ = _padded_for_pool(x, pads, out_shape, kernel, strides, dilations, 0.0)
    total = None
    for _, sl in _window_slices(x.shape[2:], kernel, strides, dilations, out_shape):
        v = em.abs(xp[(slice(None), slice(None)) + sl]) ** p
        total = v if total is None else total + v
    return total ** (1.0 / p)


@op("GlobalAveragePool")
def _gap(ctx, x):
    return x.mean(tuple(range(2, x.ndim)), keepdim=True)


@op("GlobalMaxPool")
def _gmp(ctx, x):
    return x.amax(tuple(range(2, x.ndim)), keepdim=True)


@op("BatchNormalization")
def _batch_norm(ctx, x, scale, bias, mean, var):
    eps = ctx.attr("epsilon", 1e-5)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if ctx.attr("training_mode", 0):  # batch statistics; outputs the updated running ones
        dims = (0,) + tuple(range(2, x.ndim))
        mu = x.mean(dims)
        centered = x - mu.reshape(shape)
        v = (centered * centered).mean(dims)
        y = centered * em.rsqrt(v.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
        m = ctx.attr("momentum", 0.9)
        return y, mean * m + mu * (1 - m), var * m + v * (1 - m)
    return (x - mean.reshape(shape)) * em.rsqrt(var.reshape(shape) + eps) * scale.reshape(shape) + \
        bias.reshape(shape)


@op("InstanceNormalization")
def _instance_norm(ctx, x, scale, bias):
    return F.group_norm(x, x.shape[1], scale, bias, ctx.attr("epsilon", 1e-5))


@op("LayerNormalization")
def _layer_norm(ctx, x, scale, bias=None):
    axis = ctx.attr("axis", -1) % x.ndim
    dims = tuple(range(axis, x.ndim))
    eps = ctx.attr("epsilon", 1e-5)
    mu = x.mean(dims, keepdim=True)
    centered = x - mu
    inv = em.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    out = centered * inv * scale
    if bias is not None:
        out = out + bias
    return (out, mu, inv) if ctx.n_outputs > 1 else out


@op("LRN")
def _lrn(ctx, x):
    size, alpha = ctx.attr("size"), ctx.attr("alpha", 1e-4)
    beta, bias = ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    sq = x * x
    c = x.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = F.pad(sq, [0, 0] * (x.ndim - 2) + [lo, hi])
    window = sum(padded[:, i:i + c] for i in range(size))
    return x / (bias + (alpha / size) * window) ** beta


@op("Dropout")
def _dropout(ctx, x, ratio=None, training_mode=None):
    """Identity at inference; with training_mode true (opset 12+), y = x * mask / (1 - ratio) with
    mask ~ Bernoulli(1 - ratio), and the optional second output is the boolean mask.

    The specification leaves the random generator open. Given a ``seed``, ember draws the mask as
    ONNX's reference implementation does, ``RandomState(seed).uniform(0, 1, shape) >= ratio`` (NumPy's
    MT19937), so a seeded node gives the same mask on every run, the same as ``onnx.reference``'s;
    without a seed every run draws a fresh mask from ember's default generator."""
    training = ctx.opset >= 12 and training_mode is not None and bool(_np(training_mode).reshape(-1)[0])
    if not training:
        y = x * 1
        return (y, Tensor._make(np.ones(x.shape, dtype=bool))) if ctx.n_outputs > 1 else y
    p = 0.5 if ratio is None else float(_np(ratio).reshape(-1)[0])
    if not 0.0 <= p < 1.0:
        raise ctx.unsupported(f"ratio={p} (the drop probability must be in [0, 1))")
    seed = ctx.attr("seed")
    if seed is None:
        mask = em.random.dropout_mask(x.shape, p, x.data.dtype)  # 0 or 1 / (1 - p)
        keep = mask != 0
    else:
        keep = Tensor._make(np.random.RandomState(int(seed)).uniform(0.0, 1.0, x.shape) >= p)
        mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    y = x * mask
    return (y, keep) if ctx.n_outputs > 1 else y


# ---- recurrent layers (ONNX gate order: LSTM i, o, f, c; GRU z, r, h) ---------------------------------------

def _rnn_common(ctx, x, w, r, b, seq_lens, h0, gates):
    layout = ctx.attr("layout", 0)
    if layout:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
    if seq_lens is not None and not np.all(_np(seq_lens) == x.shape[0]):
        raise ctx.unsupported("sequence_lens shorter than the sequence")
    direction = ctx.attr("direction", "forward")
    hidden = ctx.attr("hidden_size")
    dirs = 2 if direction == "bidirectional" else 1
    if b is None:
        b = em.zeros(dirs, 2 * gates * hidden, dtype=x.dtype)
    if h0 is None:
        h0 = em.zeros(dirs, x.shape[1], hidden, dtype=x.dtype)
    return layout, direction, hidden, dirs, x, b, h0


def _finish_rnn(ctx, layout, outs, hs, cs=None):
    y = em.stack(outs, 1)  # (T, dirs, N, H)
    y_h = em.stack(hs, 0)
    if layout:
        y = y.permute(2, 0, 1, 3)
        y_h = y_h.transpose(0, 1)
    results = [y, y_h]
    if cs is not None:
        y_c = em.stack(cs, 0)
        results.append(y_c.transpose(0, 1) if layout else y_c)
    return tuple(results[:max(ctx.n_outputs, 1)]) if ctx.n_outputs > 1 else results[0]


def _direction_steps(direction, d, T):
    reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
    return range(T - 1, -1, -1) if reverse else range(T)


@op("LSTM")
def _lstm(ctx, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    if ctx.attr("activations") not in (None, [b"Sigmoid", b"Tanh", b"Tanh"] * 2, ["Sigmoid", "Tanh", "Tanh"] * 2,
                                       [b"Sigmoid", b"Tanh", b"Tanh"], ["Sigmoid", "Tanh", "Tanh"]):
        raise ctx.unsupported("non-default activations")
    if ctx.attr("clip") is not None or ctx.attr("input_forget", 0):
        raise ctx.unsupported("clip or input_forget")
    layout, direction, H, dirs, x, b, h0 = _rnn_common(ctx, x, w, r, b, seq_lens, h0, 4)
    if c0 is None:
        c0 = em.zeros(dirs, x.shape[1], H, dtype=x.dtype)
    elif layout:
        c0 = c0.transpose(0, 1)
    T = x.shape[0]
    outs_by_dir, hs, cs = [], [], []
    for d in range(dirs):
        xp = em.matmul(x, w[d].mT) + b[d, :4 * H] + b[d, 4 * H:]
        h, c = h0[d], c0[d]
        outs = [None] * T
        pi, po, pf = (None, None, None) if p is None else (p[d, :H], p[d, H:2 * H], p[d, 2 * H:])
        for t in _direction_steps(direction, d, T):
            g = xp[t] + em.matmul(h, r[d].mT)
            gi, go, gf = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H]
            if p is not None:  # peepholes: the input and forget gates see c(t-1), the output gate c(t)
                gi, gf = gi + pi * c, gf + pf * c
            i, f, cc = F.sigmoid(gi), F.sigmoid(gf), F.tanh(g[:, 3 * H:])
            c = f * c + i * cc
            o = F.sigmoid(go + po * c if p is not None else go)
            h = o * F.tanh(c)
            outs[t] = h
        outs_by_dir.append(em.stack(outs, 0))
        hs.append(h)
        cs.append(c)
    return _finish_rnn(ctx, layout, outs_by_dir, hs, cs)


@op("GRU")
def _gru(ctx, x, w, r, b=None, seq_lens=None, h0=None):
    if ctx.attr("activations") is not None and [a if isinstance(a, str) else a.decode()
                                                for a in ctx.attr("activations")][:2] != ["Sigmoid", "Tanh"]:
        raise ctx.unsupported("non-default activations")
    if ctx.attr("clip") is not None:
        raise ctx.unsupported("clip")
    layout, direction, H, dirs, x, b, h0 = _rnn_common(ctx, x, w, r, b, seq_lens, h0, 3)
    linear_before_reset = ctx.attr("linear_before_reset", 0)
    T = x.shape[0]
    outs_by_dir, hs = [], []
    for d in range(dirs):
        wb, rb = b[d, :3 * H], b[d, 3 * H:]
        xp = em.matmul(x, w[d].mT) + wb
        h = h0[d]
        outs = [None] * T
        for t in _direction_steps(direction, d, T):
            rz = xp[t][:, :2 * H] + em.matmul(h, r[d][:2 * H].mT) + rb[:2 * H]
            z, rr = F.sigmoid(rz[:, :H]), F.sigmoid(rz[:, H:])
            if linear_before_reset:
                n = F.tanh(xp[t][:, 2 * H:] + rr * (em.matmul(h, r[d][2 * H:].mT) + rb[2 * H:]))
            else:
                n = F.tanh(xp[t][:, 2 * H:] + em.matmul(rr * h, r[d][2 * H:].mT) + rb[2 * H:])
            h = (1 - z) * n + z * h
            outs[t] = h
        outs_by_dir.append(em.stack(outs, 0))
        hs.append(h)
    return _finish_rnn(ctx, layout, outs_by_dir, hs)


@op("RNN")
def _rnn(ctx, x, w, r, b=None, seq_lens=None, h0=None):
    acts = [a if isinstance(a, str) else a.decode() for a in (ctx.attr("activations") or ["Tanh"])]
    act = {"Tanh": F.tanh, "Relu": F.relu, "Sigmoid": F.sigmoid}.get(acts[0])
    if act is None or ctx.attr("clip") is not None:
        raise ctx.unsupported(f"activation {acts[0]} or clip")
    layout, direction, H, dirs, x, b, h0 = _rnn_common(ctx, x, w, r, b, seq_lens, h0, 1)
    T = x.shape[0]
    outs_by_dir, hs = [], []
    for d in range(dirs):
        xp = em.matmul(x, w[d].mT) + b[d, :H] + b[d, H:]
        h = h0[d]
        outs = [None] * T
        for t in _direction_steps(direction, d, T):
            h = act(xp[t] + em.matmul(h, r[d].mT))
            outs[t] = h
        outs_by_dir.append(em.stack(outs, 0))
        hs.append(h)
    return _finish_rnn(ctx, layout, outs_by_dir, hs)


# ---- losses, normalisations, rearrangements ------------------------------------------------------

def _loss_reduce(ctx, loss, weight_sum=None):
    reduction = ctx.attr("reduction", "mean")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / weight_sum if weight_sum is not None else loss.mean()


@op("NegativeLogLikelihoodLoss")
def _nll_loss(ctx, x, target, weight=None):
    ignore = ctx.attr("ignore_index")
    c = x.shape[1]
    t = target.data.astype(np.int64)
    valid = np.ones(t.shape, dtype=bool) if ignore is None else (t != ignore)
    safe = np.where(valid, t, 0)
    picked = em.take_along_dim(x, Tensor._make(safe[:, None]), 1).squeeze(1)
    w = np.ones(c, dtype=x.data.dtype) if weight is None else weight
    wt = (w[Tensor._make(safe)] if isinstance(w, Tensor) else Tensor._make(w[safe])) * Tensor._make(valid)
    loss = -picked * wt
    return _loss_reduce(ctx, loss, wt.sum())


@op("SoftmaxCrossEntropyLoss")
def _sce_loss(ctx, scores, labels, weight=None):
    logp = F.log_softmax(scores, 1)
    loss = _nll_loss(ctx, logp, labels, weight)
    return (loss, logp) if ctx.n_outputs > 1 else loss


@op("RMSNormalization")
def _rms_norm(ctx, x, scale):
    axis = ctx.attr("axis", -1) % x.ndim
    dims = tuple(range(axis, x.ndim))
    eps = ctx.attr("epsilon", 1e-5)
    return x * em.rsqrt((x * x).mean(dims, keepdim=True) + eps) * scale


@op("GroupNormalization")
def _group_norm(ctx, x, scale, bias):
    g = ctx.attr("num_groups")
    eps = ctx.attr("epsilon", 1e-5)
    n, c = x.shape[:2]
    grouped = x.reshape(n, g, -1)
    mu = grouped.mean(2, keepdim=True)
    centered = grouped - mu
    out = (centered * em.rsqrt((centered * centered).mean(2, keepdim=True) + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if scale.shape[0] == g and g != c:  # opset 18 form: one scale per group
        scale, bias = scale.repeat_interleave(c // g), bias.repeat_interleave(c // g)
    return out * scale.reshape(shape) + bias.reshape(shape)


@op("LpNormalization")
def _lp_norm(ctx, x):
    axis, p = ctx.attr("axis", -1), ctx.attr("p", 2)
    norm = em.norm(x, p=p, dim=axis, keepdim=True)
    return em.where(norm == 0, 0.0, x / em.where(norm == 0, 1.0, norm))


@op("MeanVarianceNormalization")
def _mvn(ctx, x):
    dims = tuple(ctx.attr("axes") or (0, 2, 3))
    centered = x - x.mean(dims, keepdim=True)
    return centered / em.sqrt((centered * centered).mean(dims, keepdim=True))


@op("Shrink")
def _shrink(ctx, x):
    lam, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    return em.where(x < -lam, x + bias, em.where(x > lam, x - bias, 0.0)).astype(x.dtype)


@op("Swish")
def _swish(ctx, x):
    return x * F.sigmoid(x * ctx.attr("alpha", 1.0))


@op("BitShift")
def _bitshift(ctx, x, y):
    a, b = x.data, y.data.astype(x.data.dtype)
    return Tensor._make(np.left_shift(a, b) if ctx.attr("direction") == "LEFT" else np.right_shift(a, b))


@op("CumProd")
def _cumprod(ctx, x, axis):
    a = _ints(axis)[0]
    y = x.flip(a) if ctx.attr("reverse", 0) else x
    out = em.cumprod(y, a).astype(x.dtype)
    if ctx.attr("exclusive", 0):
        ones = em.ones_like(em.narrow(y, a, 0, 1))
        out = em.cat([ones, em.narrow(out, a, 0, y.shape[a] - 1)], a)
    return out.flip(a) if ctx.attr("reverse", 0) else out


@op("DepthToSpace")
def _depth_to_space(ctx, x):
    b = ctx.attr("blocksize")
    n, c, h, w = x.shape
    if ctx.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth")
def _space_to_depth(ctx, x):
    b = ctx.attr("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    y = y.permute(0, 1, 3, 5, 2, 4) if ctx.attr("mode", "DCR") == "CRD" else y.permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@op("NonZero")
def _nonzero(ctx, x):
    return Tensor._make(np.asarray(np.nonzero(x.data), dtype=np.int64).reshape(x.ndim, -1))


@op("EyeLike")
def _eye_like(ctx, x):
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(ctx.attr("dtype")) if ctx.attr("dtype") is not None else x.data.dtype
    return Tensor._make(np.eye(x.shape[0], x.shape[1], ctx.attr("k", 0), dtype=dtype))


@op("Compress")
def _compress(ctx, x, condition):
    axis = ctx.attr("axis")
    cond = condition.data.astype(bool)
    if axis is None:
        flat = x.reshape(-1)
        return flat[Tensor._make(np.nonzero(cond)[0].astype(np.int64))]
    axis %= x.ndim
    return em.index_select(x, axis, Tensor._make(np.nonzero(cond)[0].astype(np.int64)))


@op("ReverseSequence")
def _reverse_sequence(ctx, x, lens):
    time_axis, batch_axis = ctx.attr("time_axis", 0), ctx.attr("batch_axis", 1)
    a = x.data
    idx = np.broadcast_to(np.arange(a.shape[time_axis]).reshape([-1 if i == time_axis else 1 for i in range(a.ndim)]),
                          a.shape).copy()
    for b, n in enumerate(_np(lens).astype(np.int64)):
        sel = [slice(None)] * a.ndim
        sel[batch_axis] = b
        sel[time_axis] = slice(0, n)
        view = idx[tuple(sel)]
        idx[tuple(sel)] = np.flip(view, axis=time_axis if time_axis < batch_axis else time_axis - 1)
    return em.gather(x, time_axis, Tensor._make(idx))


@op("ScatterElements", "Scatter")
def _scatter_elements(ctx, x, indices, updates):
    axis = ctx.attr("axis", 0) % x.ndim
    idx = indices.data.astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    reduction = ctx.attr("reduction", "none")
    if reduction == "add":
        return em.scatter_add(x, axis, Tensor._make(idx), updates)
    if reduction == "none":
        return em.scatter(x, axis, Tensor._make(idx), updates)
    out = x.data.copy()
    full = [np.broadcast_to(np.arange(n).reshape([-1 if i == d else 1 for i in range(idx.ndim)]), idx.shape)
            for d, n in enumerate(idx.shape)]
    full[axis] = idx
    fn = {"mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
    fn.at(out, tuple(full), updates.data)
    return Tensor._make(out)


@op("ScatterND")
def _scatter_nd(ctx, x, indices, updates):
    out = x.data.copy()
    idx = indices.data.astype(np.int64)
    k = idx.shape[-1]
    index = tuple(np.moveaxis(idx, -1, 0)[:k])
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        out[index] = updates.data
    else:
        ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
        ufunc.at(out, index, updates.data)
    return Tensor._make(out)


# ---- quantization ----------------------------------------------------------------------------------

def _per_axis(ctx, t, x, what="scale"):
    """A scale or zero point as an array that broadcasts against ``x``: a scalar (per-tensor), a
    1-D array along ``axis`` (per-axis) or, with ``block_size`` B, an array shaped like ``x`` except
    ceil(D/B) along ``axis``, each value covering B consecutive elements (blocked)."""
    a = _np(t)
    if a.ndim == 0 or a.size == 1:
        return a.reshape(())
    axis = ctx.attr("axis", 1)
    if not -x.ndim <= axis < x.ndim:
        raise ctx.unsupported(f"axis={axis} for an input of shape {tuple(x.shape)}")
    axis %= x.ndim
    block = ctx.attr("block_size", 0)
    if block:
        blocks = list(x.shape)
        blocks[axis] = -(-x.shape[axis] // block)
        if list(a.shape) != blocks:
            raise ctx.unsupported(f"a {what} of shape {a.shape} with block_size={block} on axis {axis} for an input "
                                  f"of shape {tuple(x.shape)} (blocked quantization needs shape {tuple(blocks)})")
        return np.repeat(a, block, axis=axis).take(np.arange(x.shape[axis]), axis)  # the last block may be short
    if a.ndim != 1 or a.shape[0] != x.shape[axis]:
        raise ctx.unsupported(f"a {what} of shape {a.shape} for per-axis quantization along axis {axis} of an input "
                              f"of shape {tuple(x.shape)} (it must be 1-D with {x.shape[axis]} values)")
    return a.reshape([-1 if i == axis else 1 for i in range(x.ndim)])


def _tensor_dtype(code):
    """The NumPy dtype of an ONNX TensorProto data-type code (None for 0, "not given")."""
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(code)) if code else None


_QUANTIZED_INTEGERS = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16))


@op("QuantizeLinear")
def _quantize(ctx, x, scale, zero_point=None):
    """y = saturate(round_half_to_even(x / y_scale) + y_zero_point). The division runs in the
    ``precision`` attribute's type, by default y_scale's, as the specification says: in float64 a
    quotient such as 0.5 / float32(5/255) = 25.4999991 rounds to 25 where float32's 25.5 gives 26."""
    out_dtype = _tensor_dtype(ctx.attr("output_dtype", 0))
    if zero_point is not None:
        if out_dtype is not None and out_dtype != zero_point.data.dtype:
            raise ctx.unsupported(f"output_dtype={out_dtype} with a zero point of type {zero_point.data.dtype} "
                                  "(the specification requires them to match)")
        out_dtype = zero_point.data.dtype
    out_dtype = np.dtype(np.uint8) if out_dtype is None else out_dtype
    if out_dtype not in _QUANTIZED_INTEGERS:
        raise ctx.unsupported(f"quantizing to {out_dtype} (ember quantizes to uint8, int8, uint16 and int16)")
    precision = _tensor_dtype(ctx.attr("precision", 0))
    precision = _np(scale).dtype if precision is None else precision
    s = _per_axis(ctx, scale, x).astype(precision)
    q = np.rint(x.data.astype(precision) / s).astype(np.float64)
    if zero_point is not None:
        q += _per_axis(ctx, zero_point, x, "zero point")
    info = np.iinfo(out_dtype)
    return Tensor._make(np.clip(q, info.min, info.max).astype(out_dtype))


@op("DequantizeLinear")
def _dequantize(ctx, x, scale, zero_point=None):
    """y = (x - x_zero_point) * x_scale, in ``output_dtype`` (by default x_scale's type)."""
    if x.data.dtype not in _QUANTIZED_INTEGERS + (np.dtype(np.int32),):
        raise ctx.unsupported(f"dequantizing {x.data.dtype} (ember dequantizes uint8, int8, uint16, int16 and int32)")
    s = _per_axis(ctx, scale, x)
    zp = 0 if zero_point is None else _per_axis(ctx, zero_point, x, "zero point").astype(np.int64)
    out_dtype = _tensor_dtype(ctx.attr("output_dtype", 0))
    out_dtype = np.asarray(_np(scale)).dtype if out_dtype is None else out_dtype
    return Tensor._make(((x.data.astype(np.int64) - zp) * s).astype(out_dtype))


@op("DynamicQuantizeLinear")
def _dynamic_quantize(ctx, x):
    """uint8 quantization with a scale and zero point from x's range (widened to hold 0), computed in
    float32 step by step as the specification's function body does. For an all-zero x (a range of
    0) the scale is 1, as onnxruntime does, rather than a division by zero."""
    a = x.data.astype(np.float32)
    hi, lo = np.float32(a.max(initial=0.0)), np.float32(a.min(initial=0.0))  # the range always holds 0
    scale = (hi - lo) / np.float32(255) if hi > lo else np.float32(1.0)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    q = np.clip(np.rint(a / scale) + zp, 0, 255).astype(np.uint8)
    return Tensor._make(q), Tensor._make(np.asarray(scale, np.float32)), Tensor._make(np.asarray(zp, np.uint8))


@op("MatMulInteger")
def _matmul_integer(ctx, a, b, a_zp=None, b_zp=None):
    av = a.data.astype(np.int32) - (0 if a_zp is None else _np(a_zp).astype(np.int32).reshape(-1, 1)
                                    if _np(a_zp).size > 1 else _np(a_zp).astype(np.int32))
    bv = b.data.astype(np.int32) - (0 if b_zp is None else _np(b_zp).astype(np.int32))
    return Tensor._make(np.matmul(av, bv).astype(np.int32))


@op("ConvInteger")
def _conv_integer(ctx, x, w, x_zp=None, w_zp=None):
    """int32 convolution of zero-point-shifted integers; padding holds the zero point (the shifted
    input is zero-padded), as the specification and onnxruntime do. Computed in float64, which is
    exact for these integer sums (|x - zp| <= 255, |w - zp| <= 255, far below 2**53 in total)."""
    xs = x.data.astype(np.float64) - (0 if x_zp is None else float(_np(x_zp).reshape(-1)[0]))
    wzp = 0 if w_zp is None else _np(w_zp).astype(np.float64)
    ws = w.data.astype(np.float64) - (wzp.reshape(-1, 1, 1, 1) if np.ndim(wzp) and np.size(wzp) > 1 else wzp)
    if w.ndim != 4:
        raise ctx.unsupported(f"{w.ndim - 2}-D integer convolution")
    strides = ctx.attr("strides") or [1, 1]
    dilations = ctx.attr("dilations") or [1, 1]
    pads = _same_pads(ctx, x.shape[2:], list(w.shape[2:]), strides, dilations)
    xt = Tensor._make(xs)
    if pads[:2] != pads[2:]:
        xt, pads = _explicit_pad(xt, pads), [0, 0, 0, 0]
    out = F.conv2d(xt, Tensor._make(ws), None, tuple(strides), tuple(pads[:2]), tuple(dilations),
                   ctx.attr("group", 1))
    return Tensor._make(np.rint(out.data).astype(np.int32))


@op("QLinearMatMul")
def _qlinear_matmul(ctx, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
    af = (a.data.astype(np.int64) - _np(a_zp).astype(np.int64)) * _np(a_scale)
    bf = (b.data.astype(np.int64) - _np(b_zp).astype(np.int64)) * _np(b_scale)
    y = np.rint(np.matmul(af, bf) / _np(y_scale)) + _np(y_zp).astype(np.int64)
    info = np.iinfo(_np(y_zp).dtype)
    return Tensor._make(np.clip(y, info.min, info.max).astype(_np(y_zp).dtype))


# ---- resizing ---------------------------------------------------------------------------------------

def _resize_coords(ctx, out_n, in_n, scale, roi):
    """Source coordinate of each output index along one axis, and which ones fall outside the
    crop (tf_crop_and_resize only)."""
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    i = np.arange(out_n, dtype=np.float64)
    out_w = scale * in_n
    outside = None
    if mode == "half_pixel":
        x = (i + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        x = (i + 0.5) / scale - 0.5 if out_w != 1 else np.full(out_n, -0.5)
    elif mode == "align_corners":
        x = i * (in_n - 1) / (out_w - 1) if out_w != 1 else np.zeros(out_n)
    elif mode == "asymmetric":
        x = i / scale
    elif mode == "half_pixel_symmetric":
        offset = in_n / 2 * (1 - out_n / out_w)
        x = offset + (i + 0.5) / scale - 0.5
    elif mode == "tf_crop_and_resize":
        lo, hi = roi
        x = i * (hi - lo) * (in_n - 1) / (out_w - 1) if out_w != 1 else np.full(out_n, (hi - lo) * (in_n - 1) / 2)
        x = x + lo * (in_n - 1)
        outside = (x < 0) | (x > in_n - 1)
    else:
        raise ctx.unsupported(f"coordinate_transformation_mode {mode!r}")
    return x, outside


def _resize_taps(ctx, mode, ratio, scale):
    """Interpolation weights (out, taps) for each output's fractional position ``ratio`` in (0, 1]."""
    r = ratio[:, None]
    if mode == "nearest":
        nm = ctx.attr("nearest_mode", "round_prefer_floor")
        right = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5, "floor": r < 0,
                 "ceil": r >= 0}[nm]
        right = np.where(r == 1, True, right)
        return np.concatenate([~right, right], 1).astype(np.float64)
    antialias = ctx.attr("antialias", 0) and scale < 1
    if mode == "linear":
        if not antialias:
            return np.concatenate([1 - r, r], 1)
        start = int(np.floor(-1 / scale) + 1)
        w = np.clip(1 - np.abs((np.arange(start, 2 - start)[None, :] - r) * scale), 0, 1)
        return w / w.sum(1, keepdims=True)
    if mode == "cubic":
        a = ctx.attr("cubic_coeff_a", -0.75)

        def kernel(t):
            t = np.abs(t)
            near = ((a + 2) * t - (a + 3)) * t * t + 1
            far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
            return np.where(t <= 1, near, np.where(t < 2, far, 0.0))
        if not antialias:
            return kernel(np.arange(-1, 3)[None, :] - r)
        start = int(np.floor(-2 / scale) + 1)
        w = kernel(scale * (np.arange(start, 2 - start)[None, :] - r))
        return w / w.sum(1, keepdims=True)
    raise ctx.unsupported(f"mode {mode!r}")


def _resize_matrix(ctx, mode, out_n, in_n, scale, roi):
    """Weights W (out_n, in_n) with y = W @ x along one axis; outside-crop rows are flagged."""
    x, outside = _resize_coords(ctx, out_n, in_n, scale, roi)
    base = np.floor(x).astype(np.int64)
    ratio = np.where(x == base, 1.0, x - base)
    taps = _resize_taps(ctx, mode, ratio, scale)
    n = taps.shape[1]
    # The n source indices nearest to x, ties to the left (edge-clamped below): as the spec's reference.
    frac = x - base
    if n % 2 == 0:
        start = base + np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        start = base + np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = start[:, None] + np.arange(n)[None, :]
    if ctx.attr("exclude_outside", 0):
        taps = np.where((idx < 0) | (idx >= in_n), 0.0, taps)
        total = taps.sum(1, keepdims=True)
        taps = taps / np.where(total == 0, 1.0, total)
    w = np.zeros((out_n, in_n))
    np.add.at(w, (np.repeat(np.arange(out_n), n), np.clip(idx, 0, in_n - 1).reshape(-1)), taps.reshape(-1))
    return w, outside


@op("Resize", "Upsample")
def _resize(ctx, x, roi=None, scales=None, sizes=None):
    """ONNX Resize: nearest/linear/cubic, every coordinate mode, antialiasing, crop-and-resize and
    aspect-ratio policies; separable, one (out, in) weight matrix per resized axis."""
    if ctx.node.op_type == "Upsample":
        scales, roi, sizes = roi, None, None
    mode = ctx.attr("mode", "nearest")
    nd = x.ndim
    in_shape = list(x.shape)
    axes = [a % nd for a in (ctx.attr("axes") or [])] or list(range(nd))
    roi_v = _np(roi).astype(np.float64).reshape(-1) if roi is not None and _np(roi).size else None
    rois = [(0.0, 1.0)] * nd
    if roi_v is not None:
        k = len(roi_v) // 2
        for j, a in enumerate(axes if k == len(axes) else range(nd)):
            rois[a] = (roi_v[j], roi_v[k + j])
    if sizes is not None and _np(sizes).size:
        out_shape = list(in_shape)
        for a, n in zip(axes, _ints(sizes)):
            out_shape[a] = n
        scale_f = [out_shape[i] / in_shape[i] for i in range(nd)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = {"not_larger": min, "not_smaller": max}[policy]
            common = pick(scale_f[a] for a in axes)
            scale_f = [common if i in axes else 1.0 for i in range(nd)]
            out_shape = [int(common * in_shape[i] + 0.5) if i in axes else in_shape[i] for i in range(nd)]
    else:
        scale_f = [1.0] * nd
        for a, v in zip(axes, _np(scales).reshape(-1).tolist()):
            scale_f[a] = float(v)
        out_shape = [int(n * s) for n, s in zip(in_shape, scale_f)]
    extrapolation = float(ctx.attr("extrapolation_value", 0.0))
    out = x
    for d in range(nd):
        if out_shape[d] == in_shape[d] and np.isclose(scale_f[d], 1.0) and rois[d] == (0.0, 1.0):
            continue
        w, outside = _resize_matrix(ctx, mode, out_shape[d], in_shape[d], scale_f[d], rois[d])
        if mode == "nearest":  # a gather keeps integer inputs exact
            out = em.index_select(out, d, Tensor._make(w.argmax(1)))
        else:
            moved = out.movedim(d, -1)
            out = em.matmul(moved, Tensor._make(w.T.astype(x.data.dtype))).movedim(-1, d)
        if outside is not None and outside.any():
            shape = [-1 if i == d else 1 for i in range(nd)]
            out = em.where(Tensor._make(outside.reshape(shape)), extrapolation, out).astype(x.dtype)
    return out


# ---- attention (opset 23) ---------------------------------------------------------------------------

def _window_bias(q_len, kv_len, offset, allowed_fn, dtype):
    """Additive 0/-inf bias of shape (q, kv), or (batch, 1, q, kv) for a per-batch offset."""
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    off = np.asarray(offset).reshape(-1, 1, 1) if np.ndim(offset) else int(offset)
    bias = np.where(allowed_fn(i + off, j), dtype.type(0), dtype.type(-np.inf))
    return bias.reshape(bias.shape[0], 1, q_len, kv_len) if bias.ndim == 3 else bias


@op("Attention")
def _attention(ctx, q, k, v, mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
    """ONNX Attention (opset 23/24): scaled dot-product attention with optional KV cache,
    grouped-query heads, causal/sliding-window/padding masks, softcap and the QK output modes."""
    three_d = q.ndim == 3
    if three_d:
        qh, kvh = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        b, s_q, _ = q.shape
        q = q.reshape(b, s_q, qh, -1).transpose(1, 2)
        k = k.reshape(b, k.shape[1], kvh, -1).transpose(1, 2)
        v = v.reshape(b, v.shape[1], kvh, -1).transpose(1, 2)
    if past_key is not None:
        k = em.cat([past_key, k], 2)
        v = em.cat([past_value, v], 2)
    present_k, present_v = k, v
    dt = q.data.dtype
    sq, sk = q.shape[2], k.shape[2]
    # Masks are data: build one additive bias in NumPy, laid out the way the spec combines them.
    m = None if mask is None else mask.data
    if m is not None and m.shape[-1] < sk:
        m = np.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, sk - m.shape[-1])],
                   constant_values=False if m.dtype == np.bool_ else -np.inf)
    if m is not None and m.dtype == np.bool_:
        m = np.where(m, dt.type(0), dt.type(-np.inf))
    bias = np.zeros((sq, sk), dt) if m is None else m.astype(dt)
    if past_key is not None:
        offset = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = nonpad_kv_seqlen.data.reshape(-1) - sq
    else:
        offset = 0
    if ctx.attr("is_causal", 0):
        bias = bias + _window_bias(sq, sk, offset, lambda pos, j: j <= pos, dt)
    left, right = ctx.attr("left_window_size", -1), ctx.attr("right_window_size", -1)
    if left >= 0 or right >= 0:
        bias = bias + _window_bias(sq, sk, offset, lambda pos, j: ((pos - j <= left) if left >= 0 else True)
                                   & ((j - pos <= right) if right >= 0 else True), dt)
    if nonpad_kv_seqlen is not None:
        valid = np.arange(sk)[None, :] < nonpad_kv_seqlen.data.reshape(-1, 1)
        bias = bias + np.where(valid, dt.type(0), dt.type(-np.inf)).reshape(-1, 1, 1, sk)
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:  # grouped-query attention: each key/value head serves hq/hk query heads
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    scale = ctx.attr("scale")
    root = float(np.sqrt(scale if scale is not None else 1.0 / np.sqrt(q.shape[-1])))
    # The spec scales q and k by sqrt(scale) each; in float16 that rounds differently from scaling once.
    scores = em.matmul(q * root, (k * root).mT)
    softcap = ctx.attr("softcap", 0.0)
    if softcap and softcap > 0:
        scores = em.tanh(scores / softcap) * softcap
    mode = ctx.attr("qk_matmul_output_mode", 0)
    qk_out = scores
    with_bias = scores + Tensor._make(bias)
    if mode == 2:
        qk_out = with_bias
    precision = ctx.attr("softmax_precision")
    if precision is not None:
        from onnx import helper

        with_bias = with_bias.astype(helper.tensor_dtype_to_np_dtype(precision))
    # A row whose bias is all -inf attends to nothing: its weights are 0 (softmax alone gives NaN).
    row_masked = Tensor._make(np.isneginf(bias.max(-1, keepdims=True)))
    row_max = em.amax(with_bias, -1, True)
    safe = em.where(em.isinf(row_max) & (row_max < 0), 0.0, row_max).detach()
    e = em.exp(with_bias - safe)
    total = em.sum(e, -1, True)
    attn = em.where(row_masked, 0.0, e / em.where(total == 0, 1.0, total))
    if mode == 3:
        qk_out = attn
    attn = attn.astype(q.dtype)
    y = em.matmul(attn, v)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    outs = (y, present_k, present_v, qk_out.astype(q.dtype))
    return outs[:ctx.n_outputs] if ctx.n_outputs > 1 else y
