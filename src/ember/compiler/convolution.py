"""Convolution lowerings: whole-array passes around a convolution folded into its kernels.

``lower_conv_relu``: a convolution and the ReLU that only it feeds run as one kernel. The ReLU
would be another pass over the whole output, far larger than the caches (the cnn benchmark's
first one is 6.4 MB, read and written again: ~0.3 ms on two cores); the convolution writes
its output in chunks of a few images and the ReLU is applied to each chunk right after, in
cache (``ops/nn.py: _conv2d_np``). The ReLU's gradient reads the ReLU's output, which this
kernel returns; the convolution's own output is never materialised. A 2x2 max pool of the
ReLU's output joins the kernel the same way, each chunk pooled while in cache (its winners
recorded for pool_scatter as pool_select records them): 1.6% of the cnn step in an A/B.

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
from ..ops.nn import PER_IMAGE_MAX_ROWS, _conv2d_np
from ..ops.pooling import _tiles_2x2, _winner_index, remember_winners, select_2x2
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


def lower_conv_relu(graph):
    """Replace each conv2d whose only use is a relu, and that relu, by one kernel node; a 2x2
    max pool of the relu's output (pool_select(y, y)) joins it, pooling each chunk in cache."""
    uses = _uses(graph)  # a root counts as two uses
    convs = {n.output.id: n for n in graph.nodes if getattr(n.op, "name", None) == "conv2d"}
    pools = {}
    for n in graph.nodes:
        if getattr(n.op, "name", None) == "pool_select" and n.inputs[0] is n.inputs[1] \
                and _tiles_2x2(n.inputs[0], *_geometry(n)):
            pools.setdefault(n.inputs[0].id, n)
    fused, dropped = {}, set()
    for node in graph.nodes:
        if getattr(node.op, "name", None) != "relu" or hasattr(node, "outputs"):
            continue
        conv = convs.get(node.inputs[0].id)
        if conv is None or uses.get(conv.output.id) != 1 or conv.output.dtype != node.output.dtype:
            continue
        pool = pools.get(node.output.id)
        run = _conv_relu_pool(conv.attrs, None if pool is None else _geometry(pool))
        outputs = [node.output] + ([] if pool is None else [pool.output])
        fused[node.output.id] = KernelNode("conv2d + relu" + ("" if pool is None else " + max_pool"), conv.inputs,
                                           outputs, run)
        dropped.add(conv.output.id)
        if pool is not None:
            dropped.add(pool.output.id)
    if fused:
        graph.nodes = [fused.get(n.output.id, n) for n in graph.nodes
                       if hasattr(n, "outputs") or n.output.id not in dropped]
    return graph


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

    def run(gp, pooled_input, x):
        idx = _winner_index(pooled_input, *geometry)  # the forward's, cached
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

    run.source = source
    return run


def lower_pooled_weight_grad(graph):
    """Replace pool_scatter(gp, x) read only by a small "same" convolution's weight gradient
    (and a bias gradient's sum over N, H, W) by one kernel node from gp (module docstring)."""
    uses = _uses(graph)
    readers = {}
    for node in graph.nodes:
        for v in node.inputs:
            readers.setdefault(v.id, []).append(node)
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

