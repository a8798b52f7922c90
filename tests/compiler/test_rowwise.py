"""The row kernels for softmax and log-softmax (compiler/rowwise.py): results against torch,
non-finite rows as eager, which nodes are lowered, and gradients through them."""

import numpy as np
import pytest
import torch
from jit_helpers import compiled_graph

import ember as em
import ember.nn.functional as F
from ember.compiler import kernels

OPS = {"softmax": (F.softmax, torch.softmax), "log_softmax": (F.log_softmax, torch.log_softmax)}


def _row_nodes(f, index=0):
    return [n for n in compiled_graph(f, index).nodes
            if hasattr(n, "describe") and n.describe().endswith((" by rows", " by columns", " by channels"))]


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("shape", [(7,), (5, 33), (2, 3, 4, 64), (1 << 13, 65)])  # the last: threaded rows
def test_last_axis_softmax_matches_torch(name, shape):
    ours, theirs = OPS[name]
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32) * 4
    f = em.jit(lambda x: ours(x, dim=-1))
    got = f(em.tensor(x)).numpy()
    np.testing.assert_allclose(got, theirs(torch.tensor(x), dim=-1).numpy(), rtol=2e-6, atol=2e-6)
    (node,) = _row_nodes(f)
    assert node.describe() == f"{name} by rows"
    assert (int(np.prod(shape)) >= kernels.THREADED_MIN_ELEMENTS) == (shape[0] == 1 << 13)


@pytest.mark.parametrize("name", list(OPS))
def test_non_finite_rows_give_what_eager_gives(name):
    ours, _ = OPS[name]
    x = em.randn(4, 9)
    x.data[0, :] = -np.inf          # all -inf: NaN
    x.data[1, 3] = np.inf           # an inf: NaN there, 0 (or -inf) elsewhere
    x.data[2, 5] = np.nan           # a NaN: the whole row NaN
    x.data[3, :4] = -np.inf         # some -inf: 0 (or -inf) there
    with np.errstate(all="ignore"):
        got = em.jit(lambda x: ours(x, dim=-1))(x).numpy()
        want = ours(x, dim=-1).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)  # NaNs compare equal here


def test_other_axes_and_float64_stay_numpy_calls():
    f = em.jit(lambda x: F.softmax(x, dim=0))
    f(em.randn(6, 5))
    g = em.jit(lambda x: F.softmax(x, dim=-1))
    g(em.randn(6, 5, dtype=em.float64))
    assert not _row_nodes(f) and not _row_nodes(g)
    assert "softmax" in [n.op.name for n in compiled_graph(g).nodes]


def test_gradients_through_the_row_kernel_match_eager():
    w = em.randn(3, 17)

    def loss_fn(x):
        x.grad = None
        loss = (F.softmax(x, dim=-1) * w).sum() + (F.log_softmax(x * 2.0, dim=-1) * w).sum()
        loss.backward()
        return loss

    x = em.randn(3, 17, requires_grad=True)
    want = loss_fn(x).item(), x.grad.numpy().copy()
    f = em.jit(loss_fn)
    got = f(x).item(), x.grad.numpy()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    described = [n.describe() for n in _row_nodes(f)]  # the backward's row sums run as kernels too
    assert described.count("softmax by rows") == 1 and described.count("log_softmax by rows") == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, dims, keepdim, over", [
    ((32, 64, 128), (2,), True, "rows"),         # layer norm's mean
    ((32, 64, 128), (1, 2), False, "rows"),
    ((32, 64, 128), (0, 1), True, "columns"),    # a bias gradient
    ((5, 7), (0,), False, "columns"),
    ((1 << 12, 257), (1,), False, "rows"),        # threaded: rows split over the cores
    ((1 << 12, 257), (0,), True, "columns"),      # threaded: partial sums added
    ((3, 5, 7), (0, 2), False, "channels"),
    ((4, 6, 2, 3), (0, 1, 3), True, "channels"),
    ((64, 32, 28, 28), (0, 2, 3), False, "channels"),  # a conv bias gradient, threaded
])
def test_sums_over_trailing_leading_or_all_but_one_axes_match_torch(dtype, shape, dims, keepdim, over):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    f = em.jit(lambda x: x.sum(dims, keepdim=keepdim))
    got = f(em.tensor(x)).numpy()
    want = torch.tensor(x).sum(dims, keepdim=keepdim).numpy()
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(x.size / want.size))
    (node,) = _row_nodes(f)
    assert node.describe() == f"sum by {over}"


def test_sums_over_middle_axes_integers_and_strided_inputs_use_numpy():
    f = em.jit(lambda x: x.sum((1,)))
    f(em.randn(4, 5, 6))
    g = em.jit(lambda x: x.sum((1,)))
    g(em.tensor(np.arange(12).reshape(3, 4)))
    assert not _row_nodes(f) and not _row_nodes(g)
    # a transposed input reaches the kernel node non-contiguous: NumPy's sum computes it
    h = em.jit(lambda x: x.transpose(0, 1).sum((1,)))
    x = em.randn(6, 7)
    np.testing.assert_allclose(h(x).numpy(), x.numpy().T.sum(1), rtol=1e-5)
