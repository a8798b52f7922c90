"""The vectorizable exp, tanh and sigmoid of the fused kernels (compiler/fastmath.py): their
accuracy in ulps over all float32 magnitudes, their special values, and which ops fuse."""

import math

import numba
import numpy as np
import pytest
from jit_helpers import compiled_graph, fused_nodes

import ember as em
import ember.nn.functional as F
from ember.compiler.fastmath import fast_exp, fast_sigmoid, fast_tanh


@numba.njit(error_model="numpy")
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@numba.njit(error_model="numpy")
def _tanh_all(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_tanh(x[i])


@numba.njit(error_model="numpy")
def _sigmoid_all(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_sigmoid(x[i])


KERNELS = {"exp": _exp_all, "tanh": _tanh_all, "sigmoid": _sigmoid_all}


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


REFERENCE = {"exp": np.exp, "tanh": np.tanh, "sigmoid": _sigmoid64}


def _sweep():
    rng = np.random.default_rng(0)
    mags = np.logspace(-40, 2.05, 200_000)
    return np.concatenate([rng.uniform(-110, 95, 400_000), rng.standard_normal(200_000) * 4,
                           mags, -mags]).astype(np.float32)


# sigmoid rounds e^-|x|, 1 + e and the quotient: NumPy's float32 formula (eager sigmoid) is
# within 3.4 ulps on this sweep
@pytest.mark.parametrize("name, max_ulps", [("exp", 1.5), ("tanh", 2.0), ("sigmoid", 3.0)])
def test_float32_results_are_within_a_few_ulps_of_the_exact_value(name, max_ulps):
    x = _sweep()
    got = np.empty_like(x)
    KERNELS[name](x, got)
    with np.errstate(all="ignore"):
        exact = REFERENCE[name](x.astype(np.float64))
        rounded = exact.astype(np.float32)
    normal = np.isfinite(rounded) & (np.abs(rounded) >= np.finfo(np.float32).tiny)
    ulps = np.abs(got[normal].astype(np.float64) - exact[normal]) / np.spacing(np.abs(rounded[normal]))
    assert ulps.max() <= max_ulps
    # outside the normal range (overflow to inf, subnormal and zero results) it rounds as NumPy
    np.testing.assert_allclose(got[~normal], rounded[~normal], rtol=0, atol=2 * 2.0 ** -149)


def test_special_values_match_numpy():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 88.72, 88.73, -103.5, -200.0], np.float32)
    for name, kernel in KERNELS.items():
        got = np.empty_like(x)
        kernel(x, got)
        with np.errstate(all="ignore"):
            want = REFERENCE[name](x.astype(np.float64)).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=2e-7, atol=2.0 ** -148, err_msg=name)
        assert np.array_equal(np.signbit(got), np.signbit(want)), name  # tanh(-0.0) is -0.0


def test_float64_arguments_use_libm():
    x = np.array([-3.5, -1e-3, 0.0, 0.7, 20.0])
    for name, fn in (("exp", math.exp), ("tanh", math.tanh)):
        got = np.empty_like(x)
        KERNELS[name](x, got)
        np.testing.assert_array_equal(got, [fn(v) for v in x])
    got = np.empty_like(x)
    _sigmoid_all(x, got)
    np.testing.assert_allclose(got, _sigmoid64(x), rtol=1e-15)


def _activations(x, b):
    return F.gelu(x + b, approximate="tanh") * em.sigmoid(x) + em.tanh(x).exp()


def test_float32_exp_tanh_sigmoid_and_tanh_gelu_fuse_into_one_kernel():
    x, b = em.randn(64, 300) * 3, em.randn(300)
    f = em.jit(_activations)
    np.testing.assert_allclose(f(x, b).numpy(), _activations(x, b).numpy(), rtol=2e-6, atol=1e-6)
    graph = compiled_graph(f)
    (fused,) = fused_nodes(graph)
    assert len(graph.nodes) == 1
    assert [m.op.name for m in fused.members] == ["add", "gelu", "sigmoid", "mul", "tanh", "exp", "add"]


def test_float64_and_exact_gelu_stay_numpy_calls():
    f = em.jit(_activations)
    x, b = em.randn(64, 300, dtype=em.float64), em.randn(300, dtype=em.float64)
    np.testing.assert_allclose(f(x, b).numpy(), _activations(x, b).numpy(), rtol=1e-12)
    names = [n.op.name for n in compiled_graph(f).nodes]
    assert {"gelu", "sigmoid", "tanh", "exp"} <= set(names)
    g = em.jit(lambda x: F.gelu(x * 2.0))  # exact (erf) GELU
    g(em.randn(64, 300))
    assert "gelu" in [n.op.name for n in compiled_graph(g).nodes]


def test_gradients_through_fused_transcendentals_match_eager():
    def loss_fn(x, b):
        x.grad = b.grad = None
        loss = (_activations(x, b) ** 2).mean()
        loss.backward()
        return loss

    x, b = em.randn(32, 200, requires_grad=True), em.randn(200, requires_grad=True)
    want = loss_fn(x, b).item(), x.grad.numpy().copy(), b.grad.numpy().copy()
    got = em.jit(loss_fn)(x, b).item(), x.grad.numpy(), b.grad.numpy()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
