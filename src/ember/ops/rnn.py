"""The LSTM recurrence as one primitive, as PyTorch's fused LSTM: ``lstm_sequence``.

Written with ember's elementwise ops, an LSTM layer is ~15 nodes per time step; its backward
then sums one (4H, N) x (N, H) weight-gradient GEMM per step and runs the cell's dozen
elementwise passes per step as separate NumPy calls. Here the whole recurrence is one node:

  forward   per step one GEMM ``w_hh @ h.T`` and one numba loop for the cell;
  backward  per step one numba loop for the cell's gradient and one GEMM ``w_hh.T @ dgates.T``;
            the weight gradient is a single GEMM over all steps afterwards.

The per-step products are computed transposed because OpenBLAS runs a skinny (4H x H) x
(H x N) product much faster than the (N x H) x (H x 4H) one with the same operands.

With several workers (ops/threads.py) and a step large enough, the threads share the
recurrence inside numba (compiler/native.py: BLAS called, and any wait spun, with no GIL
between steps). With at least ROWS_PER_WORKER sequences each, they split the batch: each
runs the whole recurrence, one-thread GEMMs and cells, for its own sequences and never
waits (the sequences are independent). With fewer, they share every step by hidden units:
each runs the GEMM for its units' four gate rows and their cell, then all wait for each
other. For the workload's 32 sequences the batch split ran the lstm step 1.03-1.07x as fast
as the unit split (alternated in one process; the unit split's cells ran at about the
one-thread speed, the GEMMs took as long as either way).

Inputs: ``xp`` (L, N, 4H), the input projection (computed by the layer with one matmul),
``h0`` and ``c0`` (N, H), ``w_hh`` (4H, H) and optionally ``bias`` (4H,), both biases summed,
which the cell adds (a separate add would be one more pass over the 8 MB projection of the
benchmark's lstm, 2.3 ms, and its gradient's column sum another 1.6); gate order i, f, g, o
(PyTorch's). The output packs, per step, ``h, c, i, f, g, o`` as (L, N, 6, H): the layer
reads h (and c at the last step); the gate activations are what the backward needs. The
backward is the primitive ``lstm_sequence_grad``, whose result packs the five gradients in
one flat array; it has no derivative itself (as cuDNN's fused LSTM), and asking for one
raises. Its output gradient is the packed (L, N, 6, H) one or, after the compiler's rewrite
``_h_gradient_only``, h's (L, N, H) alone. ``reverse=True`` runs the steps from L-1 down to 0
(a bidirectional layer's second direction).
"""

from __future__ import annotations

import numpy as np

from ..autograd.engine import GradMode
from ..errors import OpError, ShapeError
from . import threads
from .helpers import numba_module
from .registry import Meta, apply, primitive

