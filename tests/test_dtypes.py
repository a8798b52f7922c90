"""ember.dtypes against PyTorch: the dtype objects, dtype specs, and type promotion.

Promotion is checked exhaustively: every pair of the dtypes PyTorch computes with, as dimensioned and 0-d
tensors, and every dtype against Python bool/int/float scalars on either side, for + - * / // and comparisons.
The result dtype must equal the one PyTorch's op gives (and so torch.result_type), and where PyTorch refuses
(bool - x, bool // bool) ember must refuse too.
"""

import itertools
import operator

import numpy as np
import pytest
import torch

import ember as em
from ember.errors import OpError

# (ember dtype, torch dtype): those both frameworks compute with (PyTorch has no uint16/32/64 arithmetic)
PAIRS = [
    (em.bool, torch.bool), (em.uint8, torch.uint8), (em.int8, torch.int8), (em.int16, torch.int16),
    (em.int32, torch.int32), (em.int64, torch.int64), (em.float16, torch.float16),
    (em.float32, torch.float32), (em.float64, torch.float64),
]
TORCH_OF = {e: t for e, t in PAIRS}
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
       "//": operator.floordiv, "<": operator.lt, "==": operator.eq}
SCALARS = [True, 3, 2.5]


def _values(dtype, zero_d):
    arr = np.array([5, 3], dtype=dtype.np)
    return arr[0].copy() if zero_d else arr


def _run(fn):
    try:
        return fn(), None
    except (RuntimeError, NotImplementedError, OpError, TypeError) as exc:
        return None, exc


def _compare(e_fn, t_fn, label, problems):
    (e_out, e_err), (t_out, t_err) = _run(e_fn), _run(t_fn)
    if t_err is not None or e_err is not None:
        if (t_err is None) != (e_err is None):
            problems.append(f"{label}: torch {t_err or t_out.dtype!s:.60}, ember {e_err or e_out.dtype!s:.60}")
        return
    if TORCH_OF[e_out.dtype] != t_out.dtype:
        problems.append(f"{label}: ember {e_out.dtype}, torch {t_out.dtype}")
    # float16 division may differ by one ulp (torch multiplies by the reciprocal; ember rounds the quotient once)
    elif e_out.shape != tuple(t_out.shape) or not np.allclose(e_out.numpy().astype(np.float64),
                                                            t_out.numpy().astype(np.float64), rtol=1e-3):
        problems.append(f"{label}: values {e_out.tolist()} vs torch {t_out.tolist()}")


@pytest.mark.parametrize("op", OPS)
def test_tensor_tensor_promotion_matches_torch(op):
    fn, problems = OPS[op], []
    for (ea, _), (eb, _) in itertools.product(PAIRS, repeat=2):
        for za, zb in itertools.product((False, True), repeat=2):
            a, b = _values(ea, za), _values(eb, zb)
            label = f"{ea}{'(0-d)' if za else ''} {op} {eb}{'(0-d)' if zb else ''}"
            _compare(lambda a=a, b=b: fn(em.tensor(a), em.tensor(b)),
                     lambda a=a, b=b: fn(torch.tensor(a), torch.tensor(b)), label, problems)
            if op == "+" and not problems:
                rt = torch.result_type(torch.tensor(a), torch.tensor(b))
                assert TORCH_OF[(em.tensor(a) + em.tensor(b)).dtype] == rt, label
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("op", OPS)
def test_tensor_scalar_promotion_matches_torch(op):
    fn, problems = OPS[op], []
    for (ea, _), scalar, zero_d, swap in itertools.product(PAIRS, SCALARS, (False, True), (False, True)):
        a = _values(ea, zero_d)
        f = (lambda x, y: fn(y, x)) if swap else fn
        label = f"{'scalar ' + repr(scalar) + ' ' + op + ' ' if swap else ''}{ea}{'(0-d)' if zero_d else ''}" \
                f"{'' if swap else ' ' + op + ' ' + repr(scalar)}"
        _compare(lambda f=f, a=a, s=scalar: f(em.tensor(a), s), lambda f=f, a=a, s=scalar: f(torch.tensor(a), s),
                 label, problems)
    assert not problems, "\n".join(problems)


def test_promotion_examples_named():
    # the rules in words, so a failure above has a readable counterpart
    assert (em.ones(2, dtype=em.int64) + em.ones(2, dtype=em.float32)).dtype == em.float32  # no float64
    assert (em.ones(2, dtype=em.int32) * 2.5).dtype == em.float32  # a float scalar gives the default float
    assert (em.ones(2, dtype=em.float16) * 2.5).dtype == em.float16  # a scalar never widens within a category
    assert (em.ones(2, dtype=em.int8) + em.tensor(1000)).dtype == em.int8  # 0-d int tensor: same category
    assert (em.ones(2, dtype=em.int8) + em.tensor(1.5, dtype=em.float64)).dtype == em.float64  # 0-d, higher category
    assert (em.ones(2, dtype=em.float16) + em.tensor(1.5, dtype=em.float64)).dtype == em.float16
    assert (em.ones(2, dtype=em.uint8) + em.ones(2, dtype=em.int8)).dtype == em.int16
    assert (em.tensor(3) / em.tensor(2)).dtype == em.float32  # true division of ints


