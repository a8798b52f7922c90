"""Max pooling as a pair of primitives that never materialise the windows.

``pool_select(h, x)`` picks, in every pooling window, the value of ``h`` at the position
where ``x`` is largest (the first maximum, or the last NaN, as PyTorch); ``max_pool2d(x)`` is
``pool_select(x, x)``. ``pool_scatter(g, x)`` sends each ``g`` back to that position. Each is
the other's gradient with respect to its first input; neither depends smoothly on ``x``.
Both loop over the kh*kw kernel offsets with strided views, so the work is a few
whole-array passes instead of an argmax over tiny window axes. The common 2x2 window of
stride 2 that tiles the image runs as a numba loop instead (one pass, 2-3x faster than the
four NumPy passes in the cnn benchmark, and the backward writes each input position once).
"""

from __future__ import annotations

import weakref

import numpy as np

from . import threads
from .helpers import numba_module
from .registry import apply, primitive

_SOURCE = '''# ember 2x2 max pooling kernels (format 2)
import numba

# Each loop runs over 1-D row views and touches few of them, so that LLVM can vectorize it
# (see ops/rnn.py). A NaN takes its window, the last NaN winning, as in PyTorch.


@numba.njit(cache=True, nogil=True, error_model="numpy")
def select_2x2(x, best, idx):
    n, c, ho, wo = best.shape
    for a in range(n):
        for ch in range(c):
            for i in range(ho):
                r0, r1 = x[a, ch, 2 * i], x[a, ch, 2 * i + 1]
                b_row, i_row = best[a, ch, i], idx[a, ch, i]
                for j in range(wo):
                    m = r0[2 * j]
                    v = r0[2 * j + 1]
                    t1 = (v > m) | (v != v)
                    m = v if t1 else m
                    v = r1[2 * j]
                    t2 = (v > m) | (v != v)
                    m = v if t2 else m
                    v = r1[2 * j + 1]
                    t3 = (v > m) | (v != v)
                    b_row[j] = v if t3 else m
                    i_row[j] = 3 if t3 else (2 if t2 else (1 if t1 else 0))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def scatter_2x2(g, idx, out):
    # g, idx: contiguous (N, C, Ho, Wo); out: contiguous (N, C, 2Ho, 2Wo), seen as one (2, 2Wo)
    # pair of output rows per window row. Both rows are written in one loop over their
    # positions, in order: written as even and odd positions by two stores per window (the
    # previous form) LLVM kept the loop scalar, 4x slower
    n, c, ho, wo = g.shape
    zero = out.dtype.type(0)
    g_rows, i_rows = g.reshape(n * c * ho, wo), idx.reshape(n * c * ho, wo)
    out_rows = out.reshape(n * c * ho, 2, 2 * wo)
    for r in range(n * c * ho):
        g_row, i_row = g_rows[r], i_rows[r]
        top, bottom = out_rows[r, 0], out_rows[r, 1]
        for jj in range(2 * wo):
            j = jj >> 1
            v, k, odd = g_row[j], i_row[j], jj & 1
            top[jj] = v if k == odd else zero
            bottom[jj] = v if k == 2 + odd else zero
'''


def _tiles_2x2(x, kernel, stride, dilation, pads, out_size):
    """True for the window the numba kernels handle: 2x2, stride 2, tiling the whole image."""
    return (kernel == (2, 2) and stride == (2, 2) and dilation == (1, 1) and not any(pads)
            and x.shape[2] == 2 * out_size[0] and x.shape[3] == 2 * out_size[1]
            and x.dtype in (np.float32, np.float64))