_SOURCE = """# ember LSTM cell kernels (format 8)
import numba

from ember.compiler.fastmath import fast_sigmoid, fast_tanh
from ember.compiler.native import CBLAS_NO_TRANS, CBLAS_TRANS, blas_gemm, spin_barrier

# Each loop reads and writes few arrays, through 1-D row views: with more streams (or with
# offset indexing such as hw[a, hs + j]) LLVM gives up its runtime overlap checks and runs
# the loop scalar, 5-10x slower. The cells work on hidden units j0:j1 only, so that threads
# can share a step (forward_part, backward_part).


@numba.njit(cache=True, nogil=True, error_model="numpy")
def cell_forward(hw, x_t, bias, c_prev, out_t, pre, j0, j1):
    # pre-activations hw.T + x_t + bias -> gates i, f, g, o, then c and h, into out_t's rows,
    # for units j0:j1; hw: (4m, N) with m = j1 - j0, the recurrent product for those units'
    # four gate rows as the GEMM wrote it; pre: a (4m,) scratch row
    n, hs = c_prev.shape
    m = j1 - j0
    for a in range(n):
        h, c = out_t[a, 0, j0:j1], out_t[a, 1, j0:j1]
        i, f, g, o = out_t[a, 2, j0:j1], out_t[a, 3, j0:j1], out_t[a, 4, j0:j1], out_t[a, 5, j0:j1]
        cp = c_prev[a, j0:j1]
        hw_a, x_a = hw[:, a], x_t[a]
        for k in range(4):
            x_k, b_k = x_a[k * hs + j0:k * hs + j1], bias[k * hs + j0:k * hs + j1]
            for j in range(m):
                pre[k * m + j] = hw_a[k * m + j] + x_k[j] + b_k[j]
        for k, act in ((0, i), (1, f), (3, o)):
            pk = pre[k * m:(k + 1) * m]
            for j in range(m):
                act[j] = fast_sigmoid(pk[j])
        pk = pre[2 * m:3 * m]
        for j in range(m):
            g[j] = fast_tanh(pk[j])
        for j in range(m):
            c[j] = f[j] * cp[j] + i[j] * g[j]
        for j in range(m):
            h[j] = o[j] * fast_tanh(c[j])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def cell_backward(g_h, g_rest, out, c_prev, dh_next, dc_next, dgates, d_bias, tanh_c, dc_now, j0, j1):
    # units j0:j1; g_h: (N, H), the gradient of h; g_rest: (N, 5, H), those of c, i, f, g, o;
    # d_bias: (4H,) float64, the gate gradients summed over the steps so far; tanh_c,
    # dc_now: (m,) scratch rows
    n, hs = c_prev.shape
    m = j1 - j0
    one = c_prev.dtype.type(1)
    db_i, db_f = d_bias[j0:j1], d_bias[hs + j0:hs + j1]
    db_g, db_o = d_bias[2 * hs + j0:2 * hs + j1], d_bias[3 * hs + j0:3 * hs + j1]
    for a in range(n):
        c, i, f, g, o = out[a, 1, j0:j1], out[a, 2, j0:j1], out[a, 3, j0:j1], out[a, 4, j0:j1], out[a, 5, j0:j1]
        gh, gc, gi = g_h[a, j0:j1], g_rest[a, 0, j0:j1], g_rest[a, 1, j0:j1]
        gf, gg, go = g_rest[a, 2, j0:j1], g_rest[a, 3, j0:j1], g_rest[a, 4, j0:j1]
        dh, dc, cp = dh_next[a, j0:j1], dc_next[a, j0:j1], c_prev[a, j0:j1]
        d_a = dgates[a]
        di, df = d_a[j0:j1], d_a[hs + j0:hs + j1]
        dg, do = d_a[2 * hs + j0:2 * hs + j1], d_a[3 * hs + j0:3 * hs + j1]
        for j in range(m):
            tanh_c[j] = fast_tanh(c[j])
        for j in range(m):  # dh here: this step's h gradient, from above and from step t + 1
            dh[j] += gh[j]
        for j in range(m):
            dc_now[j] = gc[j] + dc[j] + dh[j] * o[j] * (one - tanh_c[j] * tanh_c[j])
        for j in range(m):
            do[j] = (dh[j] * tanh_c[j] + go[j]) * o[j] * (one - o[j])
        for j in range(m):
            di[j] = (dc_now[j] * g[j] + gi[j]) * i[j] * (one - i[j])
        for j in range(m):
            dg[j] = (dc_now[j] * i[j] + gg[j]) * (one - g[j] * g[j])
        for j in range(m):
            df[j] = (dc_now[j] * cp[j] + gf[j]) * f[j] * (one - f[j])
        for j in range(m):
            dc[j] = dc_now[j] * f[j]
        for db, d in ((db_i, di), (db_f, df), (db_g, dg), (db_o, do)):
            for j in range(m):
                db[j] += d[j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def forward_part(gemm, int64_api, counters, parts, a0, a1, j0, j1, w_part, xp, bias, h0, c0, out, hw, pre, reverse):
    # one thread's share of the whole forward recurrence: sequences a0:a1 and units j0:j1 of
    # every step; w_part: (4m, H), those units' rows of w_hh, gate by gate. Sharing units, the
    # parts wait for each other after each step (the next step's product needs all of h);
    # sharing sequences (every unit, parts = 1), never. The rows are sliced here, from the
    # whole C-contiguous arrays: views sliced before the call are typed non-contiguous, and
    # the cell's loops over them ran 3x slower
    length = xp.shape[0]
    n = a1 - a0
    hs = h0.shape[1]
    item = out.itemsize
    for k in range(length):
        t = length - 1 - k if reverse else k
        prev = t + 1 if reverse else t - 1
        if k == 0:
            blas_gemm(gemm, int64_api, CBLAS_NO_TRANS, CBLAS_TRANS, w_part.shape[0], n, hs, w_part, hs,
                      h0[a0:a1], h0.strides[0] // item, hw, n)
            cell_forward(hw, xp[t, a0:a1], bias, c0[a0:a1], out[t, a0:a1], pre, j0, j1)
        else:
            blas_gemm(gemm, int64_api, CBLAS_NO_TRANS, CBLAS_TRANS, w_part.shape[0], n, hs, w_part, hs,
                      out[prev, a0:a1, 0], out.strides[1] // item, hw, n)
            cell_forward(hw, xp[t, a0:a1], bias, out[prev, a0:a1, 1], out[t, a0:a1], pre, j0, j1)
        if not spin_barrier(counters, parts * (k + 1)):
            return


@numba.njit(cache=True, nogil=True, error_model="numpy")
def backward_part(gemm, int64_api, counters, parts, a0, a1, j0, j1, w_t, g_h, g_rest, out, c0, dgates, d_bias, dh,
                  dc, dh_t, tanh_c, dc_now, reverse):
    # one thread's share of the backward recurrence: sequences a0:a1, units j0:j1. Sharing
    # units, each step's product for these units' rows of dh reads every unit's gate
    # gradients: the parts wait before it; sharing sequences (parts = 1), never
    length = out.shape[0]
    n = a1 - a0
    hs = out.shape[3]
    m = j1 - j0
    for k in range(length - 1, -1, -1):
        t = length - 1 - k if reverse else k
        c_prev = c0[a0:a1] if k == 0 else out[t + 1 if reverse else t - 1, a0:a1, 1]
        cell_backward(g_h[t, a0:a1], g_rest[t, a0:a1], out[t, a0:a1], c_prev, dh[a0:a1], dc[a0:a1],
                      dgates[t, a0:a1], d_bias, tanh_c, dc_now, j0, j1)
        if not spin_barrier(counters, parts * (length - k)):
            return
        blas_gemm(gemm, int64_api, CBLAS_NO_TRANS, CBLAS_TRANS, m, n, 4 * hs, w_t[j0:j1], 4 * hs,
                  dgates[t, a0:a1], 4 * hs, dh_t, n)
        for a in range(n):
            for j in range(m):
                dh[a0 + a, j0 + j] = dh_t[j, a]
"""

