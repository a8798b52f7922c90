"""Convolution lowerings: whole-array passes around a convolution folded into its kernels.

``lower_conv_relu``: a convolution and the ReLU that only it feeds run as one kernel. The ReLU
would be another pass over the whole output, far larger than the caches (the cnn benchmark's
first one is 6.4 MB, read and written again: ~0.3 ms on two cores); the convolution writes
its output in chunks of a few images and the ReLU is applied to each chunk right after, in
cache (``ops/nn.py: _conv2d_np``). The ReLU's gradient reads the ReLU's output, which this
kernel returns; the convolution's own output is never materialised. A 2x2 max pool of the
ReLU's output joins the kernel the same way, each chunk pooled while in cache (its winners
recorded for pool_scatter as pool_select records them): 1.6% of the cnn step in an A/B.
When the ReLU's output is read only for the pool's winners (by pool_scatter, or by the
pooled weight gradient below), that output is never written: each chunk's GEMM result is
pooled where it lies, channels-first in cache, and the kernel returns the winners, which
those readers take instead (``_conv_relu_pool_winners``; the cnn step 11.65 -> 9.73 ms in an
interleaved A/B).

``lower_conv_backward``: a stride-1 "same" convolution's input, weight and bias gradients as
one kernel over chunks of images, each chunk's output gradient made channels-first once and
read by both GEMMs; under a 2x2 pool it is scattered per chunk from the pooled gradient and
the winners, so the full-size gradient is never written (11.1 -> 10.3 ms).

``lower_pooled_weight_grad``: a first layer's weight and bias gradients straight from the
pooled gradient. Under a 2x2 max pool the layer's output gradient is ``pool_scatter(gp, x)``:
a full-size array (6.4 MB in the cnn) that is three quarters zeros, written once and read by
the weight gradient's small per-image products and by the bias gradient's sum. When nothing
else reads it (the first layer has no input gradient) and the convolution is a stride-1
"same" one with few rows (C * kh * kw <= 64, the per-image products of ops/nn.py), one numba
kernel scatters each (image, channel) plane into an L1-sized buffer and takes the kernel
offsets' dot products with the shifted input there. The bias gradient is the sum of ``gp``
itself (the scatter moves every value once). In the cnn step the scatter, the weight gradient
and the bias sum took 0.76, 0.65 and 0.12 ms.
"""

from __future__ import annotations

import numpy as np

from ..ops import threads
from ..ops.helpers import numba_module
from ..ops.nn import _SOURCE as _NN_SOURCE
from ..ops.nn import (
    PER_IMAGE_MAX_ROWS,
    _channels_first,
    _chunk_masks,
    _columns_maker,
    _conv2d_np,
    _conv_t_geometry,
    _grouped,
    same_size_chunk,
)
from ..ops.pooling import _tiles_2x2, _winner_index, remember_winners, scatter_winners_2x2, select_2x2
from .ir import KernelNode
from .kernels import load_kernel_module
from .passes import _uses

_TEMPLATE = """# ember pooled-gradient convolution kernel, {kh}x{kw} (format 3)
import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={{"reassoc"}})
def pooled_weight_grad(gp, idx, x, ph, pw, plane, padded, d_w, d_b):
    # gp, idx: (N, O, Ho, Wo), the pooled gradient and each window's winner (0-3, row-major in
    # the 2x2 window); x: (N, C, 2Ho, 2Wo), the convolution's input; d_w: (O, C, kh, kw) and
    # d_b: (O,), float64, added to. Scratch: plane (H*W,), one output channel's gradient;
    # padded (C, kw, H*W + 2*base), each input channel between zeros, with the column zeroed
    # that kernel column q would read across a row's end: kernel offset (p, q) is then the dot
    # product of the plane with a view shifted by (p - ph) * W + q - pw, and all the offsets'
    # sums run in one loop over the plane (reads only, so LLVM vectorizes it)
    n, o, ho, wo = gp.shape
    c = x.shape[1]
    h, w = 2 * ho, 2 * wo
    hw = h * w
    base = ph * w + pw
    zero = gp.dtype.type(0)
    for a in range(n):
        for ch in range(c):
            flat = x[a, ch].reshape(hw)
            for q in range({kw}):
                row = padded[ch, q]
                row[:] = 0
                row[base:base + hw] = flat
                shift = q - pw
                for y in range(h):
                    if shift > 0:  # reads past a row's end would land on the next row's first columns
                        row[base + y * w:base + y * w + shift] = 0
                    elif shift < 0:
                        row[base + (y + 1) * w + shift:base + (y + 1) * w] = 0
        for oc in range(o):
            g_a, i_a = gp[a, oc], idx[a, oc]
            total = zero
            for i in range(ho):
                g_row, i_row = g_a[i], i_a[i]
                for j in range(wo):
                    total += g_row[j]
                # both rows of the windows in one loop over their positions, as pooling's scatter_2x2
                top, bottom = plane[2 * i * w:(2 * i + 1) * w], plane[(2 * i + 1) * w:(2 * i + 2) * w]
                for jj in range(w):
                    j = jj >> 1
                    v, k, odd = g_row[j], i_row[j], jj & 1
                    top[jj] = v if k == odd else zero
                    bottom[jj] = v if k == 2 + odd else zero
            d_b[oc] += total
            for ch in range(c):
{views}
{inits}
                for f in range(hw):
                    g = plane[f]
{updates}
{stores}
"""


