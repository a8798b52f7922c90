"""The LSTM recurrence as one primitive, as PyTorch's fused LSTM: ``lstm_sequence``.

Written with ember's elementwise ops, an LSTM layer is ~15 nodes per time step; its backward
then sums one (4H, N) x (N, H) weight-gradient GEMM per step and runs the cell's dozen
elementwise passes per step as separate NumPy calls. Here the whole recurrence is one node:

  forward   per step one GEMM ``w_hh @ h.T`` and one numba loop for the cell;
  backward  per step one numba loop for the cell's gradient and one GEMM ``w_hh.T @ dgates.T``;
            the weight gradient is a single GEMM over all steps afterwards.

The per-step products are computed transposed because OpenBLAS runs a skinny (4H x H) x
(H x N) product much faster than the (N x H) x (H x 4H) one with the same operands.

Inputs: ``xp`` (L, N, 4H), the input projection with both biases (computed by the layer
with one matmul), ``h0`` and ``c0`` (N, H), ``w_hh`` (4H, H); gate order i, f, g, o
(PyTorch's). The output packs, per step, ``h, c, i, f, g, o`` as (L, N, 6, H): the layer
reads h (and c at the last step); the gate activations are what the backward needs. The
backward is the primitive ``lstm_sequence_grad``, whose result packs the four gradients in
one flat array; it has no derivative itself (as cuDNN's fused LSTM), and asking for one
raises. ``reverse=True`` runs the steps from L-1 down to 0 (a bidirectional layer's second
direction).
"""

from __future__ import annotations

import numpy as np

from ..autograd.engine import GradMode
from ..errors import OpError, ShapeError
from .helpers import numba_module
from .registry import Meta, apply, primitive

_SOURCE = '''# ember LSTM cell kernels (format 4)
import numba

from ember.compiler.fastmath import fast_sigmoid, fast_tanh

# Each loop reads and writes few arrays, through 1-D row views: with more streams (or with
# offset indexing such as hw[a, hs + j]) LLVM gives up its runtime overlap checks and runs
# the loop scalar, 5-10x slower.


@numba.njit(cache=True, nogil=True, error_model="numpy")
def cell_forward(hw_t, x_t, c_prev, out_t, pre):
    # pre-activations hw_t.T + x_t -> gates i, f, g, o, then c and h, into out_t's rows;
    # hw_t: (4H, N), the recurrent product as the GEMM wrote it; pre: a (4H,) scratch row
    n, hs = c_prev.shape
    for a in range(n):
        h, c, i, f, g, o = out_t[a, 0], out_t[a, 1], out_t[a, 2], out_t[a, 3], out_t[a, 4], out_t[a, 5]
        cp = c_prev[a]
        hw_a, x_a = hw_t[:, a], x_t[a]
        for j in range(4 * hs):
            pre[j] = hw_a[j] + x_a[j]
        for k, act in ((0, i), (1, f), (3, o)):
            pk = pre[k * hs:(k + 1) * hs]
            for j in range(hs):
                act[j] = fast_sigmoid(pk[j])
        pk = pre[2 * hs:3 * hs]
        for j in range(hs):
            g[j] = fast_tanh(pk[j])
        for j in range(hs):
            c[j] = f[j] * cp[j] + i[j] * g[j]
        for j in range(hs):
            h[j] = o[j] * fast_tanh(c[j])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def cell_backward(g_out, out, c_prev, dh_next, dc_next, dgates, tanh_c, dc_now):
    # tanh_c, dc_now: (H,) scratch rows
    n, hs = c_prev.shape
    one = c_prev.dtype.type(1)
    for a in range(n):
        c, i, f, g, o = out[a, 1], out[a, 2], out[a, 3], out[a, 4], out[a, 5]
        gh, gc, gi, gf, gg, go = g_out[a, 0], g_out[a, 1], g_out[a, 2], g_out[a, 3], g_out[a, 4], g_out[a, 5]
        dh, dc, cp = dh_next[a], dc_next[a], c_prev[a]
        di, df = dgates[a, :hs], dgates[a, hs:2 * hs]
        dg, do = dgates[a, 2 * hs:3 * hs], dgates[a, 3 * hs:]
        for j in range(hs):
            tanh_c[j] = fast_tanh(c[j])
        for j in range(hs):  # dh here: this step's h gradient, from above and from step t + 1
            dh[j] += gh[j]
        for j in range(hs):
            dc_now[j] = gc[j] + dc[j] + dh[j] * o[j] * (one - tanh_c[j] * tanh_c[j])
        for j in range(hs):
            do[j] = (dh[j] * tanh_c[j] + go[j]) * o[j] * (one - o[j])
        for j in range(hs):
            di[j] = (dc_now[j] * g[j] + gi[j]) * i[j] * (one - i[j])
        for j in range(hs):
            dg[j] = (dc_now[j] * i[j] + gg[j]) * (one - g[j] * g[j])
        for j in range(hs):
            df[j] = (dc_now[j] * cp[j] + gf[j]) * f[j] * (one - f[j])
        for j in range(hs):
            dc[j] = dc_now[j] * f[j]
'''

