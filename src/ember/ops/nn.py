"""Neural-net primitives: softmax, log_softmax, and the im2col pair unfold/fold.

softmax and log_softmax are primitives (not exp/sum chains) for numerical stability and
because their gradients have short closed forms. Convolution and pooling are composites of
unfold (im2col), matmul and reductions, so their gradients, including second derivatives,
come from autograd; unfold and fold are each other's gradient.
"""

from __future__ import annotations

import numpy as np

from ..errors import OpError, ShapeError
from .helpers import as_tensor, floating, norm_dim
from .registry import Meta, apply, primitive


def _softmax_np(x, dim):
    if x.size == 0:  # (np.max has no identity for an empty dim)
        return x.copy()
    m = np.max(x, axis=dim, keepdims=True)
    if not np.isfinite(m).all():
        m = np.where(np.isfinite(m), m, 0)
    e = np.exp(x - m)
    e /= np.sum(e, axis=dim, keepdims=True)
    return e


def _log_softmax_np(x, dim):
    if x.size == 0:
        return x.copy()
    m = np.max(x, axis=dim, keepdims=True)
    if not np.isfinite(m).all():
        m = np.where(np.isfinite(m), m, 0)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))


def _same(x, dim):
    return x.shape, x.np_dtype


SOFTMAX = primitive("softmax", _softmax_np,
                    (lambda g, out, x, dim: out * (g - (g * out).sum(dim, keepdim=True)),),
                    infer=_same, saves=(), uses_out=True)
LOG_SOFTMAX = primitive("log_softmax", _log_softmax_np,
                        (lambda g, out, x, dim: g - out.exp() * g.sum(dim, keepdim=True),),
                        infer=_same, saves=(), uses_out=True)


