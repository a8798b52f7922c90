import numpy as np
import pytest
import torch

import ember as em
from opcheck import check, check_fd

SHAPES_BINARY = [
    [(3, 4), (3, 4)],
    [(3, 4), (4,)],        # broadcast trailing
    [(2, 1, 4), (3, 1)],   # broadcast both ways
    [(), (2, 3)],          # 0-d
    [(0, 3), (3,)],        # zero-size
    [(5,), (1,)],
]

BINARY = [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
    ("maximum", lambda a, b: a.maximum(b) if hasattr(a, "maximum") else np.maximum(a, b)),
    ("minimum", lambda a, b: a.minimum(b)),
]


@pytest.mark.parametrize("name,fn", BINARY)
@pytest.mark.parametrize("shapes", SHAPES_BINARY)
def test_binary_matches_torch(name, fn, shapes):
    kw = dict(low=0.5, high=2.0) if name == "div" else {}
    check(fn, fn, shapes, **kw)


@pytest.mark.parametrize("name,fn", BINARY)
def test_binary_finite_differences(name, fn):
    check_fd(fn, [(2, 3), (3,)], low=0.5 if name == "div" else None, high=2.0 if name == "div" else None)


def test_pow():
    check(lambda a, b: a ** b, lambda a, b: a ** b, [(3, 4), (3, 4)], low=0.5, high=2.0)
    check(lambda a: a ** 3, lambda a: a ** 3, [(3, 4)])
    check(lambda a: 2.0 ** a, lambda a: 2.0 ** a, [(3, 4)])
    check_fd(lambda a, b: a ** b, [(2, 3), (3,)], low=0.5, high=2.0)


UNARY = [
    ("exp", None), ("log", (0.1, 3.0)), ("log1p", (0.0, 3.0)), ("expm1", None),
    ("sqrt", (0.1, 3.0)), ("rsqrt", (0.1, 3.0)), ("abs", None), ("sin", None), ("cos", None),
    ("tanh", None), ("sigmoid", None), ("relu", None), ("neg", None), ("erf", None),
    ("asin", (-0.9, 0.9)), ("acos", (-0.9, 0.9)), ("atan", None),
]


@pytest.mark.parametrize("name,rng", UNARY)
@pytest.mark.parametrize("shape", [(3, 4), (), (0,), (2, 3, 2)])
def test_unary_matches_torch(name, rng, shape):
    low, high = rng if rng else (None, None)
    check(lambda x: getattr(em, name)(x), lambda x: getattr(torch, name)(x), [shape], low=low, high=high)


@pytest.mark.parametrize("name,rng", UNARY)
def test_unary_finite_differences(name, rng):
    low, high = rng if rng else (None, None)
    check_fd(lambda x: getattr(em, name)(x), [(2, 3)], low=low, high=high)


ACTIVATIONS = [
    (lambda x: em.leaky_relu(x, 0.1), lambda x: torch.nn.functional.leaky_relu(x, 0.1)),
    (lambda x: em.elu(x, 0.7), lambda x: torch.nn.functional.elu(x, 0.7)),
    (em.gelu, torch.nn.functional.gelu),
    (lambda x: em.gelu(x, approximate="tanh"), lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
    (em.silu, torch.nn.functional.silu),
    (em.softplus, torch.nn.functional.softplus),
    (lambda x: em.softplus(x * 30, beta=2, threshold=5),
     lambda x: torch.nn.functional.softplus(x * 30, beta=2, threshold=5)),
    (lambda x: em.clamp(x, -0.5, 0.5), lambda x: torch.clamp(x, -0.5, 0.5)),
    (lambda x: em.clamp(x, min=0.1), lambda x: torch.clamp(x, min=0.1)),
    (lambda x: x.clip(max=0.2), lambda x: x.clip(max=0.2)),
    (em.sign, torch.sign),
]


@pytest.mark.parametrize("i", range(len(ACTIVATIONS)))
def test_activations(i):
    ef, tf = ACTIVATIONS[i]
    check(ef, tf, [(4, 5)])
    check_fd(ef, [(3, 4)])


def test_where_and_comparisons():
    cond = np.array([[True, False, True], [False, True, False]])
    check(lambda a, b: em.where(em.tensor(cond), a, b), lambda a, b: torch.where(torch.tensor(cond), a, b),
          [(2, 3), (3,)])
    check_fd(lambda a, b: em.where(em.tensor(cond), a, b), [(2, 3), (3,)])
    for op in ["__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"]:
        fn = lambda a, b, op=op: getattr(a, op)(b)
        check(fn, fn, [(3, 4), (4,)], grad=False)


def test_promotion_follows_torch():
    cases = [
        (em.ones(3, dtype=em.float32), 2.5),
        (em.ones(3, dtype=em.int32), 2.5),
        (em.ones(3, dtype=em.int32), 2),
        (em.ones(3, dtype=em.float16), 2.5),
        (em.ones(3, dtype=em.bool), 2),
        (em.ones(3, dtype=em.int64), em.ones(3, dtype=em.float32)),
        (em.ones(3, dtype=em.float32), em.ones(3, dtype=em.float64)),
        (em.ones(3, dtype=em.int32), em.tensor(1.5, dtype=em.float64)),
        (em.ones(3, dtype=em.float16), em.tensor(1.5, dtype=em.float64)),
        (em.ones(3, dtype=em.uint8), em.ones(3, dtype=em.int8)),
    ]
    for a, b in cases:
        ta = torch.tensor(a.numpy())
        tb = torch.tensor(b.numpy()) if isinstance(b, em.Tensor) else b
        for op in ["__add__", "__mul__", "__truediv__", "__radd__"]:
            got = getattr(a, op)(b).dtype.name
            want = str(getattr(ta, op)(tb).dtype).split(".")[-1]
            assert got == want, (a.dtype, b, op, got, want)


def test_integer_division_and_modulo_match_torch():
    a = np.array([7, -7, 5, -3], dtype=np.int64)
    b = np.array([2, 2, -3, 5], dtype=np.int64)
    for op in ["__floordiv__", "__mod__", "__truediv__"]:
        got = getattr(em.tensor(a), op)(em.tensor(b))
        want = getattr(torch.tensor(a), op)(torch.tensor(b))
        np.testing.assert_allclose(got.numpy(), want.numpy())
        assert got.dtype.name == str(want.dtype).split(".")[-1]
    check(lambda a, b: a % b, lambda a, b: a % b, [(3, 4), (3, 4)], low=0.5, high=3.0)


def test_reflected_scalars():
    x = em.tensor([1.0, 2.0, 4.0], requires_grad=True)
    y = (3 - x) * 2 + 1 / x + 2 ** x - (-x)
    y.sum().backward()
    t = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    ((3 - t) * 2 + 1 / t + 2 ** t - (-t)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)
    want = ((3 - t) * 2 + 1 / t + 2 ** t - (-t)).detach().numpy()
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6)


