import numpy as np
import pytest
import torch

import ember as em
from opcheck import check, check_fd


def M(x):
    """The library ``x`` belongs to, so one lambda serves ember and torch."""
    return em if isinstance(x, em.Tensor) else torch


MATMUL_SHAPES = [
    ((3,), (3,)),              # 1-D @ 1-D: dot product
    ((3,), (3, 4)),            # 1-D @ 2-D
    ((4, 3), (3,)),            # 2-D @ 1-D
    ((4, 3), (3, 5)),          # 2-D @ 2-D
    ((2, 3, 4), (4, 5)),       # batched @ 2-D
    ((3, 4), (2, 4, 5)),       # 2-D @ batched
    ((2, 1, 3, 4), (5, 4, 2)),  # broadcast batch dims
    ((4,), (2, 4, 5)),         # 1-D @ batched
    ((2, 3, 4), (4,)),         # batched @ 1-D
    ((2, 3, 4), (2, 4, 1)),    # bmm-like, size-1 output dim
    ((1, 1), (1, 1)),
    ((0, 3), (3, 4)),          # zero-size rows
    ((3, 0), (0, 4)),          # zero-size contraction: zeros
    ((0, 2, 3), (3, 4)),       # zero-size batch
    ((2, 3, 0), (0, 4)),       # zero-size contraction, batched @ 2-D
    ((2, 0, 3), (3, 0)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_matches_torch(sa, sb):
    for f in [lambda a, b: a @ b, lambda a, b: M(a).matmul(a, b), lambda a, b: a.matmul(b)]:
        check(f, f, [sa, sb])
    check_fd(lambda a, b: a @ b, [sa, sb])


def test_matmul_integer_and_rmatmul():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = np.arange(12, dtype=np.int64).reshape(3, 4)
    check(lambda a, b: a @ b, lambda a, b: a @ b, [a, b])
    x = em.tensor([[1.0, 2.0]])
    out = [[1.0, 2.0]] @ x.T  # __rmatmul__
    assert isinstance(out, em.Tensor) and out.tolist() == [[5.0]]


def test_matmul_error_names_op_and_shapes():
    with pytest.raises(em.ShapeError) as info:
        em.randn(32, 784) @ em.randn(512, 10)
    msg = str(info.value)
    for part in ["matmul", "(32, 784)", "(512, 10)", "784 != 512"]:
        assert part in msg, msg
    with pytest.raises(em.ShapeError, match=r"matmul: shapes \(4,\) and \(3,\) cannot be multiplied: 4 != 3"):
        em.ones(4) @ em.ones(3)
    with pytest.raises(em.ShapeError,
                       match=r"matmul: shapes \(2, 3, 4\) and \(3, 4, 5\) .* batch dims \(2,\) and \(3,\)"):
        em.ones(2, 3, 4) @ em.ones(3, 4, 5)
    with pytest.raises(em.ShapeError, match="at least 1 dim"):
        em.tensor(2.0) @ em.ones(2)
    with pytest.raises(em.OpError, match="matmul: bool"):
        em.ones(2, 2, dtype=em.bool) @ em.ones(2, 2, dtype=em.bool)


PRODUCT_CASES = [
    ("mm", lambda a, b: a.mm(b), [(3, 4), (4, 2)]),
    ("mm_fn", lambda a, b: M(a).mm(a, b), [(1, 4), (4, 0)]),
    ("bmm", lambda a, b: a.bmm(b), [(2, 3, 4), (2, 4, 5)]),
    ("dot", lambda a, b: a.dot(b), [(5,), (5,)]),
    ("outer", lambda a, b: a.outer(b), [(3,), (4,)]),
    ("outer_fn", lambda a, b: M(a).outer(a, b), [(1,), (0,)]),
    ("tensordot2", lambda a, b: M(a).tensordot(a, b), [(2, 3, 4), (3, 4, 5)]),
    ("tensordot1", lambda a, b: M(a).tensordot(a, b, dims=1), [(2, 3), (3, 4)]),
    ("tensordot0", lambda a, b: M(a).tensordot(a, b, dims=0), [(2, 3), (4,)]),
    ("tensordot_lists", lambda a, b: M(a).tensordot(a, b, dims=([1, 2], [1, 0])),
     [(2, 3, 4), (4, 3, 5)]),
    ("tensordot_ints", lambda a, b: M(a).tensordot(a, b, dims=([0], [1])), [(3, 2), (4, 3)]),
]


@pytest.mark.parametrize("name,fn,shapes", PRODUCT_CASES, ids=[c[0] for c in PRODUCT_CASES])
def test_products_match_torch(name, fn, shapes):
    check(fn, fn, shapes)
    check_fd(fn, shapes)


def test_product_shape_errors():
    with pytest.raises(em.ShapeError, match=r"mm: expects two 2-D tensors, got shapes \(3,\)"):
        em.mm(em.ones(3), em.ones(3, 2))
    with pytest.raises(em.ShapeError, match="bmm: expects two 3-D tensors with the same batch"):
        em.bmm(em.ones(2, 3, 4), em.ones(3, 4, 5))
    with pytest.raises(em.ShapeError, match="dot: expects two 1-D tensors"):
        em.dot(em.ones(2, 2), em.ones(2))
    with pytest.raises(em.ShapeError, match="outer"):
        em.outer(em.ones(2, 2), em.ones(2))


EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("i,i->", [(4,), (4,)]),
    ("ij->ji", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),                # implicit output: alphabetical free indices
    ("ba,ac", [(3, 4), (4, 5)]),                # implicit output orders letters: 'bc'
    ("i,j", [(3,), (4,)]),
    ("...ij->...ji", [(2, 3, 4)]),
    ("i...->...", [(2, 3, 4)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("ij,ij->ij", [(3, 1), (3, 4)]),            # size-1 dims broadcast, as in torch
    ("ii->i", [(3, 3)]),                        # diagonal
    ("ii", [(3, 3)]),                           # trace
    ("bii->bi", [(2, 3, 3)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("i j , j k -> i k", [(3, 4), (4, 5)]),   # spaces
]


@pytest.mark.parametrize("eq,shapes", EINSUM_CASES, ids=[c[0] for c in EINSUM_CASES])
def test_einsum_matches_torch(eq, shapes):
    f = lambda *xs: M(xs[0]).einsum(eq, *xs)
    check(f, f, shapes)
    check_fd(f, shapes)


def test_einsum_list_operands_and_errors():
    a, b = np.random.randn(3, 4), np.random.randn(4, 5)
    np.testing.assert_allclose(em.einsum("ij,jk->ik", [em.tensor(a), em.tensor(b)]).numpy(), a @ b,
                               rtol=1e-5)
    with pytest.raises(em.ShapeError, match=r"einsum: subscript 'j' has size 4 in one operand and 3"):
        em.einsum("ij,jk->ik", em.ones(3, 4), em.ones(3, 5))
    with pytest.raises(em.OpError, match="einsum: equation 'ij,jk->ik' names 2 operands but 1"):
        em.einsum("ij,jk->ik", em.ones(3, 4))
    with pytest.raises(em.ShapeError, match="do not match its shape"):
        em.einsum("ijk->i", em.ones(3, 4))


def test_matmul_second_derivative():
    a = em.randn(3, 4, dtype=em.float64, requires_grad=True)
    b = em.randn(4, 2, dtype=em.float64, requires_grad=True)
    (ga,) = em.autograd.grad(((a @ b) ** 2).sum(), [a], create_graph=True)
    (gb,) = em.autograd.grad(ga.sum(), [b])
    ta = torch.tensor(a.detach().numpy(), requires_grad=True)
    tb = torch.tensor(b.detach().numpy(), requires_grad=True)
    (tga,) = torch.autograd.grad(((ta @ tb) ** 2).sum(), [ta], create_graph=True)
    (tgb,) = torch.autograd.grad(tga.sum(), [tb])
    np.testing.assert_allclose(gb.numpy(), tgb.numpy(), rtol=1e-10)


def test_weight_gradients_are_c_contiguous():
    """PyTorch's layout contract: .grad is laid out like the parameter, even when the gradient
    was computed transposed (Linear's weight gradient is (x.T @ g).T)."""
    layer = em.nn.Linear(30, 20)
    layer(em.randn(8, 30)).sum().backward()
    assert layer.weight.grad.data.flags.c_contiguous
    assert layer.weight.grad.shape == layer.weight.shape


def test_weight_gradient_of_linear_on_3d_input_is_c_contiguous_and_matches_torch():
    layer = em.nn.Linear(6, 5)
    x = np.random.default_rng(1).standard_normal((3, 4, 6)).astype(np.float32)
    layer(em.tensor(x)).sum().backward()
    t = torch.nn.Linear(6, 5)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(layer.weight.data))
    t(torch.tensor(x)).sum().backward()
    assert layer.weight.grad.data.flags.c_contiguous
    np.testing.assert_allclose(layer.weight.grad.numpy(), t.weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_stacked_column_major_right_operands_match_torch():
    # attention's q @ k.transpose(-2, -1): a stack of small column-major matrices is copied to
    # row-major before the per-matrix GEMMs; a large or a row-major one is used as it is
    rng = np.random.default_rng(0)
    for b_shape in [(2, 3, 16, 8), (2, 3, 200, 100)]:
        q = rng.standard_normal(b_shape[:2] + (5, b_shape[2])).astype(np.float32)
        k = rng.standard_normal(b_shape[:2] + (b_shape[3], b_shape[2])).astype(np.float32)
        got = em.tensor(q) @ em.tensor(k).transpose(-2, -1)
        want = torch.tensor(q) @ torch.tensor(k).transpose(-2, -1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
