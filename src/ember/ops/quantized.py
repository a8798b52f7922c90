"""Int8 primitives of dynamic post-training quantization (``ember.quantize``).

Two primitives, each the whole quantized layer op like PyTorch's ``quantized::linear_dynamic``:

  ``quantized_linear(x, w_q, w_scale[, bias])``   x (..., K) float32, w_q (O, K) int8
  ``quantized_conv2d(x, w_q, w_scale[, bias])``   x (N, C, H, W) float32, w_q (O, C/groups, kh, kw) int8

Both quantize ``x`` per call exactly as ONNX ``DynamicQuantizeLinear`` does (uint8, one scale and
zero point per tensor, computed from the batch), take the integer product of the shifted
activations ``xq - zp`` (in [-255, 255]) and the int8 weights (in [-127, 127]) exactly, as an
int32 accumulator would hold it, and rescale: ``y = float32(acc) * (x_scale * w_scale[o]) + bias[o]``,
in the same float32 order as the ONNX graph they export to (DynamicQuantizeLinear ->
MatMulInteger / ConvInteger -> Cast -> Mul -> Add).

Why the integer product runs on float32 BLAS: NumPy's integer matmul has no BLAS kernel and is
~20-50x slower than a float GEMM. Each product is an integer of magnitude <= 255 * 127 = 32385,
so a partial sum of up to 512 of them stays below 2**24 and is exact in float32 whatever order
the BLAS kernel adds in; longer dot products are cut into blocks of 512 whose (exact) results are
added in float64 (exact up to 2**53). So the result equals int32 accumulation bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..errors import OpError, ShapeError
from .registry import primitive

#: activation range: uint8, as ONNX DynamicQuantizeLinear (and PyTorch's quint8)
ACT_QMIN, ACT_QMAX = 0, 255
#: weight range: symmetric int8 without -128, so -w is representable and zero is exactly 0
WEIGHT_QMAX = 127
#: longest dot product that float32 accumulates exactly: 512 * 255 * 127 < 2**24
EXACT_BLOCK = 512


# ---- NumPy kernels ------------------------------------------------------------------------------

def dynamic_quantize_np(x):
    """ONNX ``DynamicQuantizeLinear`` on a float32 array: (xq uint8, scale float32, zero point uint8).

    The range always contains 0 (so zero, e.g. padding, is exact); scale = (max - min) / 255,
    zero_point = round(-min / scale), xq = clip(round(x / scale) + zero_point, 0, 255), with
    round-half-to-even as ONNX and onnxruntime do. An all-zero (or empty) tensor gets scale 1.
    """
    x = np.asarray(x, dtype=np.float32)
    lo = min(np.float32(x.min()), np.float32(0)) if x.size else np.float32(0)
    hi = max(np.float32(x.max()), np.float32(0)) if x.size else np.float32(0)
    scale = np.float32((hi - lo) / np.float32(ACT_QMAX - ACT_QMIN)) if hi > lo else np.float32(1)
    zero_point = np.uint8(np.clip(np.rint(np.float32(ACT_QMIN) - lo / scale), ACT_QMIN, ACT_QMAX))
    q = np.rint(x / scale)
    q += np.float32(zero_point)
    np.clip(q, ACT_QMIN, ACT_QMAX, out=q)
    return q.astype(np.uint8), scale, zero_point


def quantize_per_channel_np(w, axis=0):
    """Symmetric per-channel int8 weights: (w_q int8, scale float32 of shape (w.shape[axis],)).

    scale[c] = max|w[c]| / 127 (1.0 for an all-zero channel), w_q = clip(round(w / scale), -127, 127),
    so each channel uses the whole int8 range and |w - w_q * scale| <= scale / 2.
    """
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise OpError(f"quantize_per_channel: weights must be floating point, got {w.dtype}")
    axis = axis % w.ndim
    others = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=others).astype(np.float32) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / np.float32(WEIGHT_QMAX), np.float32(1)).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    q = np.clip(np.rint(w.astype(np.float32) / scale.reshape(shape)), -WEIGHT_QMAX, WEIGHT_QMAX)
    return q.astype(np.int8), scale


def integer_matmul_np(a, b):
    """Exact ``a @ b`` of integer-valued arrays (|a| <= 255, |b| <= 127), as float64 values.

    a (..., M, K), b (..., K, N) in any integer dtype; float32 BLAS on blocks of K <= 512 (each
    exact), blocks added in float64 (see the module docstring for why this is exact)."""
    k = a.shape[-1]
    if k <= EXACT_BLOCK:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float64)
    out = None
    for start in range(0, k, EXACT_BLOCK):
        part = np.matmul(a[..., start:start + EXACT_BLOCK].astype(np.float32),
                         b[..., start:start + EXACT_BLOCK, :].astype(np.float32))
        out = part.astype(np.float64) if out is None else out + part
    return out


def _rescale(acc, x_scale, w_scale, bias, channel_shape):
    """float32(acc) * (x_scale * w_scale) + bias: the ONNX graph's Cast -> Mul -> Add, same order."""
    combined = (np.float32(x_scale) * w_scale.astype(np.float32)).reshape(channel_shape)
    out = acc.astype(np.float32)
    out *= combined
    if bias is not None:
        out += bias.astype(np.float32).reshape(channel_shape)
    return out


