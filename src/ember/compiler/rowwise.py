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
leading axes (bias gradients) it adds rows one after another as NumPy does, 2x faster. A sum
whose input is not C-contiguous at run time, or over other axes, is NumPy's.
"""

from __future__ import annotations

import numpy as np

from ..ops import threads
from .ir import KernelNode
from .kernels import THREADED_MIN_ELEMENTS, load_kernel_module

_SOURCE = '''# ember row-wise softmax kernels (format 1)
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


def _make_sum(node, split, over_rows):
    """The sum ``node`` of a C-contiguous input seen as (rows, width), split after ``split``
    dims: over each row (trailing axes) or over the rows (leading axes)."""
    module = load_kernel_module(_SOURCE)
    in_shape, out_shape, dtype = node.inputs[0].shape, node.output.shape, node.output.dtype
    rows, width = int(np.prod(in_shape[:split])), int(np.prod(in_shape[split:]))
    size = rows * width
    threaded = size >= THREADED_MIN_ELEMENTS
    forward, attrs = node.op.forward, node.attrs  # the primitive's NumPy sum, for other layouts

    def run(x):
        if not x.flags.c_contiguous:
            return (forward(x, **attrs),)
        x2 = x.reshape(rows, width)
        if over_rows:
            out = np.empty(rows, dtype)
            if threaded:
                threads.over_batch(rows, lambda lo, hi: module.sum_rows(x2[lo:hi], out[lo:hi]), size)
            else:
                module.sum_rows(x2, out)
        elif threaded:  # each thread sums its rows; the partial sums are added in row order
            def part(lo, hi):
                partial = np.empty(width, dtype)
                module.sum_columns(x2[lo:hi], partial)
                return partial
            parts = threads.over_batch(rows, part, size)
            out = parts[0]
            for p in parts[1:]:
                out += p
        else:
            out = np.empty(width, dtype)
            module.sum_columns(x2, out)
        return (out.reshape(out_shape),)

    run.source = _SOURCE
    return run


def _sum_split(node):
    """(split, over_rows) when ``node`` sums trailing axes (over_rows) or leading axes of a
    float array of >= 2 dims into a non-empty result; else None."""
    (x,) = node.inputs
    nd, dims = len(x.shape), tuple(sorted(node.attrs["dims"]))
    if x.dtype not in (np.float32, np.float64) or nd < 2 or not dims or len(dims) == nd or 0 in x.shape:
        return None
    if dims == tuple(range(nd - len(dims), nd)):
        return nd - len(dims), True
    if dims == tuple(range(len(dims))):
        return len(dims), False
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
        elif name == "sum" and not hasattr(node, "outputs") and (split := _sum_split(node)) is not None:
            kernel = _make_sum(node, *split)
            node = KernelNode(f"sum by {'rows' if split[1] else 'columns'}", node.inputs, [node.output], kernel)
        nodes.append(node)
    graph.nodes = nodes
    return graph
