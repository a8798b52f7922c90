"""ONNX operators in ember ops (the table behind ``em.onnx.load``), following the ONNX
operator specification, including the opset-dependent forms (e.g. axes as an attribute
before opset 13/18 and as an input after)."""

from __future__ import annotations

import numpy as np

import ember as em

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
          "Softplus": lambda x: em.softplus(x, 1.0, 1e30), "Identity": lambda x: x}
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
    if to.kind in "USO":
        raise ctx.unsupported(f"cast to {to}")
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
    if b:
        raise ctx.unsupported("batch_dims > 0")
    idx = indices.data
    k = idx.shape[-1]
    dims = np.array(x.shape[:k])
    idx = np.where(idx < 0, idx + dims, idx)
    return x[tuple(Tensor._make(idx[..., i].astype(np.int64)) for i in range(k))]


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
    order = np.argsort(-a if largest else a, axis=axis, kind="stable")
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
op("ReduceMax")(_reduce(lambda x, d, k: em.amax(x, d, k)))
op("ReduceMin")(_reduce(lambda x, d, k: em.amin(x, d, k)))
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


@op("Conv")
def _conv(ctx, x, w, b=None):
    nd = w.ndim - 2
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


@op("ConvTranspose")
def _conv_transpose(ctx, x, w, b=None):
    nd = w.ndim - 2
    if nd not in (1, 2):
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
        begin = [(t // 2 if mode != "SAME_LOWER" else t - t // 2) for t in total]
        end = [t - b_ for t, b_ in zip(total, begin)]
        pads = begin + end
    else:
        pads = list(ctx.attr("pads") or [0] * (2 * nd))
        if nd == 1:
            pads = [0, pads[0], 0, pads[1]]
    group = ctx.attr("group", 1)
    sym = [min(a, c) for a, c in zip(pads[:2], pads[2:])]
    out = F.conv_transpose2d(x, w, b, tuple(strides), tuple(sym), tuple(out_pad), group, tuple(dilations))
    extra_begin = [a - s for a, s in zip(pads[:2], sym)]
    extra_end = [c - s for c, s in zip(pads[2:], sym)]
    if any(extra_begin) or any(extra_end):  # asymmetric pads crop more on one side
        h, wd = out.shape[2:]
        out = out[:, :, extra_begin[0]:h - extra_end[0], extra_begin[1]:wd - extra_end[1]]
    return out.squeeze(2) if nd == 1 else out


def _pool_args(ctx, x):
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(ctx.attr("strides") or [1] * nd)
    dilations = list(ctx.attr("dilations") or [1] * nd)
    pads = _same_pads(ctx, x.shape[2:], kernel, strides, dilations)
    return nd, kernel, strides, dilations, pads


@op("MaxPool")
def _max_pool(ctx, x):
    nd, kernel, strides, dilations, pads = _pool_args(ctx, x)
    if nd not in (1, 2):
        raise ctx.unsupported(f"{nd}-D pooling")
    if ctx.n_outputs > 1 and ctx.node.output[1]:
        raise ctx.unsupported("the Indices output of MaxPool")
    ceil = bool(ctx.attr("ceil_mode", 0))
    if nd == 1:
        x = x.unsqueeze(2)
        kernel, strides, dilations, pads = [1] + kernel, [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    if pads[:2] != pads[2:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
        x = _explicit_pad(x, pads, value=-np.inf)
        pads = [0, 0, 0, 0]
    out = F.max_pool2d(x, tuple(kernel), tuple(strides), tuple(pads[:2]), tuple(dilations), ceil)
    return out.squeeze(2) if nd == 1 else out


@op("AveragePool")
def _avg_pool(ctx, x):
    nd, kernel, strides, dilations, pads = _pool_args(ctx, x)
    if nd not in (1, 2) or any(d != 1 for d in dilations):
        raise ctx.unsupported(f"{nd}-D or dilated average pooling")
    include = bool(ctx.attr("count_include_pad", 0))
    ceil = bool(ctx.attr("ceil_mode", 0))
    if nd == 1:
        x = x.unsqueeze(2)
        kernel, strides, pads = [1] + kernel, [1] + strides, [0, pads[0], 0, pads[1]]
    if pads[:2] != pads[2:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
        if not include:
            raise ctx.unsupported("asymmetric padding with count_include_pad=0")
        x = _explicit_pad(x, pads)
        pads = [0, 0, 0, 0]
    out = F.avg_pool2d(x, tuple(kernel), tuple(strides), tuple(pads[:2]), ceil, include)
    return out.squeeze(2) if nd == 1 else out


@op("GlobalAveragePool")
def _gap(ctx, x):
    return x.mean(tuple(range(2, x.ndim)), keepdim=True)


@op("GlobalMaxPool")
def _gmp(ctx, x):
    return x.amax(tuple(range(2, x.ndim)), keepdim=True)


@op("BatchNormalization")
def _batch_norm(ctx, x, scale, bias, mean, var):
    if ctx.attr("training_mode", 0):
        raise ctx.unsupported("training_mode=1")
    eps = ctx.attr("epsilon", 1e-5)
    shape = (1, -1) + (1,) * (x.ndim - 2)
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
    if training_mode is not None and bool(_np(training_mode).reshape(-1)[0]):
        raise ctx.unsupported("training_mode=True")
    if ctx.n_outputs > 1:
        return x * 1, Tensor._make(np.ones(x.shape, dtype=bool))
    return x * 1


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
    if p is not None or ctx.attr("clip") is not None or ctx.attr("input_forget", 0):
        raise ctx.unsupported("peepholes, clip or input_forget")
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
        for t in _direction_steps(direction, d, T):
            g = xp[t] + em.matmul(h, r[d].mT)
            i, o, f, cc = F.sigmoid(g[:, :H]), F.sigmoid(g[:, H:2 * H]), F.sigmoid(g[:, 2 * H:3 * H]), \
                F.tanh(g[:, 3 * H:])
            c = f * c + i * cc
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
