"""compiler/convolution.py: a convolution and the ReLU that only it feeds run as one kernel (with
a 2x2 max pool, returning the pool's winners when nothing else reads the ReLU's output), and a
first layer's weight and bias gradients come straight from the pooled gradient; results equal
torch's, and graphs the lowerings do not fit are left alone."""

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
    # the input, weight and bias gradients share each chunk's channels-first gradient
    assert "conv_transpose2d + conv2d_weight_grad" + (" + bias sum" if with_bias else "") in _labels(f)

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


def _first_layer_step(channels, kernel, with_bias, input_grad, dtype):
    """A first convolution, ReLU and 2x2 max pool under a loss: (ember arrays, torch grads)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, channels, 8, 10)).astype(dtype)
    w = rng.standard_normal((5, channels, kernel, kernel)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    up = rng.standard_normal((6, 5, 4, 5)).astype(dtype)
    pad = kernel // 2

    def loss(F_conv, F_relu, F_pool, x, w, b, up):
        y = F_pool(F_relu(F_conv(x, w, b, padding=pad) if with_bias else F_conv(x, w, padding=pad)), 2)
        return (y * up).sum()

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    torch_f = torch.nn.functional
    torch_loss = loss(torch_f.conv2d, torch.relu, torch_f.max_pool2d, tx, tw, tb, torch.tensor(up))
    torch_loss.backward()
    up = em.tensor(up)

    def step(x, w, b):
        value = loss(F.conv2d, F.relu, F.max_pool2d, x, w, b, up)
        value.backward()
        return value

    args = (em.tensor(x, requires_grad=input_grad), em.tensor(w, requires_grad=True), em.tensor(b, requires_grad=True))
    f = em.jit(step)
    value = f(*args)
    # the forward's convolution, ReLU and pool are one kernel (the pool done per chunk in cache);
    # the ReLU's output is read only for the pool's winners, so the kernel returns those instead
    assert "conv2d + relu + max_pool (winners)" in _labels(f) and "pool_select" not in _labels(f)
    np.testing.assert_allclose(value.item(), torch_loss.item(), rtol=1e-5 if dtype == np.float32 else 1e-12)
    torch_grads = [tx.grad if input_grad else None, tw.grad, tb.grad if with_bias else None]
    return f, args, torch_grads


@pytest.mark.parametrize("channels, kernel", [(1, 3), (2, 5), (7, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_layer_weight_gradient_from_the_pooled_gradient_matches_torch(channels, kernel, with_bias, dtype):
    f, (x, w, b), (_, tw, tb) = _first_layer_step(channels, kernel, with_bias, False, dtype)
    label = "pool_scatter + conv2d_weight_grad" + (" + bias sum" if with_bias else "")
    assert label in _labels(f) and "pool_scatter" not in _labels(f)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(w.grad.numpy(), tw.numpy(), rtol=tol, atol=tol * 10)
    if with_bias:
        np.testing.assert_allclose(b.grad.numpy(), tb.numpy(), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("channels, input_grad", [(1, True), (8, False)])
def test_the_full_gradient_stays_when_more_reads_it_or_the_convolution_is_wide(channels, input_grad):
    """An input gradient reads the scattered gradient too (the input and weight gradients then
    run as one kernel that scatters each chunk itself); 8 channels x 3x3 = 72 rows take the
    batch-column products, with pool_scatter and the weight gradient's own node."""
    f, (x, w, b), (tx, tw, tb) = _first_layer_step(channels, 3, True, input_grad, np.float32)
    if input_grad:
        assert "pool_scatter + conv_transpose2d + conv2d_weight_grad + bias sum" in _labels(f)
    else:
        assert "pool_scatter (winners)" in _labels(f) and "conv2d_weight_grad" in _labels(f)
    for got, want in ((w.grad, tw), (b.grad, tb)) + (((x.grad, tx),) if input_grad else ()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-4)


def _conv_pool_case(groups, padding, with_bias, dtype, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 4, 8, 10)).astype(dtype)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if with_bias else None
    return x, w, b


