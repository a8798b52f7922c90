"""Row kernels: softmax and log-softmax over the last axis, and sums over trailing or
leading axes, as numba kernels.

NumPy computes a softmax in five passes over the whole array (max, subtract, exp, sum,
divide), each reading and writing it from memory. Here each row is done while it is in L1:
its max, then e^(x - max) with the vectorizable exp of fastmath.py and their sum, then the
division (for log-softmax: x - max - log(sum)). Large arrays split their rows over ember's
threads, as the flat fused kernels do. Attention's (B, H, T, T) softmax in the gpt workload
took 1.5 ms through NumPy.

Only float32 (where the vectorizable exp exists) over the last axis is lowered; a softmax
over another axis, or in float64, stays the primitive's NumPy forward.

Sums: NumPy reduces a (2048, 128) array over its last axis in 82 us, pairwise by blocks of
eight; a vectorized loop per row takes 14 us (layer norm's means and variances in gpt). Over
leading axes (bias gradients) it adds rows one after another as NumPy does, 2x faster. Over
every axis but one (a convolution's bias gradient, (N, C, H, W) summed to (C,)) each image's
channel row is summed in one vectorized loop: NumPy took 0.30 and 0.20 ms for the cnn's two. A
sum whose input is not C-contiguous at run time, or over other axes, is NumPy's.
"""

from __future__ import annotations

import numpy as np

from ..ops import threads
from .ir import KernelNode
from .kernels import THREADED_MIN_ELEMENTS, load_kernel_module

_SOURCE = '''# ember row-wise softmax and sum kernels (format 2)
import math

import numba
import numpy as np

from ember.compiler.fastmath import fast_exp


# reassociation lets LLVM vectorize the max and the sum (in another order than NumPy's
# pairwise sum: the results differ in the last bits); nnan only lets it vectorize the max,
# and a NaN in a row still makes the whole row NaN through the sum
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nnan", "nsz"})
def _row_max(x, r):
    m = x[r, 0]
    for j in range(1, x.shape[1]):
        m = max(m, x[r, j])
    return m


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _row_shift(x, r):
    # (outside the nnan function: there LLVM folds the isfinite test away) as NumPy's
    # softmax, a non-finite max shifts by 0: an all -inf row gives NaN, an inf gives NaN there
    m = _row_max(x, r)
    return m if math.isfinite(m) else x.dtype.type(0)


# softmax_rows and log_softmax_rows each keep their own loops: sharing the exp-and-sum loop
# as a helper called per row made both ~40% slower
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def softmax_rows(x, out):
    for r in range(x.shape[0]):
        m = _row_shift(x, r)
        s = x.dtype.type(0)
        for j in range(x.shape[1]):
            e = fast_exp(x[r, j] - m)
            out[r, j] = e
            s += e
        for j in range(x.shape[1]):
            out[r, j] /= s


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def log_softmax_rows(x, out):
    for r in range(x.shape[0]):
        m = _row_shift(x, r)
        s = x.dtype.type(0)
        for j in range(x.shape[1]):
            s += fast_exp(x[r, j] - m)
        shift = m + x.dtype.type(math.log(s))
        for j in range(x.shape[1]):
            out[r, j] = x[r, j] - shift


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def sum_rows(x, out):
    for r in range(x.shape[0]):
        s = x.dtype.type(0)
        for j in range(x.shape[1]):
            s += x[r, j]
        out[r] = s


@numba.njit(cache=True, nogil=True, error_model="numpy")
def sum_columns(x, out):
    for j in range(x.shape[1]):
        out[j] = x[0, j]
    for r in range(1, x.shape[0]):
        for j in range(x.shape[1]):
            out[j] += x[r, j]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def sum_channels(x, out):
    # x: (A, C, W) -> out: (C,), the sum over the outer and inner axes; each (a, c) row is
    # summed in one vectorized loop, the rows added in order of a
    for c in range(x.shape[1]):
        out[c] = 0
    for a in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = x.dtype.type(0)
            for j in range(x.shape[2]):
                s += x[a, c, j]
            out[c] += s
'''


