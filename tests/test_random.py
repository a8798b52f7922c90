"""ember.random: shapes and dtypes as PyTorch's factories give them, ranges, sample statistics, seeding and
generators.

The statistical checks allow 6 standard errors of the estimate for the sample size used (a false failure
about once in 5e8 runs); the seeds are fixed by conftest, so a run is reproducible anyway.
"""

import math

import numpy as np
import pytest
import torch

import ember as em

N = 200_000
Z = 6.0  # standard errors allowed


def _shape_dtype(e, t):
    assert e.shape == tuple(t.shape) and str(e.dtype)[6:] == str(t.dtype)[6:], (e, t)


SHAPE_CASES = [  # the same call in both libraries: (label, call(lib))
    ("rand(2, 3)", lambda m: m.rand(2, 3)),
    ("rand((2, 3))", lambda m: m.rand((2, 3))),
    ("rand([4])", lambda m: m.rand([4])),
    ("rand(0)", lambda m: m.rand(0)),
    ("rand float64", lambda m: m.rand(3, dtype=m.float64)),
    ("rand float16", lambda m: m.rand(3, dtype=m.float16)),
    ("randn(2, 3)", lambda m: m.randn(2, 3)),
    ("randn((1, 2, 3)) float64", lambda m: m.randn((1, 2, 3), dtype=m.float64)),
    ("randint(5, (3,))", lambda m: m.randint(5, (3,))),
    ("randint(2, 5, (2, 2))", lambda m: m.randint(2, 5, (2, 2))),
    ("randint size=", lambda m: m.randint(0, 5, size=(4,))),
    ("randint int32", lambda m: m.randint(0, 5, (3,), dtype=m.int32)),
    ("randint float32", lambda m: m.randint(0, 5, (3,), dtype=m.float32)),
    ("normal(0, 1, (2, 3))", lambda m: m.normal(0.0, 1.0, (2, 3))),
    ("normal(tensor mean, std)", lambda m: m.normal(m.zeros(3, 1), 1.0)),
    ("normal(mean, tensor std)", lambda m: m.normal(0.0, m.ones(4))),
    ("normal(tensor, tensor) broadcast", lambda m: m.normal(m.zeros(3, 1), m.ones(4))),
    ("normal float64 mean", lambda m: m.normal(m.zeros(2, dtype=m.float64), 1.0)),
    ("normal dtype=", lambda m: m.normal(0.0, 1.0, (2,), dtype=m.float64)),
    ("rand_like", lambda m: m.rand_like(m.zeros(2, 3, dtype=m.float64))),
    ("randn_like", lambda m: m.randn_like(m.zeros(2))),
    ("randperm(6)", lambda m: m.randperm(6)),
]


