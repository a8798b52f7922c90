import numpy as np
import pytest
import torch

import ember as em
from opcheck import check, check_fd

# (shape, dim) pairs: all dims, int, negative, tuples, 0-d, size-1 and zero-size dims
DIM_CASES = [
    ((3, 4), None), ((3, 4), 0), ((3, 4), -1), ((2, 3, 4), (0, 2)), ((2, 3, 4), (-1, -2)),
    ((2, 3, 4), 1), ((), None), ((), 0), ((1, 4), 0), ((5,), -1), ((0, 3), 1), ((0, 3), 0),
]

# reductions whose torch and ember spellings are identical: fn(x, dim, keepdim)
DIM_REDUCTIONS = {
    "sum": lambda x, d, k: x.sum() if d is None and not k else x.sum(d, keepdim=k),
    "mean": lambda x, d, k: x.mean() if d is None and not k else x.mean(d, keepdim=k),
    "amax": lambda x, d, k: x.amax(() if d is None else d, keepdim=k),
    "amin": lambda x, d, k: x.amin(() if d is None else d, keepdim=k),
    "logsumexp": lambda x, d, k: x.logsumexp(tuple(range(x.ndim)) if d is None else d, keepdim=k),
    "var": lambda x, d, k: x.var(d, keepdim=k),
    "std0": lambda x, d, k: x.std(d, correction=0, keepdim=k),
    "var_unbiased_false": lambda x, d, k: x.var(d, unbiased=False, keepdim=k),
    "norm2": lambda x, d, k: x.norm(2, d, keepdim=k),
    "norm1": lambda x, d, k: x.norm(1, d, keepdim=k),
    "norm_inf": lambda x, d, k: x.norm(float("inf"), d, keepdim=k),
    "norm3": lambda x, d, k: x.norm(3, d, keepdim=k),
    "norm0": lambda x, d, k: x.norm(0, d, keepdim=k),
    "norm_neginf": lambda x, d, k: x.norm(-float("inf"), d, keepdim=k),
}
NEEDS_ELEMENTS = {"amax", "amin", "norm_inf", "norm_neginf"}  # torch refuses to reduce an empty dim


def _reduces_empty(shape, dim):
    if dim is None:
        return 0 in shape
    dims = dim if isinstance(dim, tuple) else (dim,)
    return any(shape[d] == 0 for d in dims) if shape else False


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("shape,dim", DIM_CASES)
@pytest.mark.parametrize("name", sorted(DIM_REDUCTIONS))
def test_dim_reductions_match_torch(name, shape, dim, keepdim):
    fn = DIM_REDUCTIONS[name]
    f = lambda x: fn(x, dim, keepdim)
    if name in NEEDS_ELEMENTS and _reduces_empty(shape, dim):
        with pytest.raises(em.OpError, match=name.split("_")[0].replace("norm", "am")):
            f(em.zeros(shape))
        return
    # amax/amin/norm_inf: inputs without ties (torch and ember split tie gradients alike,
    # but random data keeps the check about the ordinary case)
    check(f, f, [shape])


@pytest.mark.parametrize("name", sorted(DIM_REDUCTIONS))
def test_dim_reductions_finite_differences(name):
    fn = DIM_REDUCTIONS[name]
    check_fd(lambda x: fn(x, (0, 2), False), [(2, 3, 2)])
    check_fd(lambda x: fn(x, -1, True), [(3, 4)])


def test_integer_and_bool_sums_follow_torch_dtypes():
    for a in [np.arange(12, dtype=np.int32).reshape(3, 4), np.array([[True, False], [True, True]]),
              np.arange(6, dtype=np.uint8).reshape(2, 3)]:
        for f in [lambda x: x.sum(), lambda x: x.sum(0), lambda x: x.prod(), lambda x: x.prod(1),
                  lambda x: x.cumsum(0), lambda x: x.cumprod(-1)]:
            check(f, f, [a])
    x = em.ones(2, 3, dtype=em.float16)
    assert x.sum().dtype == em.float16
    assert em.sum(em.ones(3), dtype=em.float64).dtype == em.float64
    with pytest.raises(em.OpError, match="mean"):
        em.arange(4).mean()
    f = lambda x: x.mean(dtype=(em if isinstance(x, em.Tensor) else torch).float64)
    check(f, f, [np.arange(6, dtype=np.int64)])


