"""ember.creation against PyTorch: every factory's shape forms, dtype (given and inferred) and values, and the
errors for sizes and ranges PyTorch refuses too."""

import numpy as np
import pytest
import torch

import ember as em

I32, F64, I64, BOOL, F16 = "int32", "float64", "int64", "bool", "float16"


def _dt(lib, name):
    return None if name is None else getattr(lib, name)


ULPS = {np.float16: 1e-3, np.float32: 2e-7, np.float64: 5e-16}


def _check(e, t, exact=True):
    """Same dtype, shape and values; ``exact=False`` allows the last-ulp differences of float kernels (torch's
    vectorized arange/linspace round some elements differently), scaled by the largest magnitude."""
    assert str(e.dtype).removeprefix("ember.") == str(t.dtype).removeprefix("torch."), (e.dtype, t.dtype)
    assert e.shape == tuple(t.shape), (e.shape, t.shape)
    a, b = e.numpy(), t.numpy()
    if exact or a.dtype.kind != "f":
        np.testing.assert_array_equal(a, b)
    else:
        scale = max(1.0, float(np.abs(b).max(initial=0)))
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * ULPS[a.dtype.type] * scale)


FACTORIES = [  # (label, call taking the library and a dtype name, dtype names to try)
    ("zeros(2, 3)", lambda m, d: m.zeros(2, 3, dtype=_dt(m, d)), [None, I32, F64, BOOL]),
    ("zeros((2, 3))", lambda m, d: m.zeros((2, 3), dtype=_dt(m, d)), [None, I64]),
    ("zeros([4])", lambda m, d: m.zeros([4], dtype=_dt(m, d)), [None]),
    ("zeros(())", lambda m, d: m.zeros((), dtype=_dt(m, d)), [None]),
    ("zeros(0, 3)", lambda m, d: m.zeros(0, 3, dtype=_dt(m, d)), [None]),
    ("ones(3)", lambda m, d: m.ones(3, dtype=_dt(m, d)), [None, I32, F16, BOOL]),
    ("ones((1, 2, 1))", lambda m, d: m.ones((1, 2, 1), dtype=_dt(m, d)), [None]),
    ("full((2, 2), 7)", lambda m, d: m.full((2, 2), 7, dtype=_dt(m, d)), [None, F64, BOOL]),
    ("full((2,), 1.5)", lambda m, d: m.full((2,), 1.5, dtype=_dt(m, d)), [None, I64, F16]),
    ("full([3], True)", lambda m, d: m.full([3], True, dtype=_dt(m, d)), [None, I32]),
    ("full((2,), np.int32(3))", lambda m, d: m.full((2,), np.int32(3), dtype=_dt(m, d)), [None]),
    ("full((2,), np.float64(2.5))", lambda m, d: m.full((2,), np.float64(2.5), dtype=_dt(m, d)), [None]),
    ("full((2,), 0-d int tensor)", lambda m, d: m.full((2,), m.tensor(4), dtype=_dt(m, d)), [None]),
    ("zeros_like(int32)", lambda m, d: m.zeros_like(m.ones(2, 3, dtype=m.int32), dtype=_dt(m, d)), [None, F64]),
    ("ones_like(float64)", lambda m, d: m.ones_like(m.zeros(4, dtype=m.float64), dtype=_dt(m, d)), [None, I64]),
    ("full_like(int64, 2.7)", lambda m, d: m.full_like(m.zeros(3, dtype=m.int64), 2.7, dtype=_dt(m, d)),
     [None, F64]),
    ("eye(3)", lambda m, d: m.eye(3, dtype=_dt(m, d)), [None, I64, BOOL]),
    ("eye(2, 4)", lambda m, d: m.eye(2, 4, dtype=_dt(m, d)), [None]),
    ("eye(4, 2)", lambda m, d: m.eye(4, 2, dtype=_dt(m, d)), [None]),
    ("eye(0)", lambda m, d: m.eye(0, dtype=_dt(m, d)), [None]),
    ("eye(1, 0)", lambda m, d: m.eye(1, 0, dtype=_dt(m, d)), [None]),
]


@pytest.mark.parametrize("label,make,dtypes", FACTORIES, ids=[f[0] for f in FACTORIES])
def test_factories_match_torch(label, make, dtypes):
    for dtype in dtypes:
        _check(make(em, dtype), make(torch, dtype))


def test_empty_and_empty_like_shapes_and_dtypes():
    for shape, dtype in [((2, 3), None), ((4,), I32), ((), F64)]:
        e, t = em.empty(shape, dtype=_dt(em, dtype)), torch.empty(shape, dtype=_dt(torch, dtype))
        assert e.shape == tuple(t.shape) and str(e.dtype)[6:] == str(t.dtype)[6:]
    assert em.empty(2, 3).shape == (2, 3)
    assert em.empty_like(em.zeros(2, dtype=em.int16)).dtype == em.int16


ARANGES = [  # arguments, with torch.arange's endpoints, dtypes and float/int inference
    (5,), (5.0,), (0,), (1, 4), (-3, 3), (0, 1, 0.1), (0, 1, 0.3), (5, 0, -1), (1, -1, -0.5), (0.5, 3),
    (10, 11, 0.1), (-1, 1, 0.1), (0, 1, 1 / 3), (3, 3), (2.5, -2.5, -1.25), (np.int32(4),), (np.float64(2),),
    (0, 10, 3), (10, 0, -3), (-2.5, 2, 1), (1e8, 1e8 + 8, 1.0),
]
ARANGE_DTYPES = [None, I64, I32, F64, F16]