def _offsets(kernel, stride, dilation, out_size):
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_size
    for i in range(kh):
        for j in range(kw):
            yield (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def _padded(a, pads, fill):
    t, b, lf, r = pads
    if not (t or b or lf or r):
        return a
    return np.pad(a, ((0, 0), (0, 0), (t, b), (lf, r)), constant_values=fill)


_WINNERS: dict = {}  # (id(x), geometry) -> (weakref to x, winner offsets): forward's argmax, reused by backward


def _winner(x, kernel, stride, dilation, pads, out_size):
    """(max values, index of the winning kernel offset) per window."""
    xp = _padded(x, pads, -np.inf)
    best = np.empty(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    idx = np.zeros(best.shape, dtype=np.int16)
    tiled = _tiles_2x2(x, kernel, stride, dilation, pads, out_size)
    if tiled:
        select_2x2 = numba_module(_SOURCE).select_2x2
    else:
        has_nan = x.dtype.kind == "f" and bool(np.isnan(x).any())

    def part(lo, hi):
        b, k_idx = best[lo:hi], idx[lo:hi]
        if tiled:
            select_2x2(xp[lo:hi], b, k_idx)
            return
        for k, (rs, cs) in enumerate(_offsets(kernel, stride, dilation, out_size)):
            v = xp[lo:hi, :, rs, cs]
            if k == 0:
                np.copyto(b, v)
                continue
            upd = v > b
            if has_nan:
                upd |= np.isnan(v)  # as PyTorch's kernel: every NaN takes the window, so the last one wins
                np.copyto(b, v, where=upd)
            else:
                np.maximum(b, v, out=b)
            # idx = where(upd, k, idx) by arithmetic: masked copies are several times slower here
            k_idx -= (k_idx - np.int16(k)) * upd

    threads.over_batch(x.shape[0], part, 4 * best.size * kernel[0] * kernel[1])  # ~4 passes per offset
    remember_winners(x, (kernel, stride, dilation, pads, out_size), idx)
    return best, idx


def remember_winners(x, geometry, idx):
    """Record ``idx``, the winner offsets of max pooling ``x`` with ``geometry`` (kernel,
    stride, dilation, pads, out_size), as _winner does: for a kernel that pools as it computes
    ``x`` (compiler/convolution.py); pool_scatter(g, x) then reads them."""
    if len(_WINNERS) > 32:
        for stale in [k for k, (ref, _) in _WINNERS.items() if ref() is None]:
            del _WINNERS[stale]
    _WINNERS[(id(x), *geometry)] = (weakref.ref(x), idx)


def select_2x2(x, best, idx):
    """The 2x2, stride-2 tiling max pool of x (N, C, 2Ho, 2Wo) into best and idx (N, C, Ho, Wo)."""
    numba_module(_SOURCE).select_2x2(x, best, idx)


def scatter_winners_2x2(g, idx):
    """pool_scatter for the 2x2, stride-2 tiling pool from its winners: g and idx (N, C, Ho,
    Wo) -> (N, C, 2Ho, 2Wo), each g at its window's winning position, zeros elsewhere."""
    scatter_2x2 = numba_module(_SOURCE).scatter_2x2
    g = np.ascontiguousarray(g)
    n, c, ho, wo = g.shape
    full = np.empty((n, c, 2 * ho, 2 * wo), dtype=g.dtype)  # the kernel writes every position
    threads.over_batch(n, lambda lo, hi: scatter_2x2(g[lo:hi], idx[lo:hi], full[lo:hi]), 2 * full.size)
    return full


def _winner_index(x, *geometry):
    hit = _WINNERS.get((id(x), *geometry))
    if hit is not None and hit[0]() is x:
        return hit[1]
    return _winner(x, *geometry)[1]


def _select_np(h, x, kernel, stride, dilation, pads, out_size):
    if h is x:
        return _winner(x, kernel, stride, dilation, pads, out_size)[0]
    idx = _winner_index(x, kernel, stride, dilation, pads, out_size)
    hp = _padded(h, pads, 0)
    out = np.zeros(idx.shape, dtype=h.dtype)
    for k, (rs, cs) in enumerate(_offsets(kernel, stride, dilation, out_size)):
        np.copyto(out, hp[:, :, rs, cs], where=idx == k)
    return out


def _scatter_np(g, x, kernel, stride, dilation, pads, out_size):
    idx = _winner_index(x, kernel, stride, dilation, pads, out_size)
    n, c, h, w = x.shape
    if _tiles_2x2(x, kernel, stride, dilation, pads, out_size) and g.dtype == x.dtype:
        return scatter_winners_2x2(g, idx)
    t, b, lf, r = pads
    out = np.zeros((n, c, h + t + b, w + lf + r), dtype=g.dtype)
    disjoint = all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, stride, dilation))

    def part(lo, hi):
        for k, (rs, cs) in enumerate(_offsets(kernel, stride, dilation, out_size)):
            hit = idx[lo:hi] == k
            if disjoint:  # every input position is in at most one window: write, don't accumulate
                np.multiply(g[lo:hi], hit, out=out[lo:hi, :, rs, cs])
            else:
                out[lo:hi, :, rs, cs] += g[lo:hi] * hit

    threads.over_batch(n, part, 2 * g.size * kernel[0] * kernel[1])
    return out[:, :, t:t + h, lf:lf + w] if (t or b or lf or r) else out


