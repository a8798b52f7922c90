"""Property tests: broadcasting and reductions on random shapes against PyTorch, forward and
backward (float64, so the only differences are summation order)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ember as em

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def broadcastable_pair(draw):
    """Two shapes that broadcast: a common shape, then dims of either side dropped from the
    front or set to 1 (zero-size dims included)."""
    ndim = draw(st.integers(0, 4))
    full = draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim))
    shapes = []
    for _ in range(2):
        keep = draw(st.integers(0, ndim))
        shape = [1 if draw(st.booleans()) else d for d in full[ndim - keep:]]
        shapes.append(tuple(shape))
    return shapes


def _pair(shapes, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) + 2.0 for s in shapes]  # away from 0 for div
    return ([em.tensor(a, requires_grad=True) for a in arrays],
            [torch.tensor(a, requires_grad=True) for a in arrays])


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": lambda a, b: a.maximum(b),
    "where": lambda a, b: (em if isinstance(a, em.Tensor) else torch).where(a > b, a, b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(shapes=broadcastable_pair(), seed=st.integers(0, 2**16))
def test_broadcasting_binary_ops_match_torch(name, shapes, seed):
    fn = BINARY[name]
    (ea, eb), (ta, tb) = _pair(shapes, seed)
    eout, tout = fn(ea, eb), fn(ta, tb)
    assert eout.shape == tuple(tout.shape)
    np.testing.assert_allclose(eout.detach().numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    weights = np.random.default_rng(seed + 1).standard_normal(tuple(tout.shape))
    (eout * em.tensor(weights)).sum().backward()
    (tout * torch.tensor(weights)).sum().backward()
    for e, t in ((ea, ta), (eb, tb)):
        assert e.grad.shape == e.shape
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


@st.composite
def reduction_case(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    dims = draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim, unique_by=lambda d: d % ndim))
    dim = dims[0] if len(dims) == 1 and draw(st.booleans()) else tuple(dims)
    return shape, dim, draw(st.booleans())


REDUCTIONS = {
    "sum": (lambda x, d, k: x.sum(d, keepdim=k), lambda x, d, k: x.sum(d, keepdim=k)),
    "mean": (lambda x, d, k: x.mean(d, keepdim=k), lambda x, d, k: x.mean(d, keepdim=k)),
    "amax": (lambda x, d, k: x.amax(d, keepdim=k), lambda x, d, k: x.amax(d, keepdim=k)),
    "logsumexp": (lambda x, d, k: x.logsumexp(d, keepdim=k), lambda x, d, k: x.logsumexp(d, keepdim=k)),
    "var": (lambda x, d, k: x.var(d, keepdim=k), lambda x, d, k: x.var(d, keepdim=k)),
    "prod": (lambda x, d, k: x.prod(d if isinstance(d, int) else d[0], keepdim=k),
             lambda x, d, k: x.prod(d if isinstance(d, int) else d[0], keepdim=k)),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@SETTINGS
@given(case=reduction_case(), seed=st.integers(0, 2**16))
def test_reductions_over_random_dims_match_torch(name, case, seed):
    shape, dim, keepdim = case
    ef, tf = REDUCTIONS[name]
    a = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) / 7.0 + 0.5
    e, t = em.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    eout, tout = ef(e, dim, keepdim), tf(t, dim, keepdim)  # var over size-1 dims: NaN in both
    assert eout.shape == tuple(tout.shape)
    np.testing.assert_allclose(eout.detach().numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    weights = np.random.default_rng(seed + 1).standard_normal(tuple(tout.shape))
    (eout * em.tensor(weights)).sum().backward()
    (tout * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-9, atol=1e-12)
