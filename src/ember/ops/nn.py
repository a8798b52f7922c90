"""Neural-net primitives: softmax, log_softmax, the im2col pair unfold/fold, convolution.

softmax and log_softmax are primitives (not exp/sum chains) for numerical stability and
because their gradients have short closed forms; unfold and fold are each other's gradient.
conv2d, conv_transpose2d and conv2d_weight_grad are primitives whose gradients are each
other (see the convolution section below); max pooling lives in pooling.py.
"""

from __future__ import annotations

import numpy as np

from ..errors import OpError, ShapeError
from . import threads
from .helpers import as_tensor, floating, norm_dim, numba_module
from .pooling import _offsets
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


def _pad_spatial(x, padding):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x


def _unfold_np(x, kernel, dilation, padding, stride):
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    n, c, h, w = x.shape
    x = _pad_spatial(x, padding)
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
        _add_columns(cols.transpose(1, 2, 3, 0, 4, 5), out.transpose(1, 0, 2, 3), kernel, dilation, stride)
    if ph or pw:
        out = out[:, :, ph:ph + h, pw:pw + w]
    return np.ascontiguousarray(out)


def _add_columns(cols, out, kernel, dilation, stride):
    """col2im: add each kernel offset's (C, B, H, W) slice of ``cols`` (C, kh, kw, B, H, W) into
    its shifted, strided place in ``out`` (C, B, Hp, Wp)."""
    for k, (rs, cs) in enumerate(_offsets(kernel, stride, dilation, cols.shape[-2:])):
        out[:, :, rs, cs] += cols[:, k // kernel[1], k % kernel[1]]


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
# conv2d, conv_transpose2d and conv2d_weight_grad are primitives (a single node each for the
# compiler; the first two map to ONNX Conv/ConvTranspose). Each is linear in each input, and
# each one's gradients are the other two, so gradients of any order come from these rules.
#
# The NumPy kernels put several images into one GEMM: a chunk of the batch is laid out as
# columns (C*kh*kw, B*Ho*Wo), so one (O, C*kh*kw) x (C*kh*kw, B*Ho*Wo) product covers B images
# (N per-image GEMMs ran at half of BLAS's speed). Chunks are sized to stay in cache, and the
# batch is split over the cores (threads.py): the copies around each GEMM then run on every
# core, not just one.

def _conv_geometry(h, w, kernel, stride, padding, dilation):
    return (conv_out_size(h, kernel[0], stride[0], padding[0], dilation[0]),
            conv_out_size(w, kernel[1], stride[1], padding[1], dilation[1]))


def _batch_columns(xp, kernel, dilation, stride, out_size):
    """im2col with the batch inside the columns: padded (B, C, H, W) -> (C*kh*kw, B*Ho*Wo)."""
    (kh, kw), (dh, dw), (sh, sw), (ho, wo) = kernel, dilation, stride, out_size
    b, c = xp.shape[:2]
    s0, s1, s2, s3 = xp.strides
    windows = np.lib.stride_tricks.as_strided(
        xp, shape=(c, kh, kw, b, ho, wo), strides=(s1, s2 * dh, s3 * dw, s0, s2 * sh, s3 * sw), writeable=False)
    return windows.reshape(c * kh * kw, b * ho * wo)


#: with at most this many rows (C/groups*kh*kw) the GEMMs are tiny and the work is moving
#: memory: per-image products then write NCHW directly, without the batch-column transposes
PER_IMAGE_MAX_ROWS = 64


def _channels_first(a):
    """(B, C, H, W) -> (C, B*H*W), the layout of a GEMM operand over several images."""
    b, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(b, c, h * w).transpose(1, 0, 2)).reshape(c, b * h * w)