def test_bool_subtraction_and_bool_floor_division_refused_as_in_torch():
    mask = em.tensor([True, False])
    for fn in (lambda: mask - 1, lambda: 1 - mask, lambda: em.tensor([1]) - True, lambda: mask - mask):
        with pytest.raises(OpError, match="sub: subtraction with a bool operand.*~mask"):
            fn()
    for fn, name in ((lambda: mask // mask, "floor_divide"), (lambda: mask % mask, "remainder"),
                     (lambda: mask ** mask, "pow")):
        with pytest.raises(OpError, match=f"{name}: not defined for two bool operands"):
            fn()
    assert (mask // 2).dtype == em.int64 and (~mask).tolist() == [False, True]


def test_unsigned_wide_ints_promote_within_integers():
    # PyTorch does not compute with uint16/32/64; ember promotes them as NumPy does among integers
    assert (em.ones(2, dtype=em.uint16) + em.ones(2, dtype=em.int8)).dtype == em.int32
    assert (em.ones(2, dtype=em.uint32) + em.ones(2, dtype=em.uint8)).dtype == em.uint32
    assert (em.ones(2, dtype=em.uint16) * 2.5).dtype == em.float32


CASTS = [  # (method name, ember dtype, torch method)
    ("float", em.float32, "float"), ("double", em.float64, "double"), ("half", em.float16, "half"),
    ("long", em.int64, "long"), ("int", em.int32, "int"), ("bool", em.bool, "bool"),
]
CAST_INPUTS = [np.array([1.7, -1.7, 0.0, 2.5, -0.5], np.float32), np.array([3, -2, 0], np.int64),
               np.array([True, False]), np.array([1.25, 300.5], np.float64)]


@pytest.mark.parametrize("method,dtype,torch_method", CASTS)
@pytest.mark.parametrize("data", CAST_INPUTS, ids=lambda a: str(a.dtype))
def test_cast_methods_match_torch(method, dtype, torch_method, data):
    e = getattr(em.tensor(data), method)()
    t = getattr(torch.tensor(data), torch_method)()
    assert e.dtype == dtype and TORCH_OF[e.dtype] == t.dtype
    np.testing.assert_array_equal(e.numpy(), t.numpy())
    # astype / to / type with the dtype give the same tensor
    for other in (em.tensor(data).astype(dtype), em.tensor(data).to(dtype), em.tensor(data).type(dtype)):
        assert other.dtype == dtype
        np.testing.assert_array_equal(other.numpy(), t.numpy())


def test_cast_to_same_dtype_is_the_same_tensor_and_gradients_flow_between_floats():
    x = em.ones(3, requires_grad=True)
    assert x.float() is x  # as torch: .float() on a float32 tensor returns self
    x.double().sum().backward()
    assert x.grad.dtype == em.float32 and x.grad.tolist() == [1.0, 1.0, 1.0]
    xt = torch.ones(3, requires_grad=True)
    for method in ("long", "int", "bool"):  # integer results are constants: no graph, as in torch
        assert getattr(x, method)().requires_grad is getattr(xt, method)().requires_grad is False
        assert getattr(x, method)().grad_fn is None


SPECS = [  # (spec, expected ember dtype, torch's dtype for the same spec where torch takes it)
    (em.float32, em.float32, torch.float32), (float, em.float64, float), (int, em.int64, int),
    (bool, em.bool, bool), (np.float16, em.float16, None), (np.dtype("int32"), em.int32, None),
    ("float32", em.float32, None), ("float", em.float32, None), ("double", em.float64, None),
    ("half", em.float16, None), ("long", em.int64, None), ("int", em.int32, None), ("bool", em.bool, None),
]


@pytest.mark.parametrize("spec,expected,torch_spec", SPECS, ids=lambda v: repr(v))
def test_dtype_specs(spec, expected, torch_spec):
    assert em.get_dtype(spec) is expected
    assert em.zeros(2, dtype=spec).dtype is expected
    if torch_spec is not None:
        assert TORCH_OF[expected] == torch.zeros(2, dtype=torch_spec).dtype


def test_dtype_aliases_and_properties_match_torch():
    assert em.float is em.float32 and em.double is em.float64 and em.half is em.float16 and em.long is em.int64
    assert em.tensor([1.0]).dtype is em.float32  # the default float
    for e, t in PAIRS:
        assert e.is_floating_point == t.is_floating_point, e
        assert e.itemsize == t.itemsize, e
        assert repr(e) == f"ember.{e.name}" and e.name == str(t).removeprefix("torch.")
    assert [em.uint16, em.uint32, em.uint64] == [em.get_dtype(n) for n in ("uint16", "uint32", "uint64")]


def test_unknown_dtype_specs_raise_clearly():
    with pytest.raises(TypeError, match="unknown dtype 'float8'; expected one of"):
        em.get_dtype("float8")
    with pytest.raises(TypeError, match="unsupported dtype .*complex.*ember supports"):
        em.get_dtype(np.complex64)
