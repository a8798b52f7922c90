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