def _kernel_source(kh, kw):
    """The kernel for a kh x kw convolution: one accumulator per kernel offset."""
    taps = [(p, q) for p in range(kh) for q in range(kw)]
    pad = " " * 16
    views = "\n".join(f"{pad}x{p}_{q} = padded[ch, {q}, base + ({p} - ph) * w + {q} - pw:][:hw]" for p, q in taps)
    inits = "\n".join(f"{pad}s{p}_{q} = zero" for p, q in taps)
    updates = "\n".join(f"{pad}    s{p}_{q} += g * x{p}_{q}[f]" for p, q in taps)
    stores = "\n".join(f"{pad}d_w[oc, ch, {p}, {q}] += s{p}_{q}" for p, q in taps)
    return _TEMPLATE.format(kh=kh, kw=kw, views=views, inits=inits, updates=updates, stores=stores)


_POOL_SOURCE = """# ember bias + ReLU + 2x2 max pool of a channels-first convolution chunk (format 2)
import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _finite(values):
    # whether no value is NaN or infinite (x * 0 is NaN for those, and the sum keeps it);
    # reassociating the sum lets LLVM vectorize it and cannot lose a NaN
    total = values.dtype.type(0)
    for k in range(values.size):
        total += values[k] * values.dtype.type(0)
    return total == total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def relu_pool_2x2(res, bias, best, idx):
    # res: (O, B, H, W), a chunk's GEMM result before its bias (the batch-column layout);
    # bias: (O,); best, idx: (B, O, H/2, W/2), NCHW. The winners are ops/pooling.py's
    # select_2x2's after np.maximum(y, 0): the first maximum in the order (0, 0), (0, 1),
    # (1, 0), (1, 1), or the last NaN. Taken as a tree, max of the row pairs then of the two:
    # the same winner, and a shorter chain. A channel whose values are all finite skips the
    # NaN tests: 1.5x faster (the cnn's conv1 chunks)
    o, b, h, w = res.shape
    zero = res.dtype.type(0)
    for ch in range(o):
        bc = bias[ch]
        finite = bc == bc and _finite(res[ch].reshape(b * h * w))
        for a in range(b):
            for i in range(h // 2):
                r0, r1 = res[ch, a, 2 * i], res[ch, a, 2 * i + 1]
                b_row, i_row = best[a, ch, i], idx[a, ch, i]
                if finite:
                    for j in range(w // 2):
                        x0 = max(r0[2 * j] + bc, zero)
                        x1 = max(r0[2 * j + 1] + bc, zero)
                        x2 = max(r1[2 * j] + bc, zero)
                        x3 = max(r1[2 * j + 1] + bc, zero)
                        ta, tb = x1 > x0, x3 > x2
                        ma, mb = (x1 if ta else x0), (x3 if tb else x2)
                        tc = mb > ma
                        b_row[j] = mb if tc else ma
                        i_row[j] = (np.int16(2) + tb) if tc else np.int16(ta)
                    continue
                for j in range(w // 2):
                    x0, x1 = r0[2 * j] + bc, r0[2 * j + 1] + bc
                    x2, x3 = r1[2 * j] + bc, r1[2 * j + 1] + bc
                    x0 = zero if x0 < zero else x0  # NaN stays, as in np.maximum
                    x1 = zero if x1 < zero else x1
                    x2 = zero if x2 < zero else x2
                    x3 = zero if x3 < zero else x3
                    ta, tb = (x1 > x0) | (x1 != x1), (x3 > x2) | (x3 != x3)
                    ma, mb = (x1 if ta else x0), (x3 if tb else x2)
                    tc = (mb > ma) | (mb != mb)
                    b_row[j] = mb if tc else ma
                    i_row[j] = (np.int16(2) + tb) if tc else np.int16(ta)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def scatter_2x2_channels_first(gp, idx, out, sums):
    # pool_scatter of a chunk into the batch-column layout: gp, idx (B, O, Ho, Wo), NCHW;
    # out (O, B, 2Ho, 2Wo), each gp at its window's winner, zeros elsewhere (both rows of the
    # windows in one loop, as ops/pooling.py's scatter_2x2); sums (O,) float64: adds gp's sum
    # per channel, the bias gradient
    b, o, ho, wo = gp.shape
    zero = out.dtype.type(0)
    for ch in range(o):
        total = 0.0
        for a in range(b):
            for i in range(ho):
                g_row, i_row = gp[a, ch, i], idx[a, ch, i]
                top, bottom = out[ch, a, 2 * i], out[ch, a, 2 * i + 1]
                for j in range(wo):
                    total += g_row[j]
                for jj in range(2 * wo):
                    j = jj >> 1
                    v, k, odd = g_row[j], i_row[j], jj & 1
                    top[jj] = v if k == odd else zero
                    bottom[jj] = v if k == 2 + odd else zero
        sums[ch] += total
"""