WITH_ZEROS = [
    np.array([[1.5, 0.0, 2.0], [0.0, 0.0, 3.0], [1.5, 2.0, -1.0], [0.0, 4.0, 0.5]]),
    np.array([0.0]),
    np.array([[[2.0, 0.0], [0.0, 3.0]], [[0.5, 1.0], [-2.0, 0.0]]]),
]


@pytest.mark.parametrize("i", range(len(WITH_ZEROS)))
def test_prod_and_cumprod_with_zeros(i):
    a = WITH_ZEROS[i]
    fns = [lambda x: x.prod(), lambda x: x.prod(0), lambda x: x.prod(-1, keepdim=True),
           lambda x: x.cumprod(0), lambda x: x.cumprod(-1)]
    for f in fns:
        check(f, f, [a.astype(np.float32)])
        check_fd(f, [a.copy()])


@pytest.mark.parametrize("shape,dim", [((3, 4), 0), ((2, 3, 4), -1), ((2, 3, 4), 1), ((1, 4), 0),
                                       ((), 0), ((0, 3), 1), ((0, 3), 0), ((5,), 0)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_prod_cumsum_cumprod(shape, dim, keepdim):
    fns = [lambda x: x.prod(dim, keepdim=keepdim), lambda x: x.cumsum(dim),
           lambda x: x.cumprod(dim), lambda x: x.prod()]
    for f in fns:
        check(f, f, [shape])
    check_fd(lambda x: x.cumprod(-1) * x.prod(0, keepdim=True), [(2, 3)])
    check_fd(lambda x: x.cumsum(0), [(3, 2)])


@pytest.mark.parametrize("shape,dim", [((3, 4), 0), ((3, 4), -1), ((2, 3, 4), 1), ((1, 4), 0),
                                       ((), 0), ((0, 3), 1), ((5,), 0)])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_along_dim(name, shape, dim, keepdim):
    f = lambda x: getattr(x, name)(dim, keepdim=keepdim)
    check(f, f, [shape])
    out = f(em.randn(*shape)) if shape != (0, 3) else f(em.zeros(0, 3))
    assert out.values is out[0] and out.indices is out[1]
    assert out.indices.dtype == em.int64
    check_fd(lambda x: getattr(x, name)(dim, keepdim=keepdim).values, [shape])


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_full_and_elementwise(name):
    full = lambda x: getattr(x, name)()
    check(full, full, [(3, 4)])
    check(full, full, [()])
    # ties: the gradient is split evenly, as torch does for a full reduction
    tied = np.array([[1.0, 3.0, 3.0], [-2.0, 3.0, -2.0]], np.float32)
    check(full, full, [tied])
    check(lambda x: x.amax(1), lambda x: x.amax(1), [tied])
    pair = lambda a, b: getattr(a, name)(b)
    check(pair, pair, [(3, 4), (4,)])
    check(pair, pair, [(2, 1, 3), (4, 1)])
    check(lambda a, b: getattr(em, name)(a, b), lambda a, b: getattr(torch, name)(a, b),
          [(3, 4), (3, 4)])
    check_fd(pair, [(2, 3), (3,)])
    with pytest.raises(em.OpError, match="no elements"):
        full(em.zeros(0, 3))


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("dim", [None, 0, -1, 1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax_argmin(name, dim, keepdim):
    ties = np.array([[[1.0, 5.0, 5.0], [0.0, -1.0, -1.0]], [[2.0, 2.0, 2.0], [7.0, 0.0, 7.0]]],
                    np.float32)
    f = lambda x: getattr(x, name)(dim, keepdim=keepdim)
    check(f, f, [ties], grad=False)
    check(f, f, [(3, 4, 2)], grad=False)
    check(f, f, [(1, 3, 1)], grad=False)
    if dim is not None:
        check(f, f, [np.arange(24, dtype=np.int64).reshape(2, 3, 4) % 5])
        if dim != 0:
            check(f, f, [np.zeros((0, 3, 2), np.float32)], grad=False)
    # the indices pick the values max/min return
    x = em.tensor(ties)
    assert np.array_equal(getattr(x, name)().numpy(), getattr(torch.tensor(ties), name)().numpy())


LSE_INF = np.array([[-np.inf, -np.inf, -np.inf], [0.5, -np.inf, 2.0], [1.0, 2.0, 3.0],
                    [np.inf, 0.0, 1.0]], np.float32)


def test_logsumexp_with_infinities():
    for dim in [1, -1, (0, 1)]:
        for keepdim in [False, True]:
            f = lambda x, d=dim, k=keepdim: x.logsumexp(d, keepdim=k)
            check(f, f, [LSE_INF[1:3]])                  # finite results, -inf entries
            check(f, f, [LSE_INF], grad=False)           # -inf and +inf rows
    # the all -inf row: value -inf, gradient nan where torch has nan
    f = lambda x: x.logsumexp(1)
    check(f, f, [LSE_INF[:3]])
    big = np.array([[1000.0, 1000.0], [-1000.0, -1001.0]], np.float32)
    check(f, f, [big])
    check_fd(lambda x: x.logsumexp(0), [(3, 2)])


@pytest.mark.parametrize("name", ["all", "any"])
def test_all_any(name):
    a = np.array([[True, False, True], [True, True, True]])
    f0 = np.array([[0.0, 1.5], [2.0, -1.0]], np.float32)
    for dim in [None, 0, 1, -1, (0, 1)]:
        for keepdim in [False, True]:
            if dim is None and keepdim:
                continue
            f = (lambda x: getattr(x, name)()) if dim is None else \
                (lambda x, d=dim, k=keepdim: getattr(x, name)(d, keepdim=k))
            check(f, f, [a])
            check(f, f, [f0], grad=False)
    check(lambda x: getattr(x, name)(1), lambda x: getattr(x, name)(1), [np.zeros((0, 3), bool)])
    check(lambda x: getattr(x, name)(), lambda x: getattr(x, name)(), [np.zeros((0, 3), bool)])


def test_norm_at_zero_has_zero_gradient():
    for p in [2, 3, 1, "fro"]:
        z = np.zeros((2, 3), np.float32)
        z[1] = [1.0, -2.0, 0.5]
        f = lambda x, p=p: x.norm(p, 1)
        check(f, f, [z])
        f = lambda x, p=p: x.norm(p)
        check(f, f, [np.zeros(3, np.float32)])


def test_var_std_variants():
    cases = [
        lambda x: x.var(), lambda x: x.std(), lambda x: x.var(0, unbiased=False),
        lambda x: x.std(1, unbiased=True, keepdim=True), lambda x: x.var((0, 1), correction=0),
        lambda x: x.std(dim=-1, correction=2), lambda x: x.var(dim=None, correction=0, keepdim=True),
    ]
    for f in cases:
        check(f, f, [(3, 5)])
        check_fd(f, [(3, 4)])
    check(lambda x: em.var_mean(x, 1), lambda x: torch.var_mean(x, 1), [(3, 4)])


def test_reduction_errors_name_the_op():
    with pytest.raises(em.OpError, match=r"sum: dim 2 is out of range"):
        em.ones(2, 3).sum(2)
    with pytest.raises(em.OpError, match="names a dimension twice"):
        em.ones(2, 3).sum((0, -2))
    with pytest.raises(em.OpError, match="argmax"):
        em.zeros(0).argmax()
    with pytest.raises(em.OpError, match="norm: p must be a number or 'fro', got 'nuc'"):
        em.ones(2, 2).norm("nuc")
    with pytest.raises(em.OpError, match="norm: expects a floating-point tensor"):
        em.arange(3).norm()


def test_prod_cumprod_second_derivatives_with_zeros():
    a = np.array([[1.5, 0.0, 2.0, -1.0], [0.5, 3.0, 0.0, 0.0], [1.0, 2.0, -0.5, 0.25]])
    for name, f in [("prod", lambda x: x.prod(-1)), ("cumprod", lambda x: x.cumprod(-1))]:
        x = em.tensor(a, requires_grad=True)
        (g,) = em.autograd.grad(f(x).sum(), [x], create_graph=True)
        (h,) = em.autograd.grad((g * g).sum(), [x])
        t = torch.tensor(a, requires_grad=True)
        (gt,) = torch.autograd.grad(f(t).sum(), [t], create_graph=True)
        (ht,) = torch.autograd.grad((gt * gt).sum(), [t])
        np.testing.assert_allclose(g.detach().numpy(), gt.detach().numpy(), err_msg=name)
        np.testing.assert_allclose(h.numpy(), ht.numpy(), err_msg=name)
