"""Neural-network functions (``import ember.nn.functional as F``), PyTorch names and semantics.

Layouts are PyTorch's: NCHW images, (N, C) or (N, C, d1, ...) logits. Everything here is
composed from registered primitives, so gradients (and second derivatives) come from the
primitives' rules and the compiler sees the same ops.
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd.engine import no_grad
from ..errors import OpError, ShapeError
from ..ops import elementwise as ew
from ..ops import indexing as ix
from ..ops import movement as mv
from ..ops import reduce as rd
from ..ops.helpers import as_tensor
from ..ops.linalg import matmul
from ..ops.nn import conv2d_core, conv_out_size, conv_transpose2d_core, fold, log_softmax, one_hot, softmax, unfold  # noqa: F401
from ..ops.pooling import avg_pool, pool_select
from ..tensor import Tensor

# activations, re-exported under their functional names
relu = ew.relu
gelu = ew.gelu
silu = ew.silu
elu = ew.elu
leaky_relu = ew.leaky_relu
softplus = ew.softplus
sigmoid = ew.sigmoid
tanh = ew.tanh
pad = mv.pad


def relu6(x):
    return ew.clamp(x, 0.0, 6.0)


def hardtanh(x, min_val=-1.0, max_val=1.0):
    return ew.clamp(x, min_val, max_val)


def mish(x):
    return x * ew.tanh(ew.softplus(x))


def selu(x):
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * ew.elu(x, alpha)


def hardsigmoid(x):
    return ew.clamp(x / 6 + 0.5, 0.0, 1.0)


def hardswish(x):
    return x * hardsigmoid(x)


def logsigmoid(x):
    return -ew.softplus(-x)


def softsign(x):
    return x / (ew.abs(x) + 1)


def glu(x, dim=-1):
    a, b = mv.chunk(x, 2, dim)
    return a * ew.sigmoid(b)


# ---- linear and embedding -------------------------------------------------------------

def linear(x, weight, bias=None):
    """x @ weight.T + bias; x (*, in), weight (out, in), bias (out,) -> (*, out)."""
    x = as_tensor(x)
    if x.shape[-1:] != weight.shape[-1:]:
        raise ShapeError(f"linear: input has {x.shape[-1] if x.ndim else 0} features (shape "
                         f"{x.shape}) but the weight {weight.shape} expects {weight.shape[-1]}")
    out = matmul(x, weight.mT)
    return out if bias is None else out + bias


def bilinear(x1, x2, weight, bias=None):
    """y[..., o] = x1 @ weight[o] @ x2 + bias[o]; weight (out, in1, in2)."""
    out = matmul(x1.unsqueeze(-2).unsqueeze(-2), weight).squeeze(-2)  # (*, out, in2)
    out = (out * x2.unsqueeze(-2)).sum(-1)
    return out if bias is None else out + bias


def embedding(input, weight, padding_idx=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``input`` (any shape)."""
    idx = as_tensor(input)
    if idx.data.dtype.kind not in "iu":
        raise OpError(f"embedding: indices must be integers, got {idx.dtype}")
    n = weight.shape[0]
    if ix.is_concrete(idx) and idx.data.size and (idx.data.min() < 0 or idx.data.max() >= n):
        raise OpError(f"embedding: index out of range: values must be in [0, {n}), got min "
                      f"{idx.data.min()} and max {idx.data.max()}")
    out = ix.getitem(weight, idx)
    if padding_idx is not None:  # rows for padding_idx get no gradient
        out = ew.where((idx == padding_idx % n).unsqueeze(-1), out.detach(), out)
    return out


# ---- losses ---------------------------------------------------------------------------