def _check_dtypes(x, w_q):
    # NumPy would happily run on other dtypes; failing here lets the shape rule explain (registry.apply)
    if x.dtype != np.float32 or w_q.dtype != np.int8:
        raise TypeError(f"expected a float32 input and int8 weights, got {x.dtype} and {w_q.dtype}")


def _quantized_linear_np(x, w_q, w_scale, bias=None):
    _check_dtypes(x, w_q)
    xq, x_scale, x_zp = dynamic_quantize_np(x)
    shifted = xq.reshape(-1, x.shape[-1]).astype(np.int16) - np.int16(x_zp)
    acc = integer_matmul_np(shifted, w_q.T)
    out = _rescale(acc, x_scale, w_scale, bias, (-1,))
    return out.reshape(x.shape[:-1] + (w_q.shape[0],))


def _conv_size(n, k, stride, pad_begin, pad_end, dilation):
    return (n + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def _quantized_conv2d_np(x, w_q, w_scale, bias=None, *, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    _check_dtypes(x, w_q)
    o, cg, kh, kw = w_q.shape
    (sh, sw), (dh, dw), (top, bottom, left, right) = stride, dilation, padding
    xq, x_scale, x_zp = dynamic_quantize_np(x)
    # shifting by the zero point first makes zero padding equal ONNX ConvInteger's padding with it
    shifted = xq.astype(np.int16) - np.int16(x_zp)
    if top or bottom or left or right:
        shifted = np.pad(shifted, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = _conv_size(h, kh, sh, top, bottom, dh)
    wo = _conv_size(w, kw, sw, left, right, dw)
    s0, s1, s2, s3 = shifted.strides
    windows = np.lib.stride_tricks.as_strided(
        shifted, shape=(n, c, kh, kw, ho, wo), strides=(s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw),
        writeable=False)
    cols = windows.reshape(n, groups, cg * kh * kw, ho * wo)  # (N, G, C/G*kh*kw, L)
    weights = w_q.reshape(groups, o // groups, cg * kh * kw)  # (G, O/G, C/G*kh*kw)
    acc = integer_matmul_np(weights[None], cols)  # (N, G, O/G, L)
    out = _rescale(acc.reshape(n, o, ho * wo), x_scale, w_scale, bias, (1, o, 1))
    return out.reshape(n, o, ho, wo)


# ---- shape and dtype rules ----------------------------------------------------------------------

def _check_quantized_params(name, x, w_q, w_scale, bias, k_expected):
    if x.np_dtype != np.float32:
        raise OpError(f"{name}: the input must be float32, got {x.np_dtype}; convert it with .float()")
    if w_q.np_dtype != np.int8:
        raise OpError(f"{name}: the weight must be int8 (from ember.quantize), got {w_q.np_dtype}")
    o = w_q.shape[0]
    if tuple(w_scale.shape) != (o,):
        raise ShapeError(f"{name}: weight scale has shape {tuple(w_scale.shape)}, expected ({o},): one per "
                         "output channel")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ShapeError(f"{name}: bias has shape {tuple(bias.shape)}, expected ({o},)")
    if k_expected is not None:
        k_have, k_want = k_expected
        if k_have != k_want:
            raise ShapeError(f"{name}: input {tuple(x.shape)} does not match weight {tuple(w_q.shape)}: "
                             f"{k_have} != {k_want}")


def _quantized_linear_infer(x, w_q, w_scale, bias=None):
    if len(x.shape) < 1 or len(w_q.shape) != 2:
        raise ShapeError(f"quantized_linear: expects an input (..., K) and a weight (O, K), got {tuple(x.shape)} "
                         f"and {tuple(w_q.shape)}")
    _check_quantized_params("quantized_linear", x, w_q, w_scale, bias, (x.shape[-1], w_q.shape[1]))
    return tuple(x.shape[:-1]) + (w_q.shape[0],), np.dtype(np.float32)


def _quantized_conv2d_infer(x, w_q, w_scale, bias=None, *, stride, padding, dilation, groups):
    if len(x.shape) != 4 or len(w_q.shape) != 4:
        raise ShapeError(f"quantized_conv2d: expects an input (N, C, H, W) and a weight (O, C/groups, kh, kw), "
                         f"got {tuple(x.shape)} and {tuple(w_q.shape)}")
    _check_quantized_params("quantized_conv2d", x, w_q, w_scale, bias, (x.shape[1], w_q.shape[1] * groups))
    top, bottom, left, right = padding
    ho = _conv_size(x.shape[2], w_q.shape[2], stride[0], top, bottom, dilation[0])
    wo = _conv_size(x.shape[3], w_q.shape[3], stride[1], left, right, dilation[1])
    if ho <= 0 or wo <= 0:
        raise ShapeError(f"quantized_conv2d: the kernel {tuple(w_q.shape[2:])} with dilation {tuple(dilation)} "
                         f"is larger than the padded input {tuple(x.shape)} with padding {tuple(padding)}")
    return (x.shape[0], w_q.shape[0], ho, wo), np.dtype(np.float32)


# Not differentiable: these are inference kernels (round() has no useful gradient); outputs of a
# quantized model never require grad.
QUANTIZED_LINEAR = primitive("quantized_linear", _quantized_linear_np, infer=_quantized_linear_infer)
QUANTIZED_CONV2D = primitive("quantized_conv2d", _quantized_conv2d_np, infer=_quantized_conv2d_infer)


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------
# DynamicQuantizeLinear -> MatMulInteger / ConvInteger (int32) -> Cast -> Mul(x_scale * w_scale) -> Add.
# The int8 weights are stored as they are and shifted to uint8 with zero point 128 inside the
# graph (Cast/Add/Cast of an initializer, which onnxruntime folds once at load): onnxruntime's
# u8 x s8 kernels on AVX2 CPUs use VPMADDUBSW, whose int16 pair sums saturate (255*127*2 > 32767),
# while its u8 x u8 kernels are exact on every CPU. (w + 128) - 128 = w, so the product is the same.

def _weight_as_uint8(ctx, name):
    wide = ctx.emit("Cast", [name], to=ctx.dtype(np.int16))
    shifted = ctx.emit("Add", [wide, ctx.const(np.int16(128), "weight_shift")])
    return ctx.emit("Cast", [shifted], to=ctx.dtype(np.uint8))


def _quantized_linear_onnx(ctx, n):
    xq, x_scale, x_zp = ctx.emit("DynamicQuantizeLinear", [ctx.input(n, 0)], outputs=3)
    w = ctx.emit("Transpose", [_weight_as_uint8(ctx, ctx.input(n, 1))], perm=[1, 0])
    acc = ctx.emit("MatMulInteger", [xq, w, x_zp, ctx.const(np.uint8(128), "weight_zero_point")])
    return _rescale_onnx(ctx, n, acc, x_scale, None)


def _quantized_conv2d_onnx(ctx, n):
    xq, x_scale, x_zp = ctx.emit("DynamicQuantizeLinear", [ctx.input(n, 0)], outputs=3)
    w = _weight_as_uint8(ctx, ctx.input(n, 1))
    top, bottom, left, right = n.attrs["padding"]
    acc = ctx.emit("ConvInteger", [xq, w, x_zp, ctx.const(np.uint8(128), "weight_zero_point")],
                   kernel_shape=list(n.inputs[1].shape[2:]), strides=list(n.attrs["stride"]),
                   pads=[top, left, bottom, right], dilations=list(n.attrs["dilation"]), group=n.attrs["groups"])
    return _rescale_onnx(ctx, n, acc, x_scale, [-1, 1, 1])


def _rescale_onnx(ctx, n, acc, x_scale, channel_shape):
    combined = ctx.emit("Mul", [x_scale, ctx.input(n, 2)])
    if channel_shape is not None:
        combined = ctx.emit("Reshape", [combined, ctx.ints(channel_shape)])
    out = ctx.emit("Mul", [ctx.emit("Cast", [acc], to=ctx.dtype(np.float32)), combined])
    if len(n.inputs) > 3:
        bias = ctx.input(n, 3)
        if channel_shape is not None:
            bias = ctx.emit("Reshape", [bias, ctx.ints(channel_shape)])
        out = ctx.emit("Add", [out, bias])
    return out


QUANTIZED_LINEAR.onnx = _quantized_linear_onnx
QUANTIZED_CONV2D.onnx = _quantized_conv2d_onnx