@pytest.mark.parametrize("label,call", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_shapes_and_dtypes_match_torch(label, call):
    _shape_dtype(call(em), call(torch))


def test_uniform_shape_and_dtype():
    # torch has only Tensor.uniform_(a, b); em.uniform(low, high, size) fills a new tensor the same way
    e, t = em.uniform(2.0, 3.0, (4, 2)), torch.empty(4, 2).uniform_(2.0, 3.0)
    _shape_dtype(e, t)
    assert em.uniform(0, 1, 3).shape == (3,) and em.uniform(size=(2,), dtype=em.float64).dtype == em.float64


def _mean_close(x, mean, std, what):
    x = np.asarray(x, np.float64)
    assert abs(x.mean() - mean) < Z * std / math.sqrt(x.size), (what, x.mean(), mean)


def _var_close(x, var, fourth_moment, what):
    """Sample variance within Z standard errors: sd(s^2) = sqrt((mu4 - var^2) / n)."""
    x = np.asarray(x, np.float64)
    assert abs(x.var() - var) < Z * math.sqrt((fourth_moment - var ** 2) / x.size), (what, x.var(), var)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_rand_range_and_statistics(dtype):
    x = em.rand(N, dtype=getattr(em, dtype)).numpy()
    assert x.dtype == np.dtype(dtype) and x.min() >= 0.0 and x.max() < 1.0
    _mean_close(x, 0.5, math.sqrt(1 / 12), "rand mean")
    _var_close(x, 1 / 12, 1 / 80, "rand var")  # uniform on [0, 1): mu4 = 1/80


def test_uniform_range_and_statistics():
    low, high = -2.0, 3.0
    x = em.uniform(low, high, (N,)).numpy()
    assert x.min() >= low and x.max() < high
    width = high - low
    _mean_close(x, (low + high) / 2, width / math.sqrt(12), "uniform mean")
    _var_close(x, width ** 2 / 12, width ** 4 / 80, "uniform var")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_randn_statistics(dtype):
    x = em.randn(N, dtype=getattr(em, dtype)).numpy()
    assert x.dtype == np.dtype(dtype)
    _mean_close(x, 0.0, 1.0, "randn mean")
    _var_close(x, 1.0, 3.0, "randn var")  # normal: mu4 = 3 sigma^4
    # tails: P(|z| > 3) = 0.0027, binomial standard error
    p = 0.0026998
    assert abs((np.abs(x) > 3).mean() - p) < Z * math.sqrt(p * (1 - p) / N)


def test_normal_with_scalar_and_tensor_parameters():
    x = em.normal(5.0, 2.0, (N,)).numpy()
    _mean_close(x, 5.0, 2.0, "normal mean")
    _var_close(x, 4.0, 3 * 16.0, "normal var")
    mean = em.tensor([[-10.0, 0.0, 10.0]]).expand(N // 4, 3)
    std = em.tensor([0.5, 1.0, 3.0])
    y = em.normal(mean, std).numpy()
    assert y.shape == (N // 4, 3)
    for col, (m, s) in enumerate([(-10.0, 0.5), (0.0, 1.0), (10.0, 3.0)]):
        _mean_close(y[:, col], m, s, f"normal column {col} mean")
        _var_close(y[:, col], s * s, 3 * s ** 4, f"normal column {col} var")


def test_randint_range_and_uniformity():
    low, high = -3, 4
    x = em.randint(low, high, (N,)).numpy()
    assert x.dtype == np.int64 and x.min() == low and x.max() == high - 1
    p = 1 / (high - low)
    counts = np.bincount(x - low, minlength=high - low)
    assert counts.size == high - low
    assert (np.abs(counts / N - p) < Z * math.sqrt(p * (1 - p) / N)).all(), counts
    assert set(np.unique(em.randint(2, (1000,)).numpy())) == {0, 1}  # randint(high, size)


def test_randperm_is_a_permutation():
    for n in (0, 1, 7, 100):
        assert sorted(em.randperm(n).tolist()) == list(range(n))


DRAWS = [  # every random function, drawing from the default generator or from `generator`
    lambda g: em.rand(3, generator=g),
    lambda g: em.randn(2, 2, generator=g),
    lambda g: em.randint(0, 100, (4,), generator=g),
    lambda g: em.normal(1.0, 2.0, (3,), generator=g),
    lambda g: em.uniform(-1.0, 1.0, (3,), generator=g),
    lambda g: em.randperm(5, generator=g),
    lambda g: em.bernoulli(em.full((4,), 0.5), generator=g),
]


def _sequence(generator=None):
    return [d(generator).tolist() for d in DRAWS]


def test_manual_seed_reproduces_every_function():
    em.manual_seed(123)
    first = _sequence()
    em.manual_seed(123)
    assert _sequence() == first  # the same numbers, in the same order, across the functions
    em.manual_seed(124)
    assert _sequence() != first
    em.manual_seed(123)
    em.rand(1)  # one extra draw shifts the stream
    assert _sequence() != first
    assert em.initial_seed() == 123


def test_generators_are_independent_streams():
    em.manual_seed(7)
    expected = _sequence()
    g1, g2 = em.Generator().manual_seed(99), em.Generator(99)
    em.manual_seed(7)
    got = []
    for draw in DRAWS:  # drawing from g1 in between leaves the global stream untouched
        draw(g1)
        got.append(draw(None).tolist())
    assert got == expected
    g1.manual_seed(99)
    assert _sequence(g1) == _sequence(g2)
    assert g2.initial_seed() == 99 and isinstance(em.Generator().initial_seed(), int)


def test_rng_state_resumes_the_stream():
    em.manual_seed(3)
    em.rand(5)
    state = em.get_rng_state()
    after = _sequence()
    em.manual_seed(1000)
    em.set_rng_state(state)
    assert _sequence() == after
    g = em.Generator(5)
    gs = g.get_state()
    a = em.randn(4, generator=g).tolist()
    g.set_state(gs)
    assert em.randn(4, generator=g).tolist() == a


def test_manual_seed_range_as_torch():
    # torch takes seeds in [-2**63, 2**64) and uses a negative one as its unsigned 64-bit value
    for seed in (0, -1, 2 ** 64 - 1, -(2 ** 63)):
        torch.manual_seed(seed)
        em.manual_seed(seed)
        assert em.initial_seed() == torch.initial_seed() == seed % 2 ** 64
    em.manual_seed(-1)
    a = em.rand(3).tolist()
    em.manual_seed(2 ** 64 - 1)
    assert em.rand(3).tolist() == a
    for bad in (2 ** 64, -(2 ** 63) - 1):
        with pytest.raises((RuntimeError, ValueError)):
            torch.manual_seed(bad)
        with pytest.raises(ValueError, match=r"manual_seed: the seed must fit in 64 bits"):
            em.manual_seed(bad)
    torch.manual_seed(0)


RANDOM_ERRORS = [  # (call taking the library, ember's message); torch refuses each one too
    (lambda m: m.randint(3, 3, (2,)), r"randint: low must be less than high .* got low=3, high=3"),
    (lambda m: m.randint(5, 2, (2,)), r"randint: low must be less than high"),
    (lambda m: m.randint(0, 5, (-1,)), r"randint: sizes must be non-negative"),
    (lambda m: m.rand(-1), r"rand: sizes must be non-negative, got \(-1,\)"),
    (lambda m: m.randn(2.5), r"randn: sizes must be integers, got 2.5"),
    (lambda m: m.rand(2, dtype=m.int64), r"rand: expected a floating-point dtype, got ember.int64"),
    (lambda m: m.randn(2, dtype=m.int32), r"randn: expected a floating-point dtype"),
    (lambda m: m.normal(0.0, -1.0, (2,)), r"normal: std must be >= 0, got -1.0"),
    (lambda m: m.rand_like(m.zeros(2, dtype=m.int64)), r"rand: expected a floating-point dtype"),
]


@pytest.mark.parametrize("call,message", RANDOM_ERRORS, ids=range(len(RANDOM_ERRORS)))
def test_random_errors(call, message):
    with pytest.raises((RuntimeError, TypeError, ValueError, NotImplementedError)):
        call(torch)
    with pytest.raises((TypeError, ValueError), match=message):
        call(em)


def test_uniform_bounds_checked():
    with pytest.raises(RuntimeError):
        torch.empty(2).uniform_(3.0, 2.0)
    with pytest.raises(ValueError, match=r"uniform: low must be <= high, got low=3.0, high=2.0"):
        em.uniform(3.0, 2.0, (2,))


def test_requires_grad_on_random_factories():
    for t in (em.rand(2, requires_grad=True), em.randn(2, requires_grad=True),
              em.normal(0.0, 1.0, (2,), requires_grad=True), em.uniform(0, 1, (2,), requires_grad=True)):
        assert t.requires_grad and t.is_leaf
    assert not em.rand(2).requires_grad and not em.randint(0, 3, (2,)).requires_grad


def test_samples_stay_below_high_after_rounding_to_narrow_dtypes():
    # float64 draws just below 1.0 round to 1.0 in float16 (and just below `high` in float32): still [low, high)
    assert em.rand(N, dtype=em.float16).numpy().max() < 1.0
    hi = 1.0 + 2.0 ** -20
    x = em.uniform(1.0, hi, (1000,), dtype=em.float32).numpy()  # float32 has only 2**3 values in there
    assert x.max() < np.float32(hi) and x.min() >= 1.0
