import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ember as em
import ember.nn.functional as F
from opcheck import check, check_fd


def P(x):
    """The functional module of the library ``x`` belongs to."""
    return F if isinstance(x, em.Tensor) else TF


NEG_INF = np.array([[0.5, -np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf, -np.inf],
                    [-np.inf, 3.0, -np.inf, -1.0]], np.float32)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", [((3, 4), -1), ((3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), -3),
                                       ((5,), 0), ((1, 4), 0), ((0, 3), 1), ((3, 0), 1),
                                       ((2, 0, 3), 1), ((2, 1, 3), 1)])
def test_softmax_matches_torch(name, shape, dim):
    for f in [lambda x: getattr(x, name)(dim), lambda x: getattr(P(x), name)(x, dim=dim)]:
        check(f, f, [shape])
    check_fd(lambda x: getattr(x, name)(dim), [shape])


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_with_infinities(name):
    f = lambda x: getattr(x, name)(-1)
    check(f, f, [NEG_INF[[0, 2]]])   # -inf entries: zero probability, finite gradient
    check(f, f, [NEG_INF])           # an all -inf row gives nan, as in torch
    big = np.array([[1000.0, 0.0, -1000.0], [88.0, 89.0, 90.0]], np.float32)
    check(f, f, [big])
    check(lambda x: getattr(x, name)(0), lambda x: getattr(x, name)(0), [NEG_INF[[0, 2]].T.copy()])


def test_softmax_dtype_and_integer_input():
    x = em.tensor([[1, 2, 3]])
    assert em.softmax(x, -1).dtype == em.float32
    np.testing.assert_allclose(em.softmax(x, -1).numpy(),
                               torch.softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1).numpy(), rtol=1e-6)
    y = em.randn(2, 3).softmax(-1, dtype=em.float64)
    assert y.dtype == em.float64


# (input shape, kernel, dilation, padding, stride)
UNFOLD_CASES = [
    ((2, 3, 5, 6), 2, 1, 0, 1),
    ((2, 3, 5, 6), (2, 3), 1, 0, 1),
    ((1, 2, 7, 6), 3, 2, 1, 1),
    ((2, 1, 7, 8), (3, 2), (1, 2), (1, 0), (2, 3)),
    ((1, 2, 4, 6), 2, 1, 0, 2),        # non-overlapping windows tile the image
    ((1, 2, 4, 6), 2, 1, 1, 2),        # the same with padding
    ((2, 2, 5, 5), 1, 1, 0, 1),
    ((1, 1, 3, 3), 3, 1, 0, 1),
    ((1, 2, 6, 5), (2, 2), (2, 1), (2, 1), (3, 1)),
    ((3, 4, 4), 2, 1, 1, 1),           # unbatched (C, H, W)
]


@pytest.mark.parametrize("shape,k,d,p,s", UNFOLD_CASES)
def test_unfold_matches_torch(shape, k, d, p, s):
    f = lambda x: P(x).unfold(x, k, dilation=d, padding=p, stride=s)
    check(f, f, [shape])
    check_fd(f, [shape])


@pytest.mark.parametrize("shape,k,d,p,s", UNFOLD_CASES)
def test_fold_matches_torch(shape, k, d, p, s):
    out_size = shape[-2:]
    cols = TF.unfold(torch.zeros(shape), k, dilation=d, padding=p, stride=s).shape
    f = lambda x: P(x).fold(x, out_size, k, dilation=d, padding=p, stride=s)
    check(f, f, [tuple(cols)])
    check_fd(f, [tuple(cols)])


def test_fold_unfold_second_derivatives():
    x = em.randn(1, 2, 5, 5, dtype=em.float64, requires_grad=True)
    t = torch.tensor(x.detach().numpy(), requires_grad=True)
    outs = []
    for lib, xx in [(F, x), (TF, t)]:
        cols = lib.unfold(xx, 3, padding=1, stride=2)
        y = lib.fold(cols * cols, (5, 5), 3, padding=1, stride=2)
        (g,) = (em.autograd.grad if lib is F else torch.autograd.grad)(
            (y * y).sum(), [xx], create_graph=True)
        (h,) = (em.autograd.grad if lib is F else torch.autograd.grad)((g * g).sum(), [xx])
        outs.append((g.detach().numpy(), h.detach().numpy()))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-9)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-9)


def test_unfold_fold_errors():
    with pytest.raises(em.ShapeError, match="unfold: kernel"):
        F.unfold(em.ones(1, 1, 2, 2), 3)
    with pytest.raises(em.ShapeError, match=r"unfold: expects a 3-D \(C, H, W\) or 4-D"):
        F.unfold(em.ones(2, 2), 1)
    with pytest.raises(em.ShapeError, match="fold: input of shape"):
        F.fold(em.ones(1, 4, 5), (3, 3), 2)


def test_one_hot_matches_torch():
    for a, n in [(np.array([0, 2, 1, 2]), 3), (np.array([[1, 0], [3, 3]]), -1),
                 (np.array(2), 5), (np.zeros(0, np.int64), 4), (np.array([1, 0]), 2)]:
        f = lambda x, n=n: P(x).one_hot(x, n)
        check(f, f, [a.astype(np.int64)])
    assert em.one_hot(em.tensor([1, 2]), 4).dtype == em.int64
    with pytest.raises(em.OpError, match=r"one_hot: class values must be in \[0, 3\)"):
        em.one_hot(em.tensor([0, 3]), 3)
    with pytest.raises(em.OpError, match="integer tensor"):
        em.one_hot(em.tensor([0.0, 1.0]), 3)