def _order(length, reverse):
    return range(length - 1, -1, -1) if reverse else range(length)


def _sequence_np(xp, h0, c0, w_hh, reverse):
    length, n, gates = xp.shape
    hs = gates // 4
    dtype = np.result_type(xp.dtype, w_hh.dtype)
    out = np.empty((length, n, 6, hs), dtype=dtype)
    cell = numba_module(_SOURCE).cell_forward
    h, c = h0, np.ascontiguousarray(c0, dtype=dtype)
    # the product transposed, w_hh @ h.T: OpenBLAS runs this shape ~1.9x faster than h @ w_hh.T
    # (52 vs 100 us for 32 x 256 x 1024 on two threads); the cell reads its columns
    hw_t = np.empty((gates, n), dtype=dtype)
    pre = np.empty(gates, dtype=dtype)
    for t in _order(length, reverse):
        np.matmul(w_hh, h.T, out=hw_t)
        cell(hw_t, xp[t], c, out[t], pre)
        h, c = out[t, :, 0], out[t, :, 1]
    return out


def _grad_np(g_out, out, h0, c0, w_hh, reverse):
    length, n, _, hs = out.shape
    dtype = out.dtype
    g_out = np.ascontiguousarray(g_out, dtype=dtype)
    cell = numba_module(_SOURCE).cell_backward
    dgates = np.empty((length, n, 4 * hs), dtype=dtype)
    dh = np.zeros((n, hs), dtype=dtype)
    # the product transposed, w_hh.T @ dgates.T, as in the forward (~1.2x faster), then copied
    # back (32 KB: cheaper than the cell reading its columns)
    dh_t = np.empty((hs, n), dtype=dtype)
    dc = np.zeros((n, hs), dtype=dtype)
    w_t = np.ascontiguousarray(w_hh.T)
    tanh_c, dc_now = np.empty(hs, dtype=dtype), np.empty(hs, dtype=dtype)
    steps = list(_order(length, reverse))
    prev_h = np.empty((length, n, hs), dtype=dtype)  # the h each step read
    for k, t in enumerate(steps):
        prev_h[t] = h0 if k == 0 else out[steps[k - 1], :, 0]
    for k in range(length - 1, -1, -1):
        t = steps[k]
        c_prev = np.ascontiguousarray(c0, dtype=dtype) if k == 0 else out[steps[k - 1], :, 1]
        cell(g_out[t], out[t], c_prev, dh, dc, dgates[t], tanh_c, dc_now)
        np.matmul(w_t, dgates[t].T, out=dh_t)
        np.copyto(dh, dh_t.T)
    flat = dgates.reshape(length * n, 4 * hs)
    d_w = flat.T @ prev_h.reshape(length * n, hs)
    return np.concatenate([dgates.reshape(-1), dh.reshape(-1), dc.reshape(-1), d_w.reshape(-1)])


def _sequence_infer(xp, h0, c0, w_hh, reverse):
    if len(xp.shape) != 3 or xp.shape[2] % 4:
        raise ShapeError(f"lstm_sequence: input projection must be (L, N, 4*H), got {tuple(xp.shape)}")
    length, n, gates = xp.shape
    hs = gates // 4
    for name, t, want in (("h0", h0, (n, hs)), ("c0", c0, (n, hs)), ("w_hh", w_hh, (gates, hs))):
        if tuple(t.shape) != want:
            raise ShapeError(f"lstm_sequence: {name} has shape {tuple(t.shape)}, expected {want} for an "
                             f"input projection of shape {tuple(xp.shape)}")
    dtypes = {xp.np_dtype, h0.np_dtype, c0.np_dtype, w_hh.np_dtype}
    if len(dtypes) != 1 or xp.np_dtype.kind != "f":
        raise OpError(f"lstm_sequence: inputs must share one floating dtype, got {sorted(map(str, dtypes))}")
    return (length, n, 6, hs), xp.np_dtype


