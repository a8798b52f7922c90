"""Max pooling as a pair of primitives that never materialise the windows.

``pool_select(h, x)`` picks, in every pooling window, the value of ``h`` at the position
where ``x`` is largest (the first maximum, NaN winning, as PyTorch); ``max_pool2d(x)`` is
``pool_select(x, x)``. ``pool_scatter(g, x)`` sends each ``g`` back to that position. Each is
the other's gradient with respect to its first input; neither depends smoothly on ``x``.
Both loop over the kh*kw kernel offsets with strided views, so the work is a few
whole-array passes instead of an argmax over tiny window axes.
"""

from __future__ import annotations

import weakref

import numpy as np

from .registry import apply, primitive


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
    key = (id(x), kernel, stride, dilation, pads, out_size)
    xp = _padded(x, pads, -np.inf)
    best = idx = None
    for k, (rs, cs) in enumerate(_offsets(kernel, stride, dilation, out_size)):
        v = xp[:, :, rs, cs]
        if best is None:
            best = v.copy()
            idx = np.zeros(best.shape, dtype=np.int16)
            continue
        upd = v > best
        if x.dtype.kind == "f":
            upd |= np.isnan(v) & ~np.isnan(best)
        np.copyto(best, v, where=upd)
        np.copyto(idx, np.int16(k), where=upd)
    if len(_WINNERS) > 32:
        for stale in [k for k, (ref, _) in _WINNERS.items() if ref() is None]:
            del _WINNERS[stale]
    _WINNERS[key] = (weakref.ref(x), idx)
    return best, idx


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
    t, b, lf, r = pads
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + t + b, w + lf + r), dtype=g.dtype)
    for k, (rs, cs) in enumerate(_offsets(kernel, stride, dilation, out_size)):
        out[:, :, rs, cs] += g * (idx == k)
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


def pool_select(h, x, kernel, stride, dilation, pads, out_size):
    return apply(POOL_SELECT, (h, x), dict(kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                                           out_size=out_size))


def pool_scatter(g, x, kernel, stride, dilation, pads, out_size):
    return apply(POOL_SCATTER, (g, x), dict(kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                                            out_size=out_size))