def _select_infer(h, x, kernel, stride, dilation, pads, out_size):
    return tuple(x.shape[:2]) + tuple(out_size), h.np_dtype


def _scatter_infer(g, x, kernel, stride, dilation, pads, out_size):
    return tuple(x.shape), g.np_dtype


_no_grad = lambda *args, **kwargs: None  # noqa: E731  (argmax positions are piecewise constant)

POOL_SELECT = primitive(
    "pool_select", _select_np,
    (lambda g, out, h, x, **geo: pool_scatter(g, x, **geo), _no_grad),
    infer=_select_infer, saves=(1,))
POOL_SCATTER = primitive(
    "pool_scatter", _scatter_np,
    (lambda g, out, s, x, **geo: pool_select(g, x, **geo), _no_grad),
    infer=_scatter_infer, saves=(1,))


def _is_zero(v):
    return v.kind == "literal" and v.literal.size == 1 and v.literal.reshape(()).item() == 0


def _mask_before_scatter(node, graph):
    """The compiler's rewrite of ``where(x > 0, pool_scatter(g, x), 0)``, a ReLU's gradient
    (its mask is its output's sign) through the max pooling that follows it, into
    ``pool_scatter(where(pooled > 0, g, 0), x)`` (compiler/passes.simplify). Every position
    the scatter writes holds its window's maximum, so there ``x > 0`` is ``pooled > 0``, NaN
    included; elsewhere both are 0. The mask is then tested on the pooled tensor, a quarter
    of the size for 2x2 windows, and neither the full-size mask (the forward's relu writes it
    for the backward) nor the full-size ``where`` pass runs: 2 x 0.26 ms of the cnn step."""
    g, x = node.inputs
    uses = [n for n in graph.nodes if any(v is node.output for v in n.inputs)]
    if len(uses) != 1 or node.output.id in {r.id for r in graph.roots()}:
        return
    (masked,) = uses
    if getattr(masked.op, "name", None) != "where" or masked.inputs[1] is not node.output \
            or not _is_zero(masked.inputs[2]) or masked.output.dtype != node.output.dtype:
        return
    mask = masked.inputs[0].node
    if mask is None or getattr(mask.op, "name", None) != "gt" or mask.inputs[0] is not x \
            or not _is_zero(mask.inputs[1]) or masked.output.shape != x.shape:
        return
    before = graph.nodes[:graph.nodes.index(masked)]
    pooled = next((n.output for n in before if getattr(n.op, "name", None) == "pool_select"
                   and n.inputs[0] is x and n.inputs[1] is x and n.attrs == node.attrs), None)
    if pooled is None:  # computing the pooled values here would cost what the rewrite saves
        return
    from .registry import PRIMITIVES

    small_mask = graph.add_node(PRIMITIVES["gt"], [pooled, mask.inputs[1]], {}, pooled.shape,
                                mask.output.dtype, before=masked).output
    small_g = graph.add_node(PRIMITIVES["where"], [small_mask, g, masked.inputs[2]], {}, g.shape, g.dtype,
                             before=masked).output
    # the where node becomes the scatter; the old scatter is left without uses (dce drops it)
    masked.op, masked.attrs, masked.inputs = node.op, node.attrs, [small_g, x]


POOL_SCATTER.simplify = _mask_before_scatter


def pool_select(h, x, kernel, stride, dilation, pads, out_size):
    return apply(POOL_SELECT, (h, x), dict(kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                                           out_size=out_size))


def pool_scatter(g, x, kernel, stride, dilation, pads, out_size):
    return apply(POOL_SCATTER, (g, x), dict(kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                                            out_size=out_size))


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------