#: a step below this much work (GEMM multiply-adds / MACS_PER_ELEMENT + the cell's elements)
#: runs on one thread: the parts' per-step wait costs about a microsecond
_TEAM_MIN_STEP_WORK = 1 << 16


def _order(length, reverse):
    return range(length - 1, -1, -1) if reverse else range(length)


def _team_gemm(n, hs, dtype):
    """The BLAS GEMM for a multi-thread recurrence, or None where one thread runs it."""
    work = n * 4 * hs * hs // threads.MACS_PER_ELEMENT + 16 * n * hs
    if hs < 2 or work < _TEAM_MIN_STEP_WORK or threads.workers() < 2:
        return None
    return threads.gemm_address(dtype)


#: with at least this many sequences per worker the threads split the batch, each running
#: the whole recurrence for its own sequences with no waits; fewer, and they split every step
#: by hidden units (waiting for each other after each one)
ROWS_PER_WORKER = 4


def _by_rows(n, count):
    return n >= ROWS_PER_WORKER * count


def _unit_range(index, count, hs):
    return index * hs // count, (index + 1) * hs // count


def _in_team(kernel, counters, part_args) -> bool:
    """Run ``kernel(*part_args(index, count))`` on every worker together (threads.team);
    False if it ran nowhere. A part that fails before its loop flags the others to stop."""
    def part(index, count):
        try:
            kernel(*part_args(index, count))
        except BaseException:
            counters[1] = 1
            raise

    return threads.team(part) > 0