#: images per chunk of the pooled kernel: its GEMM result, which the pool reads back, in about
#: this many bytes. Standalone on two cores the cnn's conv2 (64 channels out, 14x14) ran 8
#: images per chunk 1.1x as fast as 4, and conv1 (32 channels, 28x28) 4 images 1.1x as fast as 8
POOLED_CHUNK_BYTES = 1 << 19


def lower_conv_relu(graph):
    """Replace each conv2d whose only use is a relu, and that relu, by one kernel node; a 2x2
    max pool of the relu's output (pool_select(y, y)) joins it, pooling each chunk in cache.
    When the relu's output is read only for the pool's winners (by pool_scatter, or by the
    pooled weight gradient's kernel), it is never written: the kernel returns the winners
    instead and those readers take them (``_winner_readers``)."""
    uses = _uses(graph)  # a root counts as two uses
    readers = _readers(graph)
    convs = {n.output.id: n for n in graph.nodes if getattr(n.op, "name", None) == "conv2d"}
    pools = {}
    for n in graph.nodes:
        if getattr(n.op, "name", None) == "pool_select" and n.inputs[0] is n.inputs[1] \
                and _tiles_2x2(n.inputs[0], *_geometry(n)):
            pools.setdefault(n.inputs[0].id, n)
    fused, dropped, rewired = {}, set(), {}
    for node in graph.nodes:
        if getattr(node.op, "name", None) != "relu" or hasattr(node, "outputs"):
            continue
        conv = convs.get(node.inputs[0].id)
        if conv is None or uses.get(conv.output.id) != 1 or conv.output.dtype != node.output.dtype:
            continue
        y = node.output
        pool = pools.get(y.id)
        others = None if pool is None else _winner_readers(y, pool, readers.get(y.id, []), uses)
        if others is not None:
            winners = graph.new_value(pool.output.shape, np.int16, "node")
            kernel = KernelNode("conv2d + relu + max_pool (winners)", conv.inputs, [winners, pool.output],
                                _conv_relu_pool_winners(conv.attrs, tuple(y.shape[2:])))
            winners.node = kernel
            fused[y.id] = kernel
            for reader in others:
                rewired[id(reader)] = _reading_winners(reader, winners)
        else:
            run = _conv_relu_pool(conv.attrs, None if pool is None else _geometry(pool))
            outputs = [y] + ([] if pool is None else [pool.output])
            fused[y.id] = KernelNode("conv2d + relu" + ("" if pool is None else " + max_pool"), conv.inputs,
                                     outputs, run)
        dropped.add(conv.output.id)
        if pool is not None:
            dropped.add(pool.output.id)
    if fused:
        graph.nodes = [rewired.get(id(n), fused.get(n.output.id, n)) for n in graph.nodes
                       if hasattr(n, "outputs") or n.output.id not in dropped]
    return graph