# padding 1 is the "same" im2col kernel, padding 0 NumPy's strided windows; 2 groups
@pytest.mark.parametrize("groups, padding", [(1, 1), (2, 1), (1, 0)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winners_kernel_matches_torch_forward_and_gradients(groups, padding, with_bias, dtype):
    """conv -> relu -> 2x2 max pool -> conv: the pool's gradient is scattered from the winners
    the forward kernel returned, and every gradient (input, weights, biases) equals torch's."""
    x, w, b = _conv_pool_case(groups, padding, with_bias, dtype)
    rng = np.random.default_rng(8)
    w2 = rng.standard_normal((3, 6, 3, 3)).astype(dtype)

    def forward(f_conv, f_relu, f_pool, x, w, w2, *bias):
        return f_conv(f_pool(f_relu(f_conv(x, w, *bias, padding=padding, groups=groups)), 2), w2, padding=1)

    def step(x, w, w2, *bias):
        y = forward(F.conv2d, F.relu, F.max_pool2d, x, w, w2, *bias)
        (y * y).sum().backward()
        return y

    arrays = (x, w, w2) + ((b,) if with_bias else ())
    args = [em.tensor(a, requires_grad=True) for a in arrays]
    f = em.jit(step)
    y = f(*args)
    labels = _labels(f)
    assert "conv2d + relu + max_pool (winners)" in labels
    assert "pool_select" not in labels and "pool_scatter" not in labels
    # a "same" convolution's input and weight gradients scatter each chunk from the winners
    # themselves; padding 0 keeps pool_scatter (from the winners) and its own gradient nodes
    bias_sum = " + bias sum" if with_bias else ""
    if padding == 1:
        assert f"pool_scatter + conv_transpose2d + conv2d_weight_grad{bias_sum}" in labels
        assert "conv_transpose2d + conv2d_weight_grad" in labels  # the second convolution's
    else:
        assert "pool_scatter (winners)" in labels and "conv2d_weight_grad" in labels

    targs = [torch.tensor(a, requires_grad=True) for a in arrays]
    ty = forward(torch.nn.functional.conv2d, torch.relu, torch.nn.functional.max_pool2d, *targs)
    (ty * ty).sum().backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=tol, atol=tol * 10)
    for a, t in zip(args, targs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=tol * 10, atol=tol * 100)


def test_winners_kernel_serves_an_inference_graph():
    """Under no_grad nothing reads the winners; the pooled output still equals torch's."""
    x, w, b = _conv_pool_case(1, 1, True, np.float32)
    f = em.jit(lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2))
    with em.no_grad():
        y = f(em.tensor(x), em.tensor(w), em.tensor(b))
    assert "conv2d + relu + max_pool (winners)" in _labels(f)
    t = torch.nn.functional
    want = t.max_pool2d(torch.relu(t.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=1)), 2)
    np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_relu_output_read_elsewhere_is_still_written():
    """The ReLU's output is also returned: the kernel writes it (and records the winners)."""
    x, w, b = _conv_pool_case(1, 1, True, np.float32)

    def step(x, w, b):
        y = F.relu(F.conv2d(x, w, b, padding=1))
        p = F.max_pool2d(y, 2)
        (p * p).sum().backward()
        return y, p

    args = [em.tensor(a, requires_grad=True) for a in (x, w, b)]
    f = em.jit(step)
    y, p = f(*args)
    labels = _labels(f)
    assert "conv2d + relu + max_pool" in labels and "conv2d + relu + max_pool (winners)" not in labels
    targs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    ty = torch.relu(torch.nn.functional.conv2d(*targs, padding=1))
    tp = torch.nn.functional.max_pool2d(ty, 2)
    (tp * tp).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-5)
    for a, t in zip(args, targs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_winners_kernel_keeps_nan_as_the_eager_pool_does():
    """A NaN in a window takes it (the last NaN), as ops/pooling.py's select_2x2 and torch."""
    x, w, b = _conv_pool_case(1, 1, True, np.float32)
    x[1, :, 2, 3] = np.nan
    f = em.jit(lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2))
    with em.no_grad():
        got = f(em.tensor(x), em.tensor(w), em.tensor(b)).numpy()
        eager = F.max_pool2d(F.relu(F.conv2d(em.tensor(x), em.tensor(w), em.tensor(b), padding=1)), 2).numpy()
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(eager))
    np.testing.assert_allclose(got[~np.isnan(got)], eager[~np.isnan(eager)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("special", ["none", "nan", "inf", "nan_bias"])
def test_winners_equal_the_eager_pools_winners(special):
    """The kernel's winners and maxima equal select_2x2's on relu(conv2d(x)): ties (every
    window of zeros after the ReLU), NaN (the last NaN wins) and infinities included."""
    from ember.compiler.convolution import _conv_relu_pool_winners
    from ember.ops.nn import _conv2d_np
    from ember.ops.pooling import select_2x2

    x, w, b = _conv_pool_case(1, 1, True, np.float32)
    b[2] = -50.0  # channel 2 is all zeros after the ReLU: every window a tie
    if special == "nan":
        x[1, 0, 2, 3] = x[3, 2, 5, 5] = np.nan
    elif special == "inf":
        x[0, 1, 4, 4], x[2, 3, 0, 0] = np.inf, -np.inf
    elif special == "nan_bias":
        b[4] = np.nan
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    idx, pooled = _conv_relu_pool_winners(attrs, (8, 10))(x, w, b)
    y = np.maximum(_conv2d_np(x, w, b, **attrs), 0)
    want, want_idx = np.empty_like(pooled), np.empty_like(idx)
    select_2x2(y, want, want_idx)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(pooled, want)  # NaN where the eager pool has NaN
    assert (special == "none") == bool(np.isfinite(pooled).all())
    if special == "none":
        assert (pooled[:, 2] == 0).all() and (idx[:, 2] == 0).all()  # ties: the first position


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_backward_of_a_dilated_same_convolution_matches_torch(dtype):
    """Dilation 2 with padding 2 keeps the output the input's size: one backward kernel."""
    rng = np.random.default_rng(9)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((3, 4, 9, 8), (5, 4, 3, 3), (5,)))
    up = rng.standard_normal((3, 5, 9, 8)).astype(dtype)

    def step(x, w, b):
        y = F.conv2d(x, w, b, padding=2, dilation=2)
        (y * em.tensor(up)).sum().backward()
        return y

    args = [em.tensor(a, requires_grad=True) for a in (x, w, b)]
    f = em.jit(step)
    f(*args)
    assert "conv_transpose2d + conv2d_weight_grad + bias sum" in _labels(f)
    targs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    (torch.nn.functional.conv2d(*targs, padding=2, dilation=2) * torch.tensor(up)).sum().backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, t in zip(args, targs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=tol * 10, atol=tol * 100)
