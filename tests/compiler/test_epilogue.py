"""compiler/epilogue.py: a convolution and the ReLU that only it feeds run as one kernel; the
forward and the gradients equal torch's, and a convolution used elsewhere is left alone."""

import numpy as np
import pytest
import torch
from jit_helpers import compiled_graph

import ember as em
import ember.nn.functional as F


def _labels(f):
    return [getattr(n, "label", n.op.name) for n in compiled_graph(f).nodes]


# (in channels, with bias): 1 channel takes the per-image products, 8 the batch-column ones
@pytest.mark.parametrize("channels, with_bias", [(1, True), (8, True), (8, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_relu_kernel_matches_torch_forward_and_gradients(channels, with_bias, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, channels, 9, 7)).astype(dtype)
    w = rng.standard_normal((6, channels, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if with_bias else None
    up = rng.standard_normal((5, 6, 9, 7)).astype(dtype)

    def step(x, w, *bias):
        y = F.relu(F.conv2d(x, w, *bias, padding=1))
        (y * em.tensor(up)).sum().backward()
        return y

    args = [em.tensor(a, requires_grad=True) for a in (x, w) + ((b,) if with_bias else ())]
    f = em.jit(step)
    y = f(*args)
    assert "conv2d + relu" in _labels(f) and "conv2d" not in _labels(f)

    targs = [torch.tensor(a, requires_grad=True) for a in (x, w) + ((b,) if with_bias else ())]
    ty = torch.relu(torch.nn.functional.conv2d(targs[0], targs[1], *targs[2:], padding=1))
    (ty * torch.tensor(up)).sum().backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=tol, atol=tol)
    for a, t in zip(args, targs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol * 10)


def test_a_convolution_used_elsewhere_keeps_its_own_node():
    x, w = em.randn(2, 3, 6, 6), em.randn(4, 3, 3, 3)
    f = em.jit(lambda x, w: (lambda c: (F.relu(c), c * 2))(F.conv2d(x, w, padding=1)))
    relu, doubled = f(x, w)
    c = torch.nn.functional.conv2d(torch.tensor(x.numpy()), torch.tensor(w.numpy()), padding=1)
    np.testing.assert_allclose(relu.numpy(), torch.relu(c).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(doubled.numpy(), (c * 2).numpy(), rtol=1e-5, atol=1e-5)
    assert "conv2d + relu" not in _labels(f) and "conv2d" in _labels(f)