def softmax(x, dim=-1, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim``, computed stably."""
    x = floating(as_tensor(x))
    if dtype is not None:
        x = x.astype(dtype)
    if x.ndim == 0:
        return x * 0 + 1
    return apply(SOFTMAX, (x,), {"dim": norm_dim(dim, x.ndim, "softmax")})


def log_softmax(x, dim=-1, dtype=None):
    x = floating(as_tensor(x))
    if dtype is not None:
        x = x.astype(dtype)
    if x.ndim == 0:
        return x * 0
    return apply(LOG_SOFTMAX, (x,), {"dim": norm_dim(dim, x.ndim, "log_softmax")})


# ---- im2col ---------------------------------------------------------------------------

def conv_out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _unfold_np(x, kernel, dilation, padding, stride):
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    n, c, h, w = x.shape
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = conv_out_size(h, kh, sh, ph, dh)
    wo = conv_out_size(w, kw, sw, pw, dw)
    s0, s1, s2, s3 = x.strides
    windows = np.lib.stride_tricks.as_strided(
        x, shape=(n, c, kh, kw, ho, wo), strides=(s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw),
        writeable=False)
    return windows.reshape(n, c * kh * kw, ho * wo)


def _fold_np(cols, output_size, kernel, dilation, padding, stride):
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    h, w = output_size
    n = cols.shape[0]
    c = cols.shape[1] // (kh * kw)
    ho = conv_out_size(h, kh, sh, ph, dh)
    wo = conv_out_size(w, kw, sw, pw, dw)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    if (sh, sw) == (kh, kw) and (dh, dw) == (1, 1) and ho * sh == h + 2 * ph and wo * sw == w + 2 * pw:
        # non-overlapping windows tile the image: a transpose, no accumulation
        out = cols.transpose(0, 1, 4, 2, 5, 3).reshape(n, c, h + 2 * ph, w + 2 * pw)
    else:
        for i in range(kh):
            for j in range(kw):
                out[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                    j * dw:j * dw + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    if ph or pw:
        out = out[:, :, ph:ph + h, pw:pw + w]
    return np.ascontiguousarray(out)


def _unfold_infer(x, kernel, dilation, padding, stride):
    if len(x.shape) != 4:
        raise ShapeError(f"unfold: expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    ho = conv_out_size(h, kernel[0], stride[0], padding[0], dilation[0])
    wo = conv_out_size(w, kernel[1], stride[1], padding[1], dilation[1])
    if ho <= 0 or wo <= 0:
        raise ShapeError(f"unfold: kernel {kernel} with dilation {dilation} does not fit the "
                         f"padded input of spatial size ({h + 2 * padding[0]}, "
                         f"{w + 2 * padding[1]})")
    return (n, c * kernel[0] * kernel[1], ho * wo), x.np_dtype


def _fold_infer(cols, output_size, kernel, dilation, padding, stride):
    if len(cols.shape) != 3:
        raise ShapeError(f"fold: expects a 3-D input (N, C*kh*kw, L), got shape "
                         f"{tuple(cols.shape)}")
    n, ckk, l_ = cols.shape
    kk = kernel[0] * kernel[1]
    ho = conv_out_size(output_size[0], kernel[0], stride[0], padding[0], dilation[0])
    wo = conv_out_size(output_size[1], kernel[1], stride[1], padding[1], dilation[1])
    if ckk % kk or ho * wo != l_:
        raise ShapeError(f"fold: input of shape {tuple(cols.shape)} does not match kernel "
                         f"{kernel} and output size {output_size} (expected C*{kk} rows and "
                         f"{ho * wo} columns)")
    return (n, ckk // kk) + tuple(output_size), cols.np_dtype


UNFOLD = primitive(
    "unfold", _unfold_np,
    (lambda g, out, x, kernel, dilation, padding, stride:
        fold(g, x.shape[2:], kernel, dilation, padding, stride),),
    infer=_unfold_infer, saves=())
FOLD = primitive(
    "fold", _fold_np,
    (lambda g, out, cols, output_size, kernel, dilation, padding, stride:
        unfold(g, kernel, dilation, padding, stride),),
    infer=_fold_infer, saves=())


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise OpError(f"{name} must be an int or a pair, got {v}")
    return v


def unfold(x, kernel_size, dilation=1, padding=0, stride=1):
    """Sliding local blocks (im2col): (N, C, H, W) -> (N, C*kh*kw, L), as torch's F.unfold.
    An unbatched (C, H, W) input gives (C*kh*kw, L)."""
    x = as_tensor(x)
    attrs = {"kernel": _pair(kernel_size, "kernel_size"), "dilation": _pair(dilation, "dilation"),
             "padding": _pair(padding, "padding"), "stride": _pair(stride, "stride")}
    if x.ndim not in (3, 4):
        raise ShapeError(f"unfold: expects a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape "
                         f"{x.shape}")
    if x.ndim == 3:
        return unfold(x.unsqueeze(0), kernel_size, dilation, padding, stride).squeeze(0)
    _unfold_infer(Meta(x.shape, x.data.dtype), **attrs)  # reject kernels that do not fit
    return apply(UNFOLD, (x,), attrs)


def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sum sliding blocks back into an image (col2im): (N, C*kh*kw, L) -> (N, C, H, W).
    An unbatched (C*kh*kw, L) input gives (C, H, W)."""
    x = as_tensor(x)
    attrs = {"output_size": _pair(output_size, "output_size"),
             "kernel": _pair(kernel_size, "kernel_size"),
             "dilation": _pair(dilation, "dilation"), "padding": _pair(padding, "padding"),
             "stride": _pair(stride, "stride")}
    if x.ndim not in (2, 3):
        raise ShapeError(f"fold: expects a 2-D (C*kh*kw, L) or 3-D (N, C*kh*kw, L) input, got "
                         f"shape {x.shape}")
    if x.ndim == 2:
        return fold(x.unsqueeze(0), output_size, kernel_size, dilation, padding, stride).squeeze(0)
    _fold_infer(Meta(x.shape, x.data.dtype), **attrs)
    return apply(FOLD, (x,), attrs)


ONE_HOT = primitive(
    "one_hot", lambda x, num_classes: (x[..., None] == np.arange(num_classes)).astype(np.int64),
    infer=lambda x, num_classes: (tuple(x.shape) + (num_classes,), np.dtype(np.int64)))


def one_hot(x, num_classes=-1):
    """Class indices (any shape, int) -> int64 one-hot with a trailing dim of num_classes."""
    x = as_tensor(x)
    if x.data.dtype.kind not in "iu":
        raise OpError(f"one_hot: expects an integer tensor of class indices, got {x.dtype}")
    if num_classes < 0:
        num_classes = int(x.data.max()) + 1 if x.data.size else 0
    if x.data.size and (x.data.min() < 0 or x.data.max() >= num_classes):
        raise OpError(f"one_hot: class values must be in [0, {num_classes}), got min "
                      f"{x.data.min()}, max {x.data.max()}")
    return apply(ONE_HOT, (x,), {"num_classes": int(num_classes)})


# ---- convolution ----------------------------------------------------------------------
# conv2d and conv_transpose2d are primitives (a single node each for the compiler and a
# direct Conv/ConvTranspose for ONNX). Their NumPy forwards are im2col + one batched GEMM;
# each one's input gradient is the other op, and the weight gradients are GEMMs over unfold,
# so gradients of any order come from these rules.

def _conv_geometry(h, w, kernel, stride, padding, dilation):
    return (conv_out_size(h, kernel[0], stride[0], padding[0], dilation[0]),
            conv_out_size(w, kernel[1], stride[1], padding[1], dilation[1]))


def _conv2d_np(x, w, stride, padding, dilation, groups):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    ho, wo = _conv_geometry(x.shape[2], x.shape[3], (kh, kw), stride, padding, dilation)
    cols = _unfold_np(x, (kh, kw), dilation, padding, stride)  # (N, C*kh*kw, L)
    if groups == 1:
        out = np.matmul(w.reshape(o, -1), cols)
    else:
        out = np.matmul(w.reshape(groups, o // groups, -1), cols.reshape(n, groups, cg * kh * kw, ho * wo))
    return out.reshape(n, o, ho, wo)


def _conv2d_infer(x, w, stride, padding, dilation, groups):
    if len(x.shape) != 4 or len(w.shape) != 4 or x.shape[1] != w.shape[1] * groups:
        raise ShapeError(f"conv2d: input {tuple(x.shape)} and weight {tuple(w.shape)} do not match "
                         f"(groups={groups}): expected (N, C, H, W) and (O, C/groups, kh, kw)")
    ho, wo = _conv_geometry(x.shape[2], x.shape[3], w.shape[2:], stride, padding, dilation)
    return (x.shape[0], w.shape[0], ho, wo), x.np_dtype


def _output_padding(x_shape, g_shape, w_shape, stride, padding, dilation):
    """What conv_transpose2d must add so that its output recovers the conv input's size."""
    return tuple(x_shape[2 + i] - ((g_shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                   + dilation[i] * (w_shape[2 + i] - 1) + 1) for i in range(2))


def _conv2d_grad_x(g, out, x, w, stride, padding, dilation, groups):
    op = _output_padding(x.shape, g.shape, w.shape, stride, padding, dilation)
    return apply(CONV_TRANSPOSE2D, (g, w), dict(stride=stride, padding=padding, output_padding=op,
                                               groups=groups, dilation=dilation))


def _conv2d_grad_w(g, out, x, w, stride, padding, dilation, groups):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    cols = unfold(x, (kh, kw), dilation, padding, stride)  # (N, C*kk, L)
    length = cols.shape[-1]
    if groups == 1:
        gw = (g.reshape(n, o, length) @ cols.mT).sum(0)
    else:
        gw = (g.reshape(n, groups, o // groups, length) @ cols.reshape(n, groups, cg * kh * kw, length).mT).sum(0)
    return gw.reshape(w.shape)


CONV2D = primitive("conv2d", _conv2d_np, (_conv2d_grad_x, _conv2d_grad_w), infer=_conv2d_infer,
                   saves={0: (1,), 1: (0,)})


def _conv_t_geometry(h, w, kernel, stride, padding, output_padding, dilation):
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, op, d in
                 zip((h, w), kernel, stride, padding, output_padding, dilation))


def _conv_t_np(x, w, stride, padding, output_padding, groups, dilation):
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    hout, wout = _conv_t_geometry(h, wd, (kh, kw), stride, padding, output_padding, dilation)
    xf = x.reshape(n, groups, cin // groups, h * wd)
    wg = w.reshape(groups, cin // groups, cog * kh * kw).transpose(0, 2, 1)
    cols = np.matmul(wg, xf).reshape(n, groups * cog * kh * kw, h * wd)
    return _fold_np(cols, (hout, wout), (kh, kw), dilation, padding, stride)


def _conv_t_infer(x, w, stride, padding, output_padding, groups, dilation):
    if len(x.shape) != 4 or len(w.shape) != 4 or x.shape[1] != w.shape[0]:
        raise ShapeError(f"conv_transpose2d: input {tuple(x.shape)} and weight {tuple(w.shape)} do not match: "
                         "expected (N, Cin, H, W) and (Cin, Cout/groups, kh, kw)")
    hout, wout = _conv_t_geometry(x.shape[2], x.shape[3], w.shape[2:], stride, padding, output_padding, dilation)
    return (x.shape[0], w.shape[1] * groups, hout, wout), x.np_dtype


def _conv_t_grad_x(g, out, x, w, stride, padding, output_padding, groups, dilation):
    return apply(CONV2D, (g, w), dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _conv_t_grad_w(g, out, x, w, stride, padding, output_padding, groups, dilation):
    n, cin = x.shape[:2]
    _, cog, kh, kw = w.shape
    cols = unfold(g, (kh, kw), dilation, padding, stride)  # (N, Cout*kk, H*W)
    length = cols.shape[-1]
    gw = (x.reshape(n, groups, cin // groups, length) @ cols.reshape(n, groups, cog * kh * kw, length).mT).sum(0)
    return gw.reshape(w.shape)


CONV_TRANSPOSE2D = primitive("conv_transpose2d", _conv_t_np, (_conv_t_grad_x, _conv_t_grad_w),
                             infer=_conv_t_infer, saves={0: (1,), 1: (0,)})


def conv2d_core(x, w, stride, padding, dilation, groups):
    """The convolution without bias, on (N, C, H, W) and (O, C/groups, kh, kw)."""
    return apply(CONV2D, (x, w), dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                                      groups=int(groups)))


def conv_transpose2d_core(x, w, stride, padding, output_padding, groups, dilation):
    return apply(CONV_TRANSPOSE2D, (x, w), dict(stride=tuple(stride), padding=tuple(padding),
                                                output_padding=tuple(output_padding), groups=int(groups),
                                                dilation=tuple(dilation)))


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------

def _conv_pads(padding):
    return [padding[0], padding[1], padding[0], padding[1]]


SOFTMAX.onnx = lambda ctx, n: ctx.emit("Softmax", [ctx.input(n, 0)], axis=n.attrs["dim"])
LOG_SOFTMAX.onnx = lambda ctx, n: ctx.emit("LogSoftmax", [ctx.input(n, 0)], axis=n.attrs["dim"])
CONV2D.onnx = lambda ctx, n: ctx.emit(
    "Conv", [ctx.input(n, 0), ctx.input(n, 1)], kernel_shape=list(n.inputs[1].shape[2:]),
    strides=list(n.attrs["stride"]), pads=_conv_pads(n.attrs["padding"]), dilations=list(n.attrs["dilation"]),
    group=n.attrs["groups"])
CONV_TRANSPOSE2D.onnx = lambda ctx, n: ctx.emit(
    "ConvTranspose", [ctx.input(n, 0), ctx.input(n, 1)], kernel_shape=list(n.inputs[1].shape[2:]),
    strides=list(n.attrs["stride"]), pads=_conv_pads(n.attrs["padding"]), dilations=list(n.attrs["dilation"]),
    group=n.attrs["groups"], output_padding=list(n.attrs["output_padding"]))
ONE_HOT.onnx = lambda ctx, n: ctx.emit(
    "OneHot", [ctx.input(n, 0), ctx.ints([n.attrs["num_classes"]]), ctx.ints([0, 1])], axis=-1)