def _grad_parts(out_shape):
    """Shapes of the four gradients (xp, h0, c0, w_hh) packed, in this order, in the flat
    result of lstm_sequence_grad."""
    length, n, _, hs = out_shape
    return [(length, n, 4 * hs), (n, hs), (n, hs), (4 * hs, hs)]


def _grad_infer(g_out, out, h0, c0, w_hh, reverse):
    return (sum(int(np.prod(shape)) for shape in _grad_parts(out.shape)),), out.np_dtype


LSTM_SEQUENCE_GRAD = primitive("lstm_sequence_grad", _grad_np, infer=_grad_infer)


def _sequence_vjp(g, out, needs, xp, h0, c0, w_hh, reverse):
    if GradMode.enabled:
        raise OpError("lstm_sequence: the fused LSTM recurrence has no second derivative (create_graph=True "
                      "through an LSTM layer); differentiate through nn.LSTMCell steps instead")
    flat = apply(LSTM_SEQUENCE_GRAD, (g, out, h0, c0, w_hh), {"reverse": reverse})
    grads, start = [], 0
    for need, shape in zip(needs, _grad_parts(out.shape)):
        size = int(np.prod(shape))
        grads.append(flat[start:start + size].reshape(shape) if need else None)
        start += size
    return grads


LSTM_SEQUENCE = primitive("lstm_sequence", _sequence_np, vjp=_sequence_vjp, infer=_sequence_infer,
                          saves=(1, 2, 3), uses_out=True)


def lstm_sequence(xp, h0, c0, w_hh, reverse=False):
    """The LSTM recurrence over (L, N, 4H) input projections -> (L, N, 6, H) packed h, c, i, f,
    g, o per step (see the module docstring)."""
    _sequence_infer(*(Meta(t.shape, t.data.dtype) for t in (xp, h0, c0, w_hh)), reverse)  # clear errors first
    return apply(LSTM_SEQUENCE, (xp, h0, c0, w_hh), {"reverse": bool(reverse)})


# ---- ONNX: the recurrence unrolled into basic operators (its packed output has no ONNX LSTM
# equivalent, which returns only the last cell state) ---------------------------------------

def _onnx_sequence(ctx, n):
    length, _, gates = n.inputs[0].shape
    hs = gates // 4
    xp, h, c, w = (ctx.input(n, k) for k in range(4))
    w_t = ctx.emit("Transpose", [w], perm=[1, 0])
    split = ctx.ints([hs] * 4, "gate_sizes")
    steps = {}
    for t in _order(length, n.attrs["reverse"]):
        x_t = ctx.emit("Gather", [xp, ctx.ints([t], "step")], axis=0)  # (1, N, 4H)
        x_t = ctx.emit("Squeeze", [x_t, ctx.ints([0], "axis")])
        pre = ctx.emit("Add", [x_t, ctx.emit("MatMul", [h, w_t])])
        i, f, g, o = ctx.emit("Split", [pre, split], outputs=4, axis=1)
        i, f, o = (ctx.emit("Sigmoid", [v]) for v in (i, f, o))
        g = ctx.emit("Tanh", [g])
        c = ctx.emit("Add", [ctx.emit("Mul", [f, c]), ctx.emit("Mul", [i, g])])
        h = ctx.emit("Mul", [o, ctx.emit("Tanh", [c])])
        packed = ctx.emit("Concat", [ctx.emit("Unsqueeze", [v, ctx.ints([1], "axis")]) for v in (h, c, i, f, g, o)],
                          axis=1)  # (N, 6, H)
        steps[t] = ctx.emit("Unsqueeze", [packed, ctx.ints([0], "axis")])
    return ctx.emit("Concat", [steps[t] for t in range(length)], axis=0)


LSTM_SEQUENCE.onnx = _onnx_sequence