def _readers(graph):
    found = {}
    for node in graph.nodes:
        for v in node.inputs:
            found.setdefault(v.id, []).append(node)
    return found


def _winner_readers(y, pool, nodes, uses):
    """The nodes other than ``pool`` that read ``y``, if each reads it only for the winners of
    ``pool`` (pool_scatter(g, y) of the same window, or a pooled weight gradient's kernel) and
    ``y`` is no root; else None."""
    if uses.get(y.id, 0) != len(nodes):  # nodes: one entry per input read (a root counts two more)
        return None
    others = list({id(n): n for n in nodes if n is not pool}.values())
    for n in others:
        if n.inputs.count(y) != 1 or n.inputs[1] is not y:
            return None
        if hasattr(n, "outputs"):
            if getattr(n.kernel, "from_winners", None) is None:
                return None
        elif (getattr(n.op, "name", None) != "pool_scatter" or _geometry(n) != _geometry(pool)
              or n.inputs[0].dtype != y.dtype):
            return None
    return others


def _reading_winners(node, winners):
    """``node`` (pool_scatter(g, y) or a pooled weight gradient's kernel) reading the winners."""
    if hasattr(node, "outputs"):
        inputs = list(node.inputs)
        inputs[1] = winners
        return KernelNode(node.label, inputs, node.outputs, node.kernel.from_winners)
    return KernelNode("pool_scatter (winners)", [node.inputs[0], winners], [node.output],
                      lambda g, idx: (scatter_winners_2x2(g, idx),))


def _geometry(pool_node):
    return tuple(pool_node.attrs[k] for k in ("kernel", "stride", "dilation", "pads", "out_size"))


def _conv_relu_pool(attrs, geometry):
    """The kernel: conv2d + relu, and with ``geometry`` the 2x2 max pool of each chunk too
    (its winners recorded for pool_scatter, as pool_select records them)."""
    if geometry is None:
        return lambda *arrays: (_conv2d_np(*arrays, **attrs, relu=True),)

    def run(*arrays):
        n, o = arrays[0].shape[0], arrays[1].shape[0]
        shape = (n, o) + tuple(geometry[4])
        pooled, idx = np.empty(shape, arrays[0].dtype), np.zeros(shape, np.int16)

        def pool(out, a, b):
            select_2x2(out[a:b], pooled[a:b], idx[a:b])

        out = _conv2d_np(*arrays, **attrs, relu=True, after_chunk=pool)
        remember_winners(out, geometry, idx)
        return out, pooled

    return run