def _grouped(a, groups):
    """(C, M) -> (groups, C/groups, M), a view."""
    c, m = a.shape
    return a.reshape(groups, c // groups, m)


def _plane_masks(h, w, kernel, padding, dilation):
    """(kh, kw, H*W) bool: True where kernel offset (p, q)'s input position, (y + p*dh - ph,
    x + q*dw - pw), is inside the image."""
    rows = np.arange(h)[:, None] + np.arange(kernel[0])[:, None, None] * dilation[0] - padding[0]  # (kh, h, 1)
    cols = np.arange(w)[None, :] + np.arange(kernel[1])[:, None, None] * dilation[1] - padding[1]  # (kw, 1, w)
    inside_rows = (rows >= 0) & (rows < h)
    inside_cols = (cols >= 0) & (cols < w)
    return (inside_rows[:, None] & inside_cols[None]).reshape(kernel[0], kernel[1], h * w)


def _chunk_masks(h, w, kernel, padding, dilation):
    """``keep(b)``: _plane_masks tiled for a chunk of b images, (kh, kw, b*H*W), the kernels'
    mask over a chunk's concatenated images; made once per chunk size (a region has few)."""
    plane = _plane_masks(h, w, kernel, padding, dilation)
    tiled = {}

    def keep(b):
        mask = tiled.get(b)
        if mask is None:
            mask = tiled[b] = np.tile(plane, (1, 1, b))
        return mask

    return keep


def _columns_maker(x, kernel, stride, padding, dilation, out_size, other_dtype, per_image):
    """``columns(a, b)``: the im2col of images a:b, (C*kh*kw, B*Ho*Wo), or per image
    (B, C*kh*kw, Ho*Wo) if ``per_image``. A stride-1 convolution whose output is the input's
    size (a "same" one) gets it from a numba kernel that reads the unpadded images: NumPy's
    strided window copy plus padding the whole batch first took 1.4x as long (cnn's conv2)."""
    n, c, h, w = x.shape
    same = (stride == (1, 1) and tuple(out_size) == (h, w) and not per_image and x.dtype == other_dtype
            and x.dtype in (np.float32, np.float64))
    if not same:
        xp = _pad_spatial(x, padding)
        if per_image:
            return lambda a, b: _unfold_np(xp[a:b], kernel, dilation, (0, 0), stride)
        return lambda a, b: _batch_columns(xp[a:b], kernel, dilation, stride, out_size)
    kh, kw = kernel
    shifted_planes = numba_module(_SOURCE).shifted_planes
    keep_for = _chunk_masks(h, w, kernel, padding, dilation)

    def columns(a, b):
        keep = keep_for(b - a)
        x_cf = np.ascontiguousarray(x[a:b].reshape(b - a, c, h * w).transpose(1, 0, 2))  # in cache: a chunk
        cols = np.empty((c, kh, kw, (b - a) * h * w), dtype=x.dtype)
        shifted_planes(x_cf, keep, kh, kw, padding[0], padding[1], dilation[0], dilation[1], w, cols)
        return cols.reshape(c * kh * kw, (b - a) * h * w)

    return columns


def _conv2d_np(x, w, bias=None, *, stride, padding, dilation, groups, relu=False, after_chunk=None):
    """For the compiler's lowerings (compiler/convolution.py), work done on each chunk of
    images while its output is in cache, instead of another pass over the whole output:
    ``relu`` applies the ReLU that follows, then ``after_chunk(out, a, b)`` runs (a max pool)."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    ho, wo = _conv_geometry(x.shape[2], x.shape[3], (kh, kw), stride, padding, dilation)
    w_mat = w.reshape(groups, o // groups, cg * kh * kw)
    out = np.empty((n, o, ho, wo), dtype=np.result_type(x.dtype, w.dtype))
    rows = cg * groups * kh * kw
    per_image = cg * kh * kw <= PER_IMAGE_MAX_ROWS
    columns = _columns_maker(x, (kh, kw), stride, padding, dilation, (ho, wo), w.dtype, per_image)

    def part(lo, hi):
        for a, b in threads.chunks(lo, hi, threads.chunk_size(rows * ho * wo * x.itemsize)):
            cols = columns(a, b)
            if per_image:
                np.matmul(w_mat, cols.reshape(b - a, groups, cg * kh * kw, ho * wo),
                          out=out[a:b].reshape(b - a, groups, o // groups, ho * wo))
                if bias is not None:
                    out[a:b] += bias.reshape(o, 1, 1)
            else:
                res = np.matmul(w_mat, _grouped(cols, groups)).reshape(o, b - a, ho, wo)  # (O, B, Ho, Wo)
                if bias is None:
                    out[a:b] = res.transpose(1, 0, 2, 3)
                else:  # added while the chunk is in cache, instead of another pass over the output
                    np.add(res.transpose(1, 0, 2, 3), bias.reshape(o, 1, 1), out=out[a:b])
            if relu:
                np.maximum(out[a:b], 0, out=out[a:b])
            if after_chunk is not None:
                after_chunk(out, a, b)

    threads.over_batch(n, part, n * o * rows * ho * wo // groups // threads.MACS_PER_ELEMENT)
    return out


def _conv2d_infer(x, w, bias=None, *, stride, padding, dilation, groups):
    if len(x.shape) != 4 or len(w.shape) != 4 or x.shape[1] != w.shape[1] * groups:
        raise ShapeError(f"conv2d: input {tuple(x.shape)} and weight {tuple(w.shape)} do not match "
                         f"(groups={groups}): expected (N, C, H, W) and (O, C/groups, kh, kw)")
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise ShapeError(f"conv2d: bias has shape {tuple(bias.shape)}, expected ({w.shape[0]},): one per output "
                         "channel")
    ho, wo = _conv_geometry(x.shape[2], x.shape[3], w.shape[2:], stride, padding, dilation)
    return (x.shape[0], w.shape[0], ho, wo), x.np_dtype


def _output_padding(x_shape, g_shape, w_shape, stride, padding, dilation):
    """What conv_transpose2d must add so that its output recovers the conv input's size."""
    return tuple(x_shape[2 + i] - ((g_shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                   + dilation[i] * (w_shape[2 + i] - 1) + 1) for i in range(2))


def _conv2d_grad_x(g, out, x, w, bias=None, *, stride, padding, dilation, groups):
    op = _output_padding(x.shape, g.shape, w.shape, stride, padding, dilation)
    return apply(CONV_TRANSPOSE2D, (g, w), dict(stride=stride, padding=padding, output_padding=op,
                                               groups=groups, dilation=dilation))


def _conv2d_grad_w(g, out, x, w, bias=None, *, stride, padding, dilation, groups):
    return conv2d_weight_grad(g, x, w.shape[2:], stride, padding, dilation, groups)


def _conv2d_grad_bias(g, out, x, w, bias, *, stride, padding, dilation, groups):
    return g.sum((0, 2, 3))


# inputs (x, w) or (x, w, bias), as ONNX's Conv
CONV2D = primitive("conv2d", _conv2d_np, (_conv2d_grad_x, _conv2d_grad_w, _conv2d_grad_bias), infer=_conv2d_infer,
                   saves={0: (1,), 1: (0,)})


# conv2d_weight_grad(g, x) is the gradient of conv2d(x, w) with respect to w for an output
# gradient g: the sum over the batch and positions of g times the input window.

def _weight_grad_np(g, x, kernel, stride, padding, dilation, groups):
    n, o, ho, wo = g.shape
    c = x.shape[1]
    rows = c * kernel[0] * kernel[1]
    per_image = rows // groups <= PER_IMAGE_MAX_ROWS
    columns = _columns_maker(x, kernel, stride, padding, dilation, (ho, wo), g.dtype, per_image)

    def part(lo, hi):
        # the gradient transposed, (groups, C/groups*kh*kw, O/groups): OpenBLAS runs the
        # columns-times-g.T product ~1.3x faster than g times columns.T (cnn's conv2 chunks)
        total_t = np.zeros((groups, rows // groups, o // groups), dtype=np.result_type(g.dtype, x.dtype))
        for a, b in threads.chunks(lo, hi, threads.chunk_size(rows * ho * wo * x.itemsize)):
            cols = columns(a, b)
            if per_image:
                total_t += np.matmul(cols.reshape(b - a, groups, rows // groups, ho * wo),
                                     g[a:b].reshape(b - a, groups, o // groups, ho * wo).transpose(0, 1, 3, 2)).sum(0)
                continue
            total_t += np.matmul(_grouped(cols, groups), _grouped(_channels_first(g[a:b]), groups).transpose(0, 2, 1))
        return total_t

    partials = threads.over_batch(n, part, n * o * rows * ho * wo // groups // threads.MACS_PER_ELEMENT)
    total_t = partials[0]
    for more in partials[1:]:  # in range order, so the sum does not depend on thread timing
        total_t += more
    return np.ascontiguousarray(total_t.transpose(0, 2, 1)).reshape(o, c // groups, *kernel)


def _weight_grad_infer(g, x, kernel, stride, padding, dilation, groups):
    want = (x.shape[0], g.shape[1]) + _conv_geometry(x.shape[2], x.shape[3], kernel, stride, padding, dilation)
    if len(g.shape) != 4 or len(x.shape) != 4 or tuple(g.shape) != want or x.shape[1] % groups:
        raise ShapeError(f"conv2d_weight_grad: output gradient {tuple(g.shape)} does not match input "
                         f"{tuple(x.shape)} with kernel {kernel}, stride {stride}, padding {padding}, "
                         f"dilation {dilation} (expected {want})")
    return (g.shape[1], x.shape[1] // groups) + tuple(kernel), g.np_dtype


def _weight_grad_grad_g(gg, out, g, x, kernel, stride, padding, dilation, groups):
    return apply(CONV2D, (x, gg), dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _weight_grad_grad_x(gg, out, g, x, kernel, stride, padding, dilation, groups):
    return _conv2d_grad_x(g, None, x, gg, stride=stride, padding=padding, dilation=dilation, groups=groups)


CONV2D_WEIGHT_GRAD = primitive("conv2d_weight_grad", _weight_grad_np, (_weight_grad_grad_g, _weight_grad_grad_x),
                               infer=_weight_grad_infer, saves={0: (1,), 1: (0,)})


def conv2d_weight_grad(g, x, kernel, stride, padding, dilation, groups):
    """Gradient of conv2d(x, w) with respect to w, given the output gradient g (N, O, Ho, Wo)."""
    return apply(CONV2D_WEIGHT_GRAD, (g, x), dict(kernel=tuple(kernel), stride=stride, padding=padding,
                                                   dilation=dilation, groups=groups))


def _conv_t_geometry(h, w, kernel, stride, padding, output_padding, dilation):
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, op, d in
                 zip((h, w), kernel, stride, padding, output_padding, dilation))


def _conv_t_np(x, w, stride, padding, output_padding, groups, dilation):
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    if (stride == (1, 1) and _conv_t_geometry(h, wd, (kh, kw), stride, padding, output_padding, dilation) == (h, wd)
            and x.dtype == w.dtype and x.dtype in (np.float32, np.float64)):
        return _conv_t_same_size(x, w, padding, groups, dilation)
    full_pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding))
    if stride == (1, 1) and output_padding == (0, 0) and min(full_pad) >= 0:
        # with stride 1 the transposed convolution is the convolution with the flipped kernel
        # over the input padded by the kernel's reach: an im2col copy of the chunk is cheaper
        # than col2im's nine strided read-add-writes
        flipped = w.reshape(groups, cin // groups, cog, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        flipped = np.ascontiguousarray(flipped).reshape(groups * cog, cin // groups, kh, kw)
        return _conv2d_np(x, flipped, stride=(1, 1), padding=full_pad, dilation=dilation, groups=groups)
    cout = groups * cog
    hout, wout = _conv_t_geometry(h, wd, (kh, kw), stride, padding, output_padding, dilation)
    ph, pw = padding
    w_t = w.reshape(groups, cin // groups, cog * kh * kw).transpose(0, 2, 1)  # (groups, Cout/groups*kk, Cin/groups)
    out = np.empty((n, cout, hout, wout), dtype=np.result_type(x.dtype, w.dtype))

    def part(lo, hi):
        for a, b in threads.chunks(lo, hi, threads.chunk_size(cout * kh * kw * h * wd * x.itemsize)):
            cols = np.matmul(w_t, _grouped(_channels_first(x[a:b]), groups))  # (groups, Cout/groups*kk, B*H*W)
            full = np.zeros((cout, b - a, hout + 2 * ph, wout + 2 * pw), dtype=out.dtype)
            _add_columns(cols.reshape(cout, kh, kw, b - a, h, wd), full, (kh, kw), dilation, stride)
            out[a:b] = full[:, :, ph:ph + hout, pw:pw + wout].transpose(1, 0, 2, 3)

    threads.over_batch(n, part, n * cin * cog * kh * kw * h * wd // threads.MACS_PER_ELEMENT)
    return out


_SOURCE = '''# ember im2col and col2im kernels for stride-1 "same" convolutions (format 3)
import numba

# In flat indexing over a channel's images (B*H*W), kernel offset (p, q)'s plane is the
# images shifted by one offset, dy*W + dx, and keep[p, q] masks the positions whose shifted
# input lies outside their own image: a row above or below, or a column wrapped into the
# next or previous row (a select, not a multiply: inf * 0 is NaN). The loops index views that start
# at the shifted position: an index such as o[k + off] may be negative to numba, which then
# wraps it at run time and LLVM no longer vectorizes the loop (6-10x slower).


@numba.njit(cache=True, nogil=True, error_model="numpy")
def shifted_planes(x_cf, keep, kh, kw, ph, pw, dh, dw, w, cols):
    # im2col: cols[c, p, q] (B*H*W) = the B images of channel c, shifted by plane (p, q)'s
    # offset, zero outside; x_cf: contiguous (C, B, H*W), the images channels-first, so that
    # one channel's images are consecutive and each plane is one loop over all of them (per
    # image, the cnn conv2's 14x14 planes spent most of their time starting 196-element
    # loops: 4x slower); keep: (kh, kw, B*H*W), True where the shifted position is inside its
    # own image (row and column); cols: contiguous (C, kh, kw, B*H*W)
    n_c, n_b, hw = x_cf.shape
    n = n_b * hw
    zero = cols.dtype.type(0)
    for c in range(n_c):
        src_all = x_cf[c].reshape(n)
        for p in range(kh):
            for q in range(kw):
                off = (p * dh - ph) * w + q * dw - pw
                lo, hi = max(0, -off), min(n, n - off)
                dst = cols[c, p, q]
                dst[:lo] = zero
                dst[hi:] = zero
                src, k, d = src_all[lo + off:hi + off], keep[p, q, lo:hi], dst[lo:hi]
                for j in range(hi - lo):
                    d[j] = src[j] if k[j] else zero


@numba.njit(cache=True, nogil=True, error_model="numpy")
def add_shifted_planes(cols, keep, ph, pw, dh, dw, w, out_cf):
    # col2im, shifted_planes' adjoint: out_cf[c] (B*H*W) = the sum over (p, q) of plane
    # cols[c, p, q] shifted back, where keep holds; cols: contiguous (C, kh, kw, B*H*W);
    # out_cf: contiguous (C, B*H*W), channels-first like shifted_planes' input
    n_c, kh, kw, n = cols.shape
    zero = out_cf.dtype.type(0)
    for c in range(n_c):
        o = out_cf[c]
        o[:] = zero
        for p in range(kh):
            for q in range(kw):
                off = (p * dh - ph) * w + q * dw - pw
                lo, hi = max(0, -off), min(n, n - off)
                src, k, dst = cols[c, p, q, lo:hi], keep[p, q, lo:hi], o[lo + off:hi + off]
                for j in range(hi - lo):
                    dst[j] += src[j] if k[j] else zero
'''


def _conv_t_same_size(x, w, padding, groups, dilation):
    """Stride-1 transposed convolution whose output is the input's size (the input gradient
    of a "same" convolution): one GEMM per chunk of images to columns, then a numba col2im
    that adds each kernel offset's plane, shifted, straight into the NCHW output. (The flipped-
    kernel convolution below copies an im2col of C_in*kh*kw rows: for the cnn benchmark's conv2
    gradient, 64 channels in and 32 out, it took 1.26x as long.)"""
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    cout = groups * cog
    w_t = w.reshape(groups, cin // groups, cog * kh * kw).transpose(0, 2, 1)
    keep_for = _chunk_masks(h, wd, (kh, kw), padding, dilation)
    add_shifted_planes = numba_module(_SOURCE).add_shifted_planes
    out = np.empty((n, cout, h, wd), dtype=x.dtype)

    def part(lo, hi):
        for a, b in threads.chunks(lo, hi, threads.chunk_size(cout * kh * kw * h * wd * x.itemsize)):
            same_size_chunk(w_t, _grouped(_channels_first(x[a:b]), groups), out[a:b], (kh, kw), keep_for(b - a),
                            padding, dilation, add_shifted_planes)

    threads.over_batch(n, part, n * cin * cog * kh * kw * h * wd // threads.MACS_PER_ELEMENT)
    return out


def same_size_chunk(w_t, g_groups, out, kernel, keep, padding, dilation, add_shifted_planes):
    """One chunk of _conv_t_same_size, also run by the compiler's fused convolution backward:
    out (B, C_out, H, W) from the chunk's input channels-first, g_groups (groups, C_in/groups,
    B*H*W), by one GEMM to columns and the numba col2im into a channels-first buffer."""
    b, cout, h, wd = out.shape
    kh, kw = kernel
    cols = np.matmul(w_t, g_groups)  # (groups, Cout/groups*kh*kw, B*H*W)
    out_cf = np.empty((cout, b * h * wd), dtype=out.dtype)
    add_shifted_planes(cols.reshape(cout, kh, kw, b * h * wd), keep, padding[0], padding[1], dilation[0], dilation[1],
                       wd, out_cf)
    out[...] = out_cf.reshape(cout, b, h, wd).transpose(1, 0, 2, 3)  # in cache: a chunk


def _conv_t_infer(x, w, stride, padding, output_padding, groups, dilation):
    if len(x.shape) != 4 or len(w.shape) != 4 or x.shape[1] != w.shape[0]:
        raise ShapeError(f"conv_transpose2d: input {tuple(x.shape)} and weight {tuple(w.shape)} do not match: "
                         "expected (N, Cin, H, W) and (Cin, Cout/groups, kh, kw)")
    hout, wout = _conv_t_geometry(x.shape[2], x.shape[3], w.shape[2:], stride, padding, output_padding, dilation)
    return (x.shape[0], w.shape[1] * groups, hout, wout), x.np_dtype


def _conv_t_grad_x(g, out, x, w, stride, padding, output_padding, groups, dilation):
    return apply(CONV2D, (g, w), dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _conv_t_grad_w(g, out, x, w, stride, padding, output_padding, groups, dilation):
    # conv_transpose2d(., w) is the adjoint of conv2d(., w), whose weight gradient pairs x with g
    return conv2d_weight_grad(x, g, w.shape[2:], stride, padding, dilation, groups)


CONV_TRANSPOSE2D = primitive("conv_transpose2d", _conv_t_np, (_conv_t_grad_x, _conv_t_grad_w),
                             infer=_conv_t_infer, saves={0: (1,), 1: (0,)})


def conv2d_core(x, w, bias, stride, padding, dilation, groups):
    """The convolution of (N, C, H, W) by (O, C/groups, kh, kw), plus bias (O,) if not None."""
    inputs = (x, w) if bias is None else (x, w, bias)
    return apply(CONV2D, inputs, dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
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
    "Conv", [ctx.input(n, i) for i in range(len(n.inputs))], kernel_shape=list(n.inputs[1].shape[2:]),
    strides=list(n.attrs["stride"]), pads=_conv_pads(n.attrs["padding"]), dilations=list(n.attrs["dilation"]),
    group=n.attrs["groups"])
CONV_TRANSPOSE2D.onnx = lambda ctx, n: ctx.emit(
    "ConvTranspose", [ctx.input(n, 0), ctx.input(n, 1)], kernel_shape=list(n.inputs[1].shape[2:]),
    strides=list(n.attrs["stride"]), pads=_conv_pads(n.attrs["padding"]), dilations=list(n.attrs["dilation"]),
    group=n.attrs["groups"], output_padding=list(n.attrs["output_padding"]))
ONE_HOT.onnx = lambda ctx, n: ctx.emit(
    "OneHot", [ctx.input(n, 0), ctx.ints([n.attrs["num_classes"]]), ctx.ints([0, 1])], axis=-1)