def _reduce(loss, reduction, op):
    if reduction == "mean":
        return rd.mean(loss)
    if reduction == "sum":
        return rd.sum(loss)
    if reduction == "none":
        return loss
    raise OpError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_same_shape(input, target, op):
    if input.shape != target.shape:
        raise ShapeError(f"{op}: input shape {input.shape} and target shape {target.shape} must "
                         "match (use .view/.reshape, e.g. target.view(-1, 1))")


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of class indices ``target`` (N,) or (N, d1...) under log-probs
    ``input`` (N, C) or (N, C, d1...)."""
    input, target = as_tensor(input), as_tensor(target)
    return _nll(input, target, weight, ignore_index, reduction, "nll_loss")


def _class_dim_last(x):
    return x if x.ndim <= 2 else mv.movedim(x, 1, -1)


def _nll(logp, target, weight, ignore_index, reduction, op, smoothing=0.0):
    if target.data.dtype.kind not in "iu":
        raise OpError(f"{op}: class-index targets must be integers, got {target.dtype} (for "
                      "probabilities pass a float target with the same shape as the input)")
    if logp.ndim < 1 or (logp.ndim >= 2 and target.shape != logp.shape[:1] + logp.shape[2:]) or \
            (logp.ndim == 1 and target.ndim != 0):
        raise ShapeError(f"{op}: input of shape {logp.shape} expects class-index targets of "
                         f"shape {logp.shape[:1] + logp.shape[2:]}, got {target.shape}")
    c = logp.shape[1] if logp.ndim >= 2 else logp.shape[0]
    lp = _class_dim_last(logp)
    valid = target != ignore_index
    if ix.is_concrete(target):
        t = target.data[valid.data]
        if t.size and (t.min() < 0 or t.max() >= c):
            raise OpError(f"{op}: target values must be in [0, {c}) (or ignore_index="
                          f"{ignore_index}), got min {t.min()} and max {t.max()}")
    safe = ew.where(valid, target, 0)
    picked = ix.take_along_dim(lp, safe.unsqueeze(-1), -1).squeeze(-1)
    if weight is None:
        wt = valid.astype(lp.dtype)
    else:
        weight = as_tensor(weight).astype(lp.dtype)
        wt = ix.getitem(weight, safe) * valid
    loss = -picked * wt
    if smoothing:
        smooth = -(lp if weight is None else lp * weight).sum(-1) * valid
        loss = (1 - smoothing) * loss + (smoothing / c) * smooth
    if reduction == "mean":
        return rd.sum(loss) / rd.sum(wt)
    return _reduce(loss, reduction, op)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy of logits ``input`` (N, C) or (N, C, d1...).

    ``target`` holds class indices (N,)/(N, d1...) or class probabilities shaped like input.
    """
    input, target = as_tensor(input), as_tensor(target)
    if not 0.0 <= label_smoothing <= 1.0:
        raise OpError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    logp = log_softmax(input, dim=1 if input.ndim >= 2 else 0)
    if target.data.dtype.kind == "f":
        _check_same_shape(input, target, "cross_entropy")
        c = input.shape[1] if input.ndim >= 2 else input.shape[0]
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / c
        lp = logp if weight is None else logp * as_tensor(weight).reshape(
            (1, c) + (1,) * (input.ndim - 2) if input.ndim >= 2 else (c,))
        loss = -(lp * target).sum(1 if input.ndim >= 2 else 0)
        return _reduce(loss, reduction, "cross_entropy")
    return _nll(logp, target, weight, ignore_index, reduction, "cross_entropy", label_smoothing)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """Sigmoid + binary cross-entropy, computed stably from logits."""
    input, target = as_tensor(input), as_tensor(target)
    _check_same_shape(input, target, "binary_cross_entropy_with_logits")
    target = target.astype(input.dtype)
    # log(1 + exp(-x)), stable for any x, with the derivative -sigmoid(-x) also at x = 0
    # (log1p(exp(-|x|)) + relu(-x) has the same values but a zero gradient at the kink)
    softplus_neg = ew.softplus(-input)
    if pos_weight is not None:
        log_weight = (as_tensor(pos_weight) - 1) * target + 1
        loss = (1 - target) * input + log_weight * softplus_neg
    else:
        loss = (1 - target) * input + softplus_neg
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def _log_clamped(p):
    """log(p) clamped below at -100 (as PyTorch's BCE) whose gradient is 0, not 0/0 = nan,
    at p = 0: the log only ever sees positive values."""
    pos = p > 0
    return ew.clamp(ew.where(pos, ew.log(ew.where(pos, p, 1.0)), -100.0), min=-100.0)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy of probabilities ``input`` (logs clamped at -100, as PyTorch)."""
    input, target = as_tensor(input), as_tensor(target)
    _check_same_shape(input, target, "binary_cross_entropy")
    target = target.astype(input.dtype)
    loss = -(target * _log_clamped(input) + (1 - target) * _log_clamped(1 - input))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


def mse_loss(input, target, reduction="mean"):
    input, target = as_tensor(input), as_tensor(target)
    _check_same_shape(input, target, "mse_loss")
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


def l1_loss(input, target, reduction="mean"):
    input, target = as_tensor(input), as_tensor(target)
    _check_same_shape(input, target, "l1_loss")
    return _reduce(ew.abs(input - target), reduction, "l1_loss")


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    input, target = as_tensor(input), as_tensor(target)
    _check_same_shape(input, target, "smooth_l1_loss")
    d = ew.abs(input - target)
    if beta == 0:
        return _reduce(d, reduction, "smooth_l1_loss")
    loss = ew.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return _reduce(loss, reduction, "smooth_l1_loss")


def huber_loss(input, target, reduction="mean", delta=1.0):
    input, target = as_tensor(input), as_tensor(target)
    _check_same_shape(input, target, "huber_loss")
    d = ew.abs(input - target)
    loss = ew.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
    return _reduce(loss, reduction, "huber_loss")


def kl_div(input, target, reduction="mean", log_target=False):
    """KL(target || exp(input)) pointwise; ``input`` holds log-probabilities."""
    input, target = as_tensor(input), as_tensor(target)
    if log_target:
        loss = ew.exp(target) * (target - input)
    else:
        loss = ew.where(target > 0, target * (ew.log(ew.clamp(target, min=1e-38)) - input), 0.0)
    if reduction == "batchmean":
        return rd.sum(loss) / input.shape[0]
    return _reduce(loss, reduction, "kl_div")


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    n1 = ew.clamp(rd.norm(x1, dim=dim), min=eps)
    n2 = ew.clamp(rd.norm(x2, dim=dim), min=eps)
    return (x1 * x2).sum(dim) / (n1 * n2)


def normalize(x, p=2.0, dim=1, eps=1e-12):
    return x / ew.clamp(rd.norm(x, p=p, dim=dim, keepdim=True), min=eps)


# ---- convolution and pooling ----------------------------------------------------------

def _tuple(v, n, name):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(i) for i in v)
    if len(v) != n:
        raise OpError(f"{name} must be an int or a tuple of {n}, got {v}")
    return v


def _batched(x, want, op):
    """Accept unbatched input (C, H, W) as PyTorch does; returns (x, was_unbatched)."""
    x = as_tensor(x)
    if x.ndim == want - 1:
        return x.unsqueeze(0), True
    if x.ndim != want:
        raise ShapeError(f"{op}: expects a {want}-D input (N, C, ...) or an unbatched "
                         f"{want - 1}-D one, got shape {x.shape}")
    return x, False


def _same_padding(kernel, dilation, stride, op):
    if any(s != 1 for s in stride):
        raise OpError(f"{op}: padding='same' needs stride 1, got stride {stride}")
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) of (N, C, H, W) with weight (O, C/groups, kh, kw)."""
    x, unbatched = _batched(input, 4, "conv2d")
    if weight.ndim != 4:
        raise ShapeError(f"conv2d: weight must be 4-D (out_channels, in_channels/groups, kh, kw), "
                         f"got shape {weight.shape}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c != cg * groups:
        raise ShapeError(f"conv2d: input has {c} channels (shape {x.shape}) but the weight "
                         f"{weight.shape} with groups={groups} expects {cg * groups}")
    if o % groups:
        raise OpError(f"conv2d: out_channels {o} must be divisible by groups {groups}")
    stride = _tuple(stride, 2, "stride")
    dilation = _tuple(dilation, 2, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            (t, b), (lft, r) = _same_padding((kh, kw), dilation, stride, "conv2d")
            if t != b or lft != r:
                x = mv.pad(x, (lft, r, t, b))
                padding = (0, 0)
            else:
                padding = (t, lft)
        else:
            raise OpError(f"conv2d: padding must be an int, a pair, 'same' or 'valid', got "
                          f"{padding!r}")
    padding = _tuple(padding, 2, "padding")
    h, w = x.shape[2:]
    ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_out_size(w, kw, stride[1], padding[1], dilation[1])
    if ho <= 0 or wo <= 0:
        raise ShapeError(f"conv2d: the kernel ({kh}, {kw}) with dilation {dilation} is larger "
                         f"than the padded input ({h + 2 * padding[0]}, {w + 2 * padding[1]})")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != o or bias.dtype != x.dtype):
        out = conv2d_core(x, weight, None, stride, padding, dilation, groups) + bias.reshape(1, o, 1, 1)
    else:
        out = conv2d_core(x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution of (N, C, L) with weight (O, C/groups, k)."""
    x, unbatched = _batched(input, 3, "conv1d")
    if weight.ndim != 3:
        raise ShapeError(f"conv1d: weight must be 3-D (out_channels, in_channels/groups, k), got "
                         f"shape {weight.shape}")
    if isinstance(padding, str):
        pad2 = padding
    else:
        pad2 = (0, _tuple(padding, 1, "padding")[0])
    out = conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, _tuple(stride, 1, "stride")[0]),
                 pad2, (1, _tuple(dilation, 1, "dilation")[0]), groups).squeeze(2)
    return out.squeeze(0) if unbatched else out


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """Transposed convolution: (N, Cin, H, W) with weight (Cin, Cout/groups, kh, kw)."""
    x, unbatched = _batched(input, 4, "conv_transpose2d")
    n, cin, h, w = x.shape
    if weight.ndim != 4 or weight.shape[0] != cin:
        raise ShapeError(f"conv_transpose2d: input has {cin} channels (shape {x.shape}) but the "
                         f"weight {weight.shape} expects (in_channels={cin}, "
                         "out_channels/groups, kh, kw)")
    _, cog, kh, kw = weight.shape
    stride = _tuple(stride, 2, "stride")
    padding = _tuple(padding, 2, "padding")
    output_padding = _tuple(output_padding, 2, "output_padding")
    dilation = _tuple(dilation, 2, "dilation")
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise OpError(f"conv_transpose2d: output_padding {output_padding} must be smaller than "
                      f"stride {stride} or dilation {dilation}")
    if (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1 <= 0:
        raise ShapeError(f"conv_transpose2d: padding {padding} leaves no output for input {x.shape}")
    out = conv_transpose2d_core(x, weight, stride, padding, output_padding, groups, dilation)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op):
    k = _tuple(kernel_size, 2, "kernel_size")
    s = _tuple(stride if stride is not None and stride != [] else k, 2, "stride")
    p = _tuple(padding, 2, "padding")
    d = _tuple(dilation, 2, "dilation")
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise OpError(f"{op}: padding {p} must be at most half the kernel size {k}")
    sizes, extra = [], []
    for n, ki, si, pi, di in zip(x.shape[2:], k, s, p, d):
        span = n + 2 * pi - di * (ki - 1) - 1
        if span < 0:
            raise ShapeError(f"{op}: kernel {k} does not fit the input of spatial size "
                             f"{x.shape[2:]} with padding {p}")
        out = (-(-span // si) if ceil_mode else span // si) + 1
        if ceil_mode and (out - 1) * si >= n + pi:
            out -= 1
        sizes.append(out)
        extra.append(max((out - 1) * si + di * (ki - 1) + 1 - (n + 2 * pi), 0))
    return k, s, p, d, sizes, extra


def _pool_windows(x, k, s, p, d, extra, fill):
    """(N, C, kh*kw, Ho*Wo) windows of x, padded with ``fill``."""
    n, c = x.shape[:2]
    if any(p) or any(extra):
        x = mv.pad(x, (p[1], p[1] + extra[1], p[0], p[0] + extra[0]), value=fill)
    cols = unfold(x, k, d, 0, s)
    return cols.reshape(n, c, k[0] * k[1], cols.shape[-1])  # (no -1: n may be 0)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over windows of (N, C, H, W). ``return_indices`` gives flat H*W positions."""
    x, unbatched = _batched(input, 4, "max_pool2d")
    k, s, p, d, (ho, wo), extra = _pool_geometry(x, kernel_size, stride, padding, dilation,
                                                 ceil_mode, "max_pool2d")
    n, c, h, w = x.shape
    geometry = dict(kernel=k, stride=s, dilation=d, pads=(p[0], p[0] + extra[0], p[1], p[1] + extra[1]),
                    out_size=(ho, wo))
    out = pool_select(x, x, **geometry)
    if unbatched:
        out = out.squeeze(0)
    if not return_indices:
        return out
    from ..ops.pooling import _winner

    _, arg = _winner(x.data, k, s, d, geometry["pads"], (ho, wo))
    a = arg
    ki, kj = a // k[1], a % k[1]
    rows = np.arange(ho)[:, None] * s[0] - p[0] + ki * d[0]
    cols = np.arange(wo)[None, :] * s[1] - p[1] + kj * d[1]
    idx = Tensor._make((rows * w + cols).astype(np.int64))
    return out, (idx.squeeze(0) if unbatched else idx)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    x, unbatched = _batched(input, 4, "avg_pool2d")
    k, s, p, d, (ho, wo), extra = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode,
                                                 "avg_pool2d")
    out = avg_pool(x, k, s, (p[0], p[0] + extra[0], p[1], p[1] + extra[1]), p, (ho, wo), bool(count_include_pad),
                   divisor_override)
    return out.squeeze(0) if unbatched else out


def _adaptive_bounds(n, out):
    return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def adaptive_avg_pool2d(input, output_size):
    """Average over an adaptive grid so the output is ``output_size`` (int or (h, w))."""
    x, unbatched = _batched(input, 4, "adaptive_avg_pool2d")
    h, w = x.shape[2:]
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or h, ow or w
    if h % oh == 0 and w % ow == 0:
        out = avg_pool2d(x, (h // oh, w // ow))
    else:
        rows = []
        for r0, r1 in _adaptive_bounds(h, oh):
            row = [x[:, :, r0:r1, c0:c1].mean((2, 3)) for c0, c1 in _adaptive_bounds(w, ow)]
            rows.append(mv.stack(row, -1))
        out = mv.stack(rows, -2)
    return out.squeeze(0) if unbatched else out


def adaptive_max_pool2d(input, output_size):
    x, unbatched = _batched(input, 4, "adaptive_max_pool2d")
    h, w = x.shape[2:]
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or h, ow or w
    rows = []
    for r0, r1 in _adaptive_bounds(h, oh):
        row = [rd.amax(x[:, :, r0:r1, c0:c1], (2, 3)) for c0, c1 in _adaptive_bounds(w, ow)]
        rows.append(mv.stack(row, -1))
    out = mv.stack(rows, -2)
    return out.squeeze(0) if unbatched else out


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    x, unbatched = _batched(input, 3, "max_pool1d")
    out = max_pool2d(x.unsqueeze(2), (1, _tuple(kernel_size, 1, "kernel_size")[0]),
                     (1, _tuple(stride if stride is not None else kernel_size, 1, "stride")[0]),
                     (0, _tuple(padding, 1, "padding")[0]), (1, _tuple(dilation, 1, "dilation")[0]),
                     ceil_mode, return_indices)
    if return_indices:  # flat positions in a (1, L) image are positions along L
        out, idx = out[0].squeeze(2), out[1].squeeze(2)
        return (out.squeeze(0), idx.squeeze(0)) if unbatched else (out, idx)
    out = out.squeeze(2)
    return out.squeeze(0) if unbatched else out


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    x, unbatched = _batched(input, 3, "avg_pool1d")
    out = avg_pool2d(x.unsqueeze(2), (1, _tuple(kernel_size, 1, "kernel_size")[0]),
                     (1, _tuple(stride if stride is not None else kernel_size, 1, "stride")[0]),
                     (0, _tuple(padding, 1, "padding")[0]), ceil_mode, count_include_pad).squeeze(2)
    return out.squeeze(0) if unbatched else out


def adaptive_avg_pool1d(input, output_size):
    x, unbatched = _batched(input, 3, "adaptive_avg_pool1d")
    out = adaptive_avg_pool2d(x.unsqueeze(2), (1, output_size)).squeeze(2)
    return out.squeeze(0) if unbatched else out


# ---- normalisation --------------------------------------------------------------------

def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing ``normalized_shape`` dims (biased variance), then scale."""
    x = as_tensor(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(shape):] != shape:
        raise ShapeError(f"layer_norm: normalized_shape {shape} does not match the trailing dims "
                         f"of the input {x.shape}")
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    mu = rd.mean(x, dims, keepdim=True)
    centered = x - mu
    var = rd.mean(centered * centered, dims, keepdim=True)
    out = centered * ew.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation over dim 1 of (N, C) or (N, C, *). In training mode the batch
    statistics are used and the running ones updated in place (unbiased variance)."""
    x = as_tensor(input)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: expects (N, C) or (N, C, *), got shape {x.shape}")
    c = x.shape[1]
    dims = (0,) + tuple(range(2, x.ndim))
    bshape = (1, c) + (1,) * (x.ndim - 2)
    if training:
        count = x.data.size // c
        if count <= 1:
            raise OpError(f"batch_norm: expected more than 1 value per channel when training, "
                          f"got input of shape {x.shape}")
        mu = rd.mean(x, dims, keepdim=True)
        centered = x - mu
        var = rd.mean(centered * centered, dims, keepdim=True)
        if running_mean is not None:
            with no_grad():
                m = momentum
                running_mean.mul_(1 - m).add_(mu.detach().reshape(c) * m)
                running_var.mul_(1 - m).add_(var.detach().reshape(c) * (m * count / (count - 1)))
        out = centered * ew.rsqrt(var + eps)
    else:
        if running_mean is None:
            raise OpError("batch_norm: running_mean/running_var are required in eval mode")
        mu = running_mean.reshape(bshape)
        out = (x - mu) * ew.rsqrt(running_var.reshape(bshape) + eps)
    if weight is not None:
        out = out * weight.reshape(bshape)
    if bias is not None:
        out = out + bias.reshape(bshape)
    return out


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    x = as_tensor(input)
    n, c = x.shape[:2]
    if c % num_groups:
        raise OpError(f"group_norm: {c} channels are not divisible into {num_groups} groups")
    g = x.reshape(n, num_groups, x.numel() // max(n * num_groups, 1))  # (no -1: n may be 0)
    mu = rd.mean(g, 2, keepdim=True)
    centered = g - mu
    var = rd.mean(centered * centered, 2, keepdim=True)
    out = (centered * ew.rsqrt(var + eps)).reshape(x.shape)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(bshape)
    if bias is not None:
        out = out + bias.reshape(bshape)
    return out


def instance_norm(input, weight=None, bias=None, eps=1e-5):
    return group_norm(input, input.shape[1], weight, bias, eps)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    x = as_tensor(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    eps = np.finfo(x.data.dtype).eps if eps is None else eps
    out = x * ew.rsqrt(rd.mean(x * x, dims, keepdim=True) + eps)
    return out if weight is None else out * weight


# ---- dropout and attention ------------------------------------------------------------

def dropout(input, p=0.5, training=True, generator=None):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only)."""
    from .. import random as rnd

    x = as_tensor(input)
    if not 0.0 <= p <= 1.0:
        raise OpError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return x * rnd.dropout_mask(x.shape, p, x.data.dtype, generator)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None):
    """softmax(q @ k^T * scale + mask) @ v over (..., L, E) query and (..., S, E) key/value.

    A bool ``attn_mask`` marks positions that may be attended (True = keep), a float mask is
    added to the scores; ``is_causal`` masks future positions.
    """
    q, k, v = as_tensor(query), as_tensor(key), as_tensor(value)
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"scaled_dot_product_attention: query dim {q.shape[-1]} != key dim "
                         f"{k.shape[-1]} (query {q.shape}, key {k.shape})")
    if k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"scaled_dot_product_attention: key length {k.shape[-2]} != value "
                         f"length {v.shape[-2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = matmul(q, k.mT) * scale
    L, S = q.shape[-2], k.shape[-2]
    if is_causal:
        scores = ix.masked_fill(scores, ~np.tri(L, S, dtype=bool), -np.inf)
    if attn_mask is not None:
        m = as_tensor(attn_mask)
        if m.data.dtype == np.bool_:
            scores = ix.masked_fill(scores, ew.logical_not(m), -np.inf)
        else:
            scores = scores + m
        # a query whose every key is masked attends to nothing: its output (and gradient) is
        # 0, not softmax's 0/0 = nan, as PyTorch's SDPA does (padding rows stay harmless)
        dead = rd.all(ew.eq(scores, -np.inf), -1, keepdim=True)
        attn = ew.where(dead, 0.0, softmax(ew.where(dead, 0.0, scores), -1))
    else:
        attn = softmax(scores, -1)
    if dropout_p:
        attn = dropout(attn, dropout_p)
    return matmul(attn, v)