def _sequence_np(xp, h0, c0, w_hh, bias=None, *, reverse):
    length, n, gates = xp.shape
    hs = gates // 4
    dtype = np.result_type(xp.dtype, w_hh.dtype)
    out = np.empty((length, n, 6, hs), dtype=dtype)
    kernels = numba_module(_SOURCE)
    h0, c0 = np.ascontiguousarray(h0, dtype=dtype), np.ascontiguousarray(c0, dtype=dtype)
    bias = np.zeros(gates, dtype=dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    gemm = _team_gemm(n, hs, dtype)
    if gemm is not None:
        counters = np.zeros(2, dtype=np.int64)
        w_gates = w_hh.reshape(4, hs, hs)
        w_all = np.ascontiguousarray(w_hh, dtype=dtype)

        def part_args(index, count):
            if _by_rows(n, count):  # its own sequences, every unit: no waits
                a0, a1 = _unit_range(index, count, n)
                return (*gemm, np.zeros(2, dtype=np.int64), 1, a0, a1, 0, hs, w_all, xp, bias, h0, c0, out,
                        np.empty((4 * hs, a1 - a0), dtype=dtype), np.empty(4 * hs, dtype=dtype), reverse)
            j0, j1 = _unit_range(index, count, hs)
            w_part = np.ascontiguousarray(w_gates[:, j0:j1].reshape(-1, hs), dtype=dtype)
            return (*gemm, counters, count, 0, n, j0, j1, w_part, xp, bias, h0, c0, out,
                    np.empty((4 * (j1 - j0), n), dtype=dtype), np.empty(4 * (j1 - j0), dtype=dtype), reverse)

        if _in_team(kernels.forward_part, counters, part_args):
            return out
    h, c = h0, c0
    # the product transposed, w_hh @ h.T: OpenBLAS runs this shape ~1.9x faster than h @ w_hh.T
    # (52 vs 100 us for 32 x 256 x 1024 on two threads); the cell reads its columns
    hw_t = np.empty((gates, n), dtype=dtype)
    pre = np.empty(gates, dtype=dtype)
    for t in _order(length, reverse):
        np.matmul(w_hh, h.T, out=hw_t)
        kernels.cell_forward(hw_t, xp[t], bias, c, out[t], pre, 0, hs)
        h, c = out[t, :, 0], out[t, :, 1]
    return out


def _grad_np(g_out, out, h0, c0, w_hh, *, reverse):
    length, n, _, hs = out.shape
    dtype = out.dtype
    g_out = np.ascontiguousarray(g_out, dtype=dtype)
    if g_out.ndim == 3:  # the gradient of h alone (_h_gradient_only): the other slots' are zeros,
        # one step's worth read at every step (a stride-0 view), not an (L, N, 5, H) array
        g_h, g_rest = g_out, np.broadcast_to(np.zeros((n, 5, hs), dtype=dtype), (length, n, 5, hs))
    else:
        g_h, g_rest = g_out[:, :, 0], g_out[:, :, 1:]
    c0 = np.ascontiguousarray(c0, dtype=dtype)
    kernels = numba_module(_SOURCE)
    # the gradients are written straight into the packed result (no concatenation)
    flat = np.empty(_grad_size(out.shape), dtype=dtype)
    dgates, dh, dc, d_w, d_b = _unpack(flat, out.shape)
    dh.fill(0)
    dc.fill(0)
    d_bias = np.zeros(4 * hs)  # float64: summed over L * N rows in order
    w_t = np.ascontiguousarray(w_hh.T, dtype=dtype)
    gemm = _team_gemm(n, hs, dtype)
    counters = np.zeros(2, dtype=np.int64)

    row_biases = []  # by rows: each part's own bias gradient, summed in order below

    def part_args(index, count):
        if _by_rows(n, count):
            a0, a1 = _unit_range(index, count, n)
            part_bias = np.zeros(4 * hs)
            row_biases.append((index, part_bias))
            return (*gemm, np.zeros(2, dtype=np.int64), 1, a0, a1, 0, hs, w_t, g_h, g_rest, out, c0, dgates,
                    part_bias, dh, dc, np.empty((hs, a1 - a0), dtype=dtype), np.empty(hs, dtype=dtype),
                    np.empty(hs, dtype=dtype), reverse)
        j0, j1 = _unit_range(index, count, hs)
        m = j1 - j0
        return (*gemm, counters, count, 0, n, j0, j1, w_t, g_h, g_rest, out, c0, dgates, d_bias, dh, dc,
                np.empty((m, n), dtype=dtype), np.empty(m, dtype=dtype), np.empty(m, dtype=dtype), reverse)

    steps = list(_order(length, reverse))
    if gemm is not None and _in_team(kernels.backward_part, counters, part_args):
        for _, part_bias in sorted(row_biases, key=lambda pair: pair[0]):  # in order: not timing-dependent
            d_bias += part_bias
    else:
        # the product transposed, w_hh.T @ dgates.T, as in the forward (~1.2x faster), then
        # copied back (32 KB: cheaper than the cell reading its columns)
        dh_t = np.empty((hs, n), dtype=dtype)
        tanh_c, dc_now = np.empty(hs, dtype=dtype), np.empty(hs, dtype=dtype)
        for k in range(length - 1, -1, -1):
            t = steps[k]
            c_prev = c0 if k == 0 else out[steps[k - 1], :, 1]
            kernels.cell_backward(g_h[t], g_rest[t], out[t], c_prev, dh, dc, dgates[t], d_bias, tanh_c, dc_now, 0, hs)
            np.matmul(w_t, dgates[t].T, out=dh_t)
            np.copyto(dh, dh_t.T)
    prev_h = np.empty((length, n, hs), dtype=dtype)  # the h each step read
    for k, t in enumerate(steps):
        prev_h[t] = h0 if k == 0 else out[steps[k - 1], :, 0]
    np.matmul(dgates.reshape(length * n, 4 * hs).T, prev_h.reshape(length * n, hs), out=d_w)
    d_b[...] = d_bias
    return flat


def _sequence_infer(xp, h0, c0, w_hh, bias=None, *, reverse):
    if len(xp.shape) != 3 or xp.shape[2] % 4:
        raise ShapeError(f"lstm_sequence: input projection must be (L, N, 4*H), got {tuple(xp.shape)}")
    length, n, gates = xp.shape
    hs = gates // 4
    expected = (("h0", h0, (n, hs)), ("c0", c0, (n, hs)), ("w_hh", w_hh, (gates, hs)), ("bias", bias, (gates,)))
    for name, t, want in expected:
        if t is not None and tuple(t.shape) != want:
            raise ShapeError(f"lstm_sequence: {name} has shape {tuple(t.shape)}, expected {want} for an "
                             f"input projection of shape {tuple(xp.shape)}")
    dtypes = {t.np_dtype for t in (xp, h0, c0, w_hh, bias) if t is not None}
    if len(dtypes) != 1 or xp.np_dtype.kind != "f":
        raise OpError(f"lstm_sequence: inputs must share one floating dtype, got {sorted(map(str, dtypes))}")
    return (length, n, 6, hs), xp.np_dtype


def _grad_parts(out_shape):
    """Shapes of the five gradients (xp, h0, c0, w_hh, bias) packed, in this order, in the
    flat result of lstm_sequence_grad."""
    length, n, _, hs = out_shape
    return [(length, n, 4 * hs), (n, hs), (n, hs), (4 * hs, hs), (4 * hs,)]


def _unpack(flat, out_shape):
    """Views of the five gradients in lstm_sequence_grad's flat result."""
    views, start = [], 0
    for shape in _grad_parts(out_shape):
        size = int(np.prod(shape))
        views.append(flat[start:start + size].reshape(shape))
        start += size
    return views


def _grad_size(out_shape):
    return sum(int(np.prod(shape)) for shape in _grad_parts(out_shape))


def _grad_infer(g_out, out, h0, c0, w_hh, *, reverse):
    length, n, _, hs = out.shape
    if tuple(g_out.shape) not in ((length, n, 6, hs), (length, n, hs)):
        raise ShapeError(f"lstm_sequence_grad: output gradient has shape {tuple(g_out.shape)}, expected "
                         f"{(length, n, 6, hs)} (every slot) or {(length, n, hs)} (h only)")
    return (_grad_size(out.shape),), out.np_dtype


def _h_gradient_only(node, graph):
    """The compiler's rewrite of a grad node (compiler/passes.simplify): when the output
    gradient is h's gradient written into zeros, as when the layer's only differentiated
    result is its output sequence, the node reads h's gradient alone. The zero-filled
    (L, N, 6, H) array is then never built (the lstm step: 12.6 MB, 3 ms) nor read."""
    g = node.inputs[0].node
    if (g is not None and g.op.name == "index_put" and len(g.inputs) == 1 and not g.attrs["accumulate"]
            and g.attrs["template"] == (slice(None), slice(None), 0)):
        node.inputs = [g.inputs[0]] + node.inputs[1:]


LSTM_SEQUENCE_GRAD = primitive("lstm_sequence_grad", _grad_np, infer=_grad_infer)
LSTM_SEQUENCE_GRAD.simplify = _h_gradient_only


def _sequence_vjp(g, out, needs, xp, h0, c0, w_hh, bias=None, *, reverse):
    if GradMode.enabled:
        raise OpError("lstm_sequence: the fused LSTM recurrence has no second derivative (create_graph=True "
                      "through an LSTM layer); differentiate through nn.LSTMCell steps instead")
    flat = apply(LSTM_SEQUENCE_GRAD, (g, out, h0, c0, w_hh), {"reverse": reverse})
    return [grad if need else None for need, grad in zip(needs, _unpack(flat, out.shape))]


LSTM_SEQUENCE = primitive("lstm_sequence", _sequence_np, vjp=_sequence_vjp, infer=_sequence_infer,
                          saves=(1, 2, 3), uses_out=True)


def lstm_sequence(xp, h0, c0, w_hh, bias=None, reverse=False):
    """The LSTM recurrence over (L, N, 4H) input projections (plus ``bias``, (4H,), if given)
    -> (L, N, 6, H) packed h, c, i, f, g, o per step (see the module docstring)."""
    inputs = (xp, h0, c0, w_hh) + (() if bias is None else (bias,))
    _sequence_infer(*(Meta(t.shape, t.data.dtype) for t in inputs), reverse=reverse)  # clear errors first
    return apply(LSTM_SEQUENCE, inputs, {"reverse": bool(reverse)})


# ---- ONNX: the recurrence unrolled into basic operators (its packed output has no ONNX LSTM
# equivalent, which returns only the last cell state) ---------------------------------------

def _onnx_sequence(ctx, n):
    length, _, gates = n.inputs[0].shape
    hs = gates // 4
    xp, h, c, w = (ctx.input(n, k) for k in range(4))
    bias = ctx.input(n, 4) if len(n.inputs) > 4 else None
    w_t = ctx.emit("Transpose", [w], perm=[1, 0])
    split = ctx.ints([hs] * 4, "gate_sizes")
    steps = {}
    for t in _order(length, n.attrs["reverse"]):
        x_t = ctx.emit("Gather", [xp, ctx.ints([t], "step")], axis=0)  # (1, N, 4H)
        x_t = ctx.emit("Squeeze", [x_t, ctx.ints([0], "axis")])
        pre = ctx.emit("Add", [x_t, ctx.emit("MatMul", [h, w_t])])
        if bias is not None:
            pre = ctx.emit("Add", [pre, bias])
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