def _onnx_max_pool(ctx, n):
    if n.inputs[0] is not n.inputs[1]:
        from ..onnx.export import NotExportable

        raise NotExportable("pool_select of one tensor by another's maxima (max pooling's gradient) has no "
                            "ONNX equivalent; only max pooling itself exports")
    t, b, lf, r = n.attrs["pads"]
    return ctx.emit("MaxPool", [ctx.input(n, 0)], kernel_shape=list(n.attrs["kernel"]),
                    strides=list(n.attrs["stride"]), dilations=list(n.attrs["dilation"]), pads=[t, lf, b, r])


POOL_SELECT.onnx = _onnx_max_pool


# ---- average pooling ----------------------------------------------------------------------------

def _axis_counts(n, k, s, explicit, pad_before, out, include_pad):
    """Cells each window covers along one axis: inside the image, plus the explicit padding if
    it is included (the extra padding ceil_mode adds never counts, as in PyTorch)."""
    starts = np.arange(out) * s
    lo = 0 if include_pad else pad_before
    hi = n + 2 * explicit if include_pad else pad_before + n
    return np.clip(np.minimum(starts + k, hi) - np.maximum(starts, lo), 0, None)


def _avg_divisor(x_shape, kernel, stride, pads, padding, out_size, count_include_pad, divisor):
    if divisor:
        return np.asarray(float(divisor))
    h, w = x_shape[2:]
    ch = _axis_counts(h, kernel[0], stride[0], padding[0], pads[0], out_size[0], count_include_pad)
    cw = _axis_counts(w, kernel[1], stride[1], padding[1], pads[2], out_size[1], count_include_pad)
    return np.outer(ch, cw).astype(np.float64)


def _avg_np(x, kernel, stride, pads, padding, out_size, count_include_pad, divisor):
    xp = _padded(x, pads, 0)
    total = np.zeros(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    for rs, cs in _offsets(kernel, stride, (1, 1), out_size):
        total += xp[:, :, rs, cs]
    return (total / _avg_divisor(x.shape, kernel, stride, pads, padding, out_size, count_include_pad,
                                 divisor)).astype(x.dtype, copy=False)


def _avg_grad(g, out, x, kernel, stride, pads, padding, out_size, count_include_pad, divisor):
    """Each window's gradient, divided by its count, spread over the window's cells (fold)."""
    from .nn import fold

    n, c, h, w = x.shape
    t, b, lf, r = pads
    share = g / _avg_divisor(x.shape, kernel, stride, pads, padding, out_size, count_include_pad,
                             divisor).astype(g.dtype.np)
    kk, length = kernel[0] * kernel[1], out_size[0] * out_size[1]
    cols = share.reshape(n, c, 1, length).expand(n, c, kk, length).reshape(n, c * kk, length)
    full = fold(cols, (h + t + b, w + lf + r), kernel, 1, 0, stride)
    return full[:, :, t:t + h, lf:lf + w]


AVG_POOL2D = primitive(
    "avg_pool2d", _avg_np, (_avg_grad,),
    infer=lambda x, kernel, stride, pads, padding, out_size, count_include_pad, divisor:
        (tuple(x.shape[:2]) + tuple(out_size), x.np_dtype), saves=())


def avg_pool(x, kernel, stride, pads, padding, out_size, count_include_pad, divisor):
    return apply(AVG_POOL2D, (x,), dict(kernel=kernel, stride=stride, pads=pads, padding=padding,
                                        out_size=out_size, count_include_pad=count_include_pad,
                                        divisor=divisor))


def _onnx_avg_pool(ctx, n):
    a = n.attrs
    if a["divisor"]:
        from ..onnx.export import NotExportable

        raise NotExportable("avg_pool2d with divisor_override has no ONNX equivalent")
    t, b, lf, r = a["pads"]
    p = a["padding"]
    ceil = int(b > p[0] or r > p[1])
    return ctx.emit("AveragePool", [ctx.input(n, 0)], kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                    pads=[p[0], p[1], p[0], p[1]], count_include_pad=int(a["count_include_pad"]), ceil_mode=ceil)


AVG_POOL2D.onnx = _onnx_avg_pool