def test_numpy_array_on_the_left_defers_to_tensor():
    x = em.tensor([1.0, 2.0])
    out = np.array([3.0, 4.0], dtype=np.float32) * x
    assert isinstance(out, em.Tensor)
    np.testing.assert_allclose(out.numpy(), [3.0, 8.0])


def test_logical_ops():
    a = em.tensor([True, False, True])
    b = em.tensor([True, True, False])
    assert (a & b).tolist() == [True, False, False]
    assert (a | b).tolist() == [True, True, True]
    assert (a ^ b).tolist() == [False, True, True]
    assert (~a).tolist() == [False, True, False]
    assert em.logical_not(a).tolist() == [False, True, False]
    assert (em.tensor([6, 3]) & em.tensor([3, 5])).tolist() == [2, 1]


def test_tril_triu():
    check(lambda x: em.tril(x), torch.tril, [(4, 5)])
    check(lambda x: em.triu(x, 1), lambda x: torch.triu(x, 1), [(2, 4, 4)])


def test_bool_inputs_keep_torch_dtypes():
    b = np.array([[True, False, True], [False, True, True]])
    for fn in [lambda x: x.clamp(0.5, 3.5), lambda x: x.sign(), lambda x: x.tril(), lambda x: x.triu(1)]:
        check(fn, fn, [b])


@pytest.mark.parametrize("shapes,dtype", [
    (((64, 70), (64, 70), (64, 70)), np.float32), (((64, 70), (64, 70), ()), np.float32),
    (((64, 70), (), (64, 70)), np.float64), (((100, 1), (1, 200), (100, 200)), np.float32),
    (((100, 200), (200,), ()), np.int64), (((5000,), (5000,), ()), np.int32)])
def test_where_on_large_arrays_is_exactly_numpys(shapes, dtype):
    """Large where() selects bit patterns branch-free: the values must be np.where's, bit for
    bit (NaN, inf, -0.0), with broadcasting, and the gradient must follow torch's."""
    rng = np.random.default_rng(0)
    c = rng.random(shapes[0]) > 0.5
    a = (rng.standard_normal(shapes[1]) * 10).astype(dtype)
    b = (rng.standard_normal(shapes[2]) * 10).astype(dtype)
    if a.dtype.kind == "f" and a.size > 5:
        a.reshape(-1)[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    got = em.where(em.tensor(c), em.tensor(a), em.tensor(b)).numpy()
    want = np.where(c, a, b)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    np.testing.assert_array_equal(em.where(em.tensor(c), em.tensor(a), -0.0).numpy().view(np.uint8)
                                  if a.dtype.kind == "f" else got.view(np.uint8),
                                  np.where(c, a, np.array(-0.0, a.dtype)).view(np.uint8)
                                  if a.dtype.kind == "f" else want.view(np.uint8))
    if a.dtype.kind == "f":
        ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        ea, eb = em.tensor(a, requires_grad=True), em.tensor(b, requires_grad=True)
        torch.where(torch.tensor(c), ta, tb).sum().backward()
        em.where(em.tensor(c), ea, eb).sum().backward()
        np.testing.assert_array_equal(ea.grad.numpy(), ta.grad.numpy())
        np.testing.assert_array_equal(eb.grad.numpy(), tb.grad.numpy())