@pytest.mark.parametrize("args", ARANGES, ids=str)
def test_arange_matches_torch(args):
    for dtype in ARANGE_DTYPES:
        try:
            # With an integer dtype torch truncates the bounds and step first for int64 but not for int32
            # (arange(-2.5, 2, 1, dtype=int32) has 5 elements, arange(0, 1, 0.1, dtype=int32) ten zeros);
            # ember truncates first for every integer dtype, so int32 is compared with torch's int64 rule.
            t = torch.arange(*args, dtype=torch.int64).int() if dtype == I32 else \
                torch.arange(*args, dtype=_dt(torch, dtype))
        except (RuntimeError, ValueError):  # e.g. an integer dtype truncates step 0.1 to 0
            with pytest.raises(ValueError, match="arange: step must be nonzero"):
                em.arange(*args, dtype=_dt(em, dtype))
            continue
        _check(em.arange(*args, dtype=_dt(em, dtype)), t, exact=False)


def test_arange_tensor_bounds_infer_dtype_as_torch():
    _check(em.arange(em.tensor(3.0)), torch.arange(torch.tensor(3.0)))
    _check(em.arange(em.tensor(1), em.tensor(4)), torch.arange(torch.tensor(1), torch.tensor(4)))


FACTORY_ERRORS = [  # (call taking the library, ember's message); torch refuses each one too
    (lambda m: m.zeros(-1), r"zeros: sizes must be non-negative, got \(-1,\)"),
    (lambda m: m.ones(2, -3), r"ones: sizes must be non-negative, got \(2, -3\)"),
    (lambda m: m.empty((-1, 2)), r"empty: sizes must be non-negative"),
    (lambda m: m.zeros(2.0), r"zeros: sizes must be integers, got 2.0"),
    (lambda m: m.ones((2, 1.5)), r"ones: sizes must be integers"),
    (lambda m: m.full((-2,), 1.0), r"full: sizes must be non-negative"),
    (lambda m: m.eye(-1), r"eye: sizes must be non-negative"),
    (lambda m: m.eye(2, -1), r"eye: sizes must be non-negative"),
    (lambda m: m.arange(0, 3, 0), r"arange: step must be nonzero, got step=0"),
    (lambda m: m.arange(0, 1, 0.5, dtype=m.int64), r"arange: step must be nonzero, got step=0 \(after truncation"),
    (lambda m: m.arange(0, -3), r"arange: the step's sign does not lead from start to end.*use a negative step"),
    (lambda m: m.arange(3, 0, 1), r"use a negative step"),
    (lambda m: m.arange(0, 3, -1), r"use a positive step"),
    (lambda m: m.arange(0, float("nan")), r"arange: start and end must be finite"),
    (lambda m: m.arange(0, float("inf")), r"arange: start and end must be finite"),
    (lambda m: m.linspace(0, 1, -1), r"linspace: steps must be a non-negative int, got -1"),
    (lambda m: m.linspace(0, 1, 2.5), r"linspace: steps must be a non-negative int, got 2.5"),
    (lambda m: m.zeros(2, dtype=m.int64, requires_grad=True), r"only floating-point tensors can require gradients"),
]


@pytest.mark.parametrize("call,message", FACTORY_ERRORS, ids=range(len(FACTORY_ERRORS)))
def test_factory_errors(call, message):
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        call(torch)
    with pytest.raises((TypeError, ValueError, RuntimeError), match=message):
        call(em)


LINSPACES = [(0, 1, 5), (0, 1, 1), (0, 1, 0), (2, -2, 5), (0, 10, 5), (-3, 11, 13), (0.5, 0.5, 3), (0, 1, 7),
             (1e-3, 1e3, 4), (-5, 5, 4)]


@pytest.mark.parametrize("args", LINSPACES, ids=str)
def test_linspace_and_logspace_match_torch(args):
    exact64 = torch.linspace(*args, dtype=torch.float64).numpy()
    for dtype in (None, F64, I64, I32):
        e, t = em.linspace(*args, dtype=_dt(em, dtype)), torch.linspace(*args, dtype=_dt(torch, dtype))
        if dtype in (I64, I32):
            # integer dtypes truncate float64 values; torch's fused multiply-add can land a value that is exactly
            # an integer (linspace(-3, 11, 13)[6] == 4) one ulp below it, so only there may the two differ by 1
            knife_edge = np.abs(exact64 - np.round(exact64)) < 1e-12
            assert e.dtype == getattr(em, dtype) and e.shape == tuple(t.shape)
            diff = np.abs(e.numpy().astype(np.int64) - t.numpy().astype(np.int64))
            assert (diff[~knife_edge] == 0).all() and (diff <= 1).all(), (e.tolist(), t.tolist())
            continue
        _check(e, t, exact=False)
    if abs(args[1]) < 20:
        _check(em.logspace(*args), torch.logspace(*args), exact=False) if args[2] else None


def test_factories_requires_grad():
    for e, t in [(em.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)),
                 (em.ones((2,), dtype=em.float64, requires_grad=True), torch.ones(2, requires_grad=True)),
                 (em.full((2,), 1.5, requires_grad=True), torch.full((2,), 1.5, requires_grad=True)),
                 (em.eye(2, requires_grad=True), torch.eye(2, requires_grad=True)),
                 (em.arange(3.0, requires_grad=True), torch.arange(3.0, requires_grad=True)),
                 (em.linspace(0, 1, 3, requires_grad=True), torch.linspace(0, 1, 3, requires_grad=True))]:
        assert e.requires_grad and t.requires_grad and e.is_leaf and e.grad is None
    assert not em.zeros(2).requires_grad and not em.zeros_like(em.zeros(2, requires_grad=True)).requires_grad