def _conv_relu_pool_winners(attrs, out_size):
    """The kernel: conv2d + bias + relu + 2x2 max pool -> (winners, pooled), (N, O, Ho/2, Wo/2)
    each. Every chunk's GEMM result stays channels-first, (O, B, Ho, Wo), in cache: one numba
    loop adds the bias, takes the ReLU and pools it into the NCHW outputs, so the full-size
    output is neither transposed nor written (in the cnn: 1.32 -> 0.46 ms for conv1, 2.3 ->
    1.6 ms for conv2, standalone on two cores)."""
    stride, padding, dilation, groups = (attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    relu_pool = load_kernel_module(_POOL_SOURCE).relu_pool_2x2
    ho, wo = out_size

    def run(x, w, bias=None):
        n = x.shape[0]
        o, cg, kh, kw = w.shape
        dtype = np.result_type(x.dtype, w.dtype)
        shape = (n, o, ho // 2, wo // 2)
        pooled, idx = np.empty(shape, dtype), np.empty(shape, np.int16)
        w_mat = w.reshape(groups, o // groups, cg * kh * kw).astype(dtype, copy=False)
        b = np.zeros(o, dtype) if bias is None else bias.astype(dtype, copy=False)
        columns = _columns_maker(x, (kh, kw), stride, padding, dilation, (ho, wo), w.dtype, False)
        rows = cg * groups * kh * kw
        size = max(1, POOLED_CHUNK_BYTES // (o * ho * wo * x.itemsize))

        def part(lo, hi):
            for a, e in threads.chunks(lo, hi, size):
                res = np.matmul(w_mat, _grouped(columns(a, e), groups))  # (groups, O/groups, B*Ho*Wo)
                relu_pool(res.reshape(o, e - a, ho, wo), b, pooled[a:e], idx[a:e])

        threads.over_batch(n, part, n * o * rows * ho * wo // groups // threads.MACS_PER_ELEMENT)
        return idx, pooled

    return run


def _small_same_weight_grad(node, scattered):
    """Whether ``node`` is conv2d_weight_grad(scattered, x) of a stride-1 "same" convolution
    with at most PER_IMAGE_MAX_ROWS rows (C * kh * kw), one group, no dilation."""
    if getattr(node.op, "name", None) != "conv2d_weight_grad" or node.inputs[0] is not scattered:
        return False
    a, x = node.attrs, node.inputs[1]
    kh, kw = a["kernel"]
    return (a["stride"] == (1, 1) and a["dilation"] == (1, 1) and a["groups"] == 1
            and tuple(a["padding"]) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 == 1 and kw % 2 == 1
            and len(x.shape) == 4 and x.shape[0] == scattered.shape[0] and x.shape[2:] == scattered.shape[2:]
            and x.shape[1] * kh * kw <= PER_IMAGE_MAX_ROWS and x.dtype == scattered.dtype)


def _is_bias_sum(node, scattered):
    return (getattr(node.op, "name", None) == "sum" and node.inputs[0] is scattered
            and tuple(sorted(node.attrs["dims"])) == (0, 2, 3))


def _make_pooled_weight_grad(scatter, weight_grad, bias_sum):
    kh, kw = weight_grad.attrs["kernel"]
    ph, pw = weight_grad.attrs["padding"]
    source = _kernel_source(kh, kw)
    module = load_kernel_module(source)
    geometry = _geometry(scatter)
    w_shape, dtype = weight_grad.output.shape, weight_grad.output.dtype
    b_shape = None if bias_sum is None else bias_sum.output.shape

    def from_winners(gp, idx, x):
        gp, x = np.ascontiguousarray(gp), np.ascontiguousarray(x)
        n, o = gp.shape[:2]
        c, hw = x.shape[1], x.shape[2] * x.shape[3]

        def part(lo, hi):
            d_w, d_b = np.zeros(w_shape), np.zeros(o)
            padded = np.empty((c, kw, hw + 2 * (ph * x.shape[3] + pw)), gp.dtype)
            module.pooled_weight_grad(gp[lo:hi], idx[lo:hi], x[lo:hi], ph, pw, np.empty(hw, gp.dtype), padded,
                                      d_w, d_b)
            return d_w, d_b

        parts = threads.over_batch(n, part, gp.size * 4 * (1 + c * kh * kw))
        d_w, d_b = parts[0]
        for more_w, more_b in parts[1:]:  # in range order, so the sum does not depend on timing
            d_w += more_w
            d_b += more_b
        outs = (d_w.astype(dtype),)
        return outs if b_shape is None else outs + (d_b.astype(dtype).reshape(b_shape),)

    def run(gp, pooled_input, x):
        return from_winners(gp, _winner_index(pooled_input, *geometry), x)  # the forward's, cached

    run.source = from_winners.source = source
    run.from_winners = from_winners  # lower_conv_relu hands it the winners when the forward no longer writes y
    return run


def lower_pooled_weight_grad(graph):
    """Replace pool_scatter(gp, x) read only by a small "same" convolution's weight gradient
    (and a bias gradient's sum over N, H, W) by one kernel node from gp (module docstring)."""
    uses = _uses(graph)
    readers = _readers(graph)
    for scatter in list(graph.nodes):
        if getattr(scatter.op, "name", None) != "pool_scatter" or hasattr(scatter, "outputs"):
            continue
        gp, pooled_input = scatter.inputs
        out = scatter.output
        if not _tiles_2x2(out, *_geometry(scatter)) or gp.dtype != out.dtype:  # reads the Value's shape, dtype
            continue
        nodes = readers.get(out.id, [])
        if len(nodes) != uses.get(out.id) or len(nodes) > 2:  # a root, or read twice by one node
            continue
        weight_grads = [n for n in nodes if _small_same_weight_grad(n, out)]
        sums = [n for n in nodes if _is_bias_sum(n, out)]
        if len(weight_grads) != 1 or len(weight_grads) + len(sums) != len(nodes):
            continue
        weight_grad, bias_sum = weight_grads[0], (sums[0] if sums else None)
        first = min(graph.nodes.index(n) for n in nodes)
        x = weight_grad.inputs[1]
        if x.node is not None and graph.nodes.index(x.node) > first:
            continue
        outputs = [weight_grad.output] + ([] if bias_sum is None else [bias_sum.output])
        label = "pool_scatter + conv2d_weight_grad" + ("" if bias_sum is None else " + bias sum")
        kernel = KernelNode(label, [gp, pooled_input, x], outputs,
                            _make_pooled_weight_grad(scatter, weight_grad, bias_sum))
        graph.nodes[first] = kernel
        graph.nodes = [n for n in graph.nodes if n is not scatter and (n is kernel or n not in nodes)]
    return graph


def lower_conv_backward(graph):
    """A stride-1 "same" convolution's input and weight gradients (and its bias gradient's sum)
    as one kernel over chunks of images: each chunk's output gradient is made channels-first
    once, in cache, and read by both GEMMs, instead of two transposes of the full gradient;
    when that gradient is a 2x2 pool's scatter read by nothing else, the kernel scatters each
    chunk itself from the pooled gradient and the winners, so the full-size gradient (three
    quarters zeros) is never written."""
    uses = _uses(graph)
    readers = _readers(graph)
    producers = {v.id: n for n in graph.nodes for v in getattr(n, "outputs", [n.output])}
    for grad_x in list(graph.nodes):
        if getattr(grad_x.op, "name", None) != "conv_transpose2d" or hasattr(grad_x, "outputs"):
            continue
        g, w = grad_x.inputs
        nodes = list({id(n): n for n in readers.get(g.id, [])}.values())
        if uses.get(g.id) != len(readers.get(g.id, [])) or len(nodes) not in (2, 3) or g is w:
            continue
        weight_grads = [n for n in nodes if getattr(n.op, "name", None) == "conv2d_weight_grad"
                        and not hasattr(n, "outputs") and n.inputs[0] is g and n.inputs[1] is not g]
        sums = [n for n in nodes if not hasattr(n, "outputs") and _is_bias_sum(n, g)]
        if len(weight_grads) != 1 or len(sums) + 2 != len(nodes) or not _same_backward(grad_x, weight_grads[0]):
            continue
        weight_grad, bias_sum = weight_grads[0], (sums[0] if sums else None)
        x = weight_grad.inputs[1]
        scatter = producers.get(g.id)
        if getattr(scatter, "label", None) != "pool_scatter (winners)":
            scatter = None
        inputs = (list(scatter.inputs) if scatter is not None else [g]) + [w, x]
        first = min(graph.nodes.index(n) for n in nodes)
        if x.kind == "node" and x.node in graph.nodes and graph.nodes.index(x.node) > first:
            continue
        outputs = [grad_x.output, weight_grad.output] + ([] if bias_sum is None else [bias_sum.output])
        label = ("pool_scatter + " if scatter is not None else "") + "conv_transpose2d + conv2d_weight_grad" + \
            ("" if bias_sum is None else " + bias sum")
        kernel = KernelNode(label, inputs, outputs, _make_conv_backward(grad_x.attrs, scatter is not None,
                                                                        bias_sum is not None,
                                                                        None if bias_sum is None else
                                                                        bias_sum.output.shape))
        graph.nodes[first] = kernel
        graph.nodes = [n for n in graph.nodes if n is kernel or (n not in nodes and n is not scatter)]
        readers = _readers(graph)
        uses = _uses(graph)
    return graph


def _same_backward(grad_x, weight_grad):
    """Whether conv_transpose2d(g, w) and conv2d_weight_grad(g, x) are the input and weight
    gradients of one stride-1 convolution whose output is its input's size, float, one dtype."""
    a, b = grad_x.attrs, weight_grad.attrs
    g, w = grad_x.inputs
    x = weight_grad.inputs[1]
    if len(g.shape) != 4 or len(w.shape) != 4 or len(x.shape) != 4 or not (g.dtype == w.dtype == x.dtype) \
            or g.dtype not in (np.float32, np.float64):
        return False
    if a["stride"] != (1, 1) or b["stride"] != (1, 1) or a["padding"] != b["padding"] or a["groups"] != b["groups"] \
            or a["dilation"] != b["dilation"] or tuple(b["kernel"]) != tuple(w.shape[2:]):
        return False
    h, wd = g.shape[2:]
    return (_conv_t_geometry(h, wd, w.shape[2:], (1, 1), a["padding"], a["output_padding"], a["dilation"]) == (h, wd)
            and tuple(x.shape[2:]) == (h, wd) and tuple(grad_x.output.shape) == tuple(x.shape)
            and x.shape[0] == g.shape[0] and w.shape[0] == g.shape[1])


def _make_conv_backward(attrs, scattered, with_bias, bias_shape):
    """The kernel: (g or gp, idx), w, x -> input gradient, weight gradient[, bias gradient]; per
    chunk of images, the input gradient by ops/nn.py's same_size_chunk (_conv_t_same_size's
    chunk), the weight gradient's product as _weight_grad_np's, on one channels-first copy of
    the chunk's g."""
    padding, dilation, groups = attrs["padding"], attrs["dilation"], attrs["groups"]
    add_shifted_planes = numba_module(_NN_SOURCE).add_shifted_planes
    scatter = load_kernel_module(_POOL_SOURCE).scatter_2x2_channels_first if scattered else None

    def run(*arrays):
        if scattered:
            gp, idx, w, x = arrays
            gp = np.ascontiguousarray(gp)
            n, o, h, wd = gp.shape[0], gp.shape[1], 2 * gp.shape[2], 2 * gp.shape[3]
        else:
            g, w, x = arrays
            n, o, h, wd = g.shape
        _, cg, kh, kw = w.shape  # conv_transpose2d's weight: (C_in of g = O, C_out/groups, kh, kw)
        c = cg * groups
        rows = c * kh * kw
        dtype = x.dtype
        w_t = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
        keep_for = _chunk_masks(h, wd, (kh, kw), padding, dilation)
        columns = _columns_maker(x, (kh, kw), (1, 1), padding, dilation, (h, wd), dtype, False)
        grad_x = np.empty((n, c, h, wd), dtype)

        def part(lo, hi):
            total_t = np.zeros((groups, rows // groups, o // groups), dtype)
            sums = np.zeros(o)
            for a, b in threads.chunks(lo, hi, threads.chunk_size(rows * h * wd * x.itemsize)):
                if scattered:
                    g_cf = np.empty((o, b - a, h, wd), dtype)
                    scatter(gp[a:b], idx[a:b], g_cf, sums)
                    g_cf = g_cf.reshape(o, (b - a) * h * wd)
                else:
                    g_cf = _channels_first(g[a:b])
                    if with_bias:
                        sums += g_cf.sum(1, dtype=np.float64)
                g_groups = _grouped(g_cf, groups)
                same_size_chunk(w_t, g_groups, grad_x[a:b], (kh, kw), keep_for(b - a), padding, dilation,
                                add_shifted_planes)
                total_t += np.matmul(_grouped(columns(a, b), groups), g_groups.transpose(0, 2, 1))
            return total_t, sums

        partials = threads.over_batch(n, part, 2 * n * o * rows * h * wd // groups // threads.MACS_PER_ELEMENT)
        total_t, sums = partials[0]
        for more_t, more_s in partials[1:]:  # in range order, so the sum does not depend on thread timing
            total_t += more_t
            sums += more_s
        grad_w = np.ascontiguousarray(total_t.transpose(0, 2, 1)).reshape(o, cg, kh, kw)
        if not with_bias:
            return grad_x, grad_w
        return grad_x, grad_w, sums.astype(dtype).reshape(bias_shape)

    return run