def _make_kernel(name, shape, dtype):
    fn = getattr(load_kernel_module(_SOURCE), f"{name}_rows")
    width = shape[-1]
    size = int(np.prod(shape))
    rows = size // width
    threaded = size >= THREADED_MIN_ELEMENTS

    def run(x):
        x2 = np.ascontiguousarray(x).reshape(rows, width)
        out = np.empty((rows, width), dtype)
        if threaded:
            threads.over_batch(rows, lambda lo, hi: fn(x2[lo:hi], out[lo:hi]), size)
        else:
            fn(x2, out)
        return (out.reshape(shape),)

    run.source = _SOURCE
    return run


def _make_sum(node, axes, sizes):
    """The sum ``node`` of a C-contiguous input seen as ``sizes``, (outer, middle, inner),
    over ``axes`` (see _sum_axes); "channels" is e.g. a convolution's bias gradient, the sum
    of (N, C, H, W) over N, H and W."""
    module = load_kernel_module(_SOURCE)
    out_shape, dtype = node.output.shape, node.output.dtype
    outer, middle, inner = sizes
    size = outer * middle * inner
    threaded = size >= THREADED_MIN_ELEMENTS
    forward, attrs = node.op.forward, node.attrs  # the primitive's NumPy sum, for other layouts

    def run(x):
        if not x.flags.c_contiguous:
            return (forward(x, **attrs),)
        if axes == "rows":
            x2 = x.reshape(middle, inner)
            out = np.empty(middle, dtype)
            if threaded:
                threads.over_batch(middle, lambda lo, hi: module.sum_rows(x2[lo:hi], out[lo:hi]), size)
            else:
                module.sum_rows(x2, out)
            return (out.reshape(out_shape),)
        if axes == "columns":
            x3, kernel = x.reshape(outer, middle), module.sum_columns
        else:
            x3, kernel = x.reshape(outer, middle, inner), module.sum_channels
        if threaded:  # each thread sums its part of the outer axis; the parts are added in order
            def part(lo, hi):
                partial = np.empty(middle, dtype)
                kernel(x3[lo:hi], partial)
                return partial
            parts = threads.over_batch(outer, part, size)
            out = parts[0]
            for p in parts[1:]:
                out += p
        else:
            out = np.empty(middle, dtype)
            kernel(x3, out)
        return (out.reshape(out_shape),)

    run.source = _SOURCE
    return run


def _sum_axes(node):
    """How ``node`` sums a float array of >= 2 dims into a non-empty result, and the input
    seen as (outer, middle, inner) sizes: "rows" for trailing axes (middle and inner summed,
    outer 1), "columns" for leading ones (outer summed, inner 1), "channels" for all axes but
    one, k (outer before k, middle k, inner after it); else None."""
    (x,) = node.inputs
    shape, nd, dims = x.shape, len(x.shape), tuple(sorted(node.attrs["dims"]))
    if x.dtype not in (np.float32, np.float64) or nd < 2 or not dims or len(dims) == nd or 0 in shape:
        return None
    size = lambda part: int(np.prod(part))  # noqa: E731
    if dims == tuple(range(nd - len(dims), nd)):
        return "rows", (1, size(shape[:nd - len(dims)]), size(shape[nd - len(dims):]))
    if dims == tuple(range(len(dims))):
        return "columns", (size(shape[:len(dims)]), size(shape[len(dims):]), 1)
    if len(dims) == nd - 1:
        (k,) = set(range(nd)) - set(dims)
        return "channels", (size(shape[:k]), shape[k], size(shape[k + 1:]))
    return None


def lower_rowwise(graph):
    """Replace float32 softmax/log_softmax nodes over the last axis, and float sums over
    trailing or leading axes, by the row kernels."""
    nodes = []
    for node in graph.nodes:
        shape = node.output.shape
        name = getattr(node.op, "name", None)
        if (name in ("softmax", "log_softmax") and node.output.dtype == np.float32
                and len(shape) >= 1 and node.attrs.get("dim") == len(shape) - 1 and int(np.prod(shape)) > 0
                and node.inputs[0].dtype == np.float32):
            kernel = _make_kernel(name, shape, node.output.dtype)
            node = KernelNode(f"{name} by rows", node.inputs, [node.output], kernel)
        elif name == "sum" and not hasattr(node, "outputs") and (how := _sum_axes(node)) is not None:
            node = KernelNode(f"sum by {how[0]}", node.inputs, [node.output], _make_sum(node, *how))
        nodes.append(node)
    graph.nodes = nodes
    return graph
