"""Softmax and log-softmax over the last axis as one numba kernel.

NumPy computes a softmax in five passes over the whole array (max, subtract, exp, sum,
divide), each reading and writing it from memory. Here each row is done while it is in L1:
its max, then e^(x - max) with the vectorizable exp of fastmath.py and their sum, then the
division (for log-softmax: x - max - log(sum)). Large arrays split their rows over ember's
threads, as the flat fused kernels do. Attention's (B, H, T, T) softmax in the gpt workload
took 1.5 ms through NumPy.

Only float32 (where the vectorizable exp exists) over the last axis is lowered; a softmax
over another axis, or in float64, stays the primitive's NumPy forward.
"""

from __future__ import annotations

import numpy as np

from ..ops import threads
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
'''


class RowNode:
    """A softmax or log-softmax node run by the row kernel."""

    class _Op:
        name = "rowwise"
        scalar = None

    op = _Op()

    def __init__(self, name, inputs, output, kernel):
        self.name, self.inputs, self.outputs, self.kernel = name, inputs, [output], kernel
        self.attrs = {}

    @property
    def output(self):
        return self.outputs[0]

    def describe(self):
        return f"{self.name} by rows"


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


def lower_rowwise(graph):
    """Replace float32 softmax/log_softmax nodes over the last axis by the row kernels."""
    nodes = []
    for node in graph.nodes:
        shape = node.output.shape
        if (getattr(node.op, "name", None) in ("softmax", "log_softmax") and node.output.dtype == np.float32
                and len(shape) >= 1 and node.attrs.get("dim") == len(shape) - 1 and int(np.prod(shape)) > 0
                and node.inputs[0].dtype == np.float32):
            node = RowNode(node.op.name, list(node.inputs), node.output,
                           _make_kernel(node.op.name, shape, node.output.dtype))
        nodes.append(node)
    graph.nodes = nodes
    return graph
