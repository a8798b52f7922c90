"""ember.tensor against PyTorch: em.tensor's dtype inference and copies, conversions back to NumPy and Python,
the metadata (shape, size, T...), the autograd flags and repr."""

import re

import numpy as np
import pytest
import torch

import ember as em
from ember.errors import GradError

NP_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]


def _same(e, t):
    """ember tensor ``e`` equals torch tensor ``t`` in dtype, shape and values."""
    assert str(e.dtype).removeprefix("ember.") == str(t.dtype).removeprefix("torch."), (e.dtype, t.dtype)
    assert e.shape == tuple(t.shape)
    np.testing.assert_array_equal(e.numpy(), t.numpy())


DATA = [  # data em.tensor and torch.tensor must read the same way
    1, 2.5, True, -7, [], [[]], [1, 2, 3], [1.0, 2], [True, False], [1, True], [1.5, True], [[1, 2], [3, 4]],
    [[[1.5]], [[2.5]]], (1, 2), [(1, 2), (3, 4)], [float("inf"), -0.0], [2 ** 62, -(2 ** 63)],
    # lists of NumPy scalars keep their dtypes, promoted with the Python numbers beside them
    [np.float64(1.0)], [np.float64(1.0), 2.0], [np.float16(1.0), 2.0], [np.float16(1.0), 2], [np.int32(1), 2],
    [np.int32(1), np.int32(2)], [np.uint8(1), np.int8(2)], [np.int16(1), np.float32(2.5)],
    [np.bool_(True), np.bool_(False)],
    [np.array([1.0, 2.0]), np.array([3.0, 4.0])], [np.array([1, 2], np.int32), [3, 4]],
]


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")  # torch's speed hint
@pytest.mark.parametrize("data", DATA, ids=repr)
def test_tensor_infers_dtype_and_values_as_torch(data):
    _same(em.tensor(data), torch.tensor(data))


@pytest.mark.parametrize("np_dtype", NP_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_arrays_and_scalars_keep_their_dtype(np_dtype):
    arr = np.array([[0, 1, 2]], dtype=np_dtype)
    _same(em.tensor(arr), torch.tensor(arr))
    _same(em.tensor(arr[0, 1]), torch.tensor(arr[0, 1]))  # a NumPy scalar
    _same(em.tensor(np.asarray(arr[0, 2])), torch.tensor(np.asarray(arr[0, 2])))  # a 0-d array
    _same(em.tensor([arr[0, 1], arr[0, 2]]), torch.tensor([arr[0, 1], arr[0, 2]]))  # a list of them


@pytest.mark.parametrize("dtype", ["float64", "float16", "int32", "int64", "bool", "int8"])
@pytest.mark.parametrize("data", [[1.7, -1.7, 0.0], [[1, 0], [3, 4]], 5, np.array([2.5, 0.0], np.float32)],
                         ids=repr)
def test_dtype_argument_converts_as_torch(data, dtype):
    _same(em.tensor(data, dtype=getattr(em, dtype)), torch.tensor(data, dtype=getattr(torch, dtype)))


def test_tensors_inside_lists_and_tensor_of_tensor():
    a, b = em.tensor([1.0, 2.0], dtype=em.float64), em.tensor([3.0, 4.0], dtype=em.float64)
    _same(em.tensor([a, b]), torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    _same(em.tensor([em.tensor(1), em.tensor(2)]), torch.tensor([torch.tensor(1), torch.tensor(2)]))
    x = em.tensor([1.0, 2.0], requires_grad=True)
    y = em.tensor(x)
    assert not y.requires_grad and y.grad_fn is None and y.tolist() == [1.0, 2.0]
    _same(em.tensor(x, dtype=em.int32), torch.tensor([1, 2], dtype=torch.int32))


BAD = [  # (data, error type, what the message must say)
    ([[1, 2], [3]], ValueError, r"tensor\(\): nested lists must be rectangular.*data\[1\] has length 1 but "
                                r"data\[0\] has length 2"),
    ([[1, 2], 3], ValueError, r"data\[1\] has a number but data\[0\] has length 2"),
    ([[[1], [2]], [[1], [2, 3]]], ValueError, r"data\[1\]\[1\] has length 2 but data\[1\]\[0\] has length 1"),
    (np.array([1, None], dtype=object), TypeError, r"NumPy data of dtype object"),
    ("abc", TypeError, r"tensor\(\): cannot make a tensor from str"),
    (["a", "b"], TypeError, r"tensor\(\): cannot make a tensor from str \('a'\)"),
    (np.array(["a"]), TypeError, r"NumPy data of dtype <U1"),
    (None, TypeError, r"tensor\(\): cannot make a tensor from NoneType"),
    ([1, None], TypeError, r"tensor\(\): cannot make a tensor from NoneType"),
    (np.array([1.0], np.longdouble), TypeError, r"NumPy data of dtype float128"),
    (2 ** 63, OverflowError, r"tensor\(\): the Python int 9223372036854775808 does not fit in int64"),
    ([-1, 2 ** 63], OverflowError, r"does not fit in int64"),
    ([2 ** 64], OverflowError, r"does not fit in int64"),
]


@pytest.mark.parametrize("data,error,message", BAD, ids=lambda v: repr(v)[:30])
def test_bad_data_raises_clearly(data, error, message):
    with pytest.raises((TypeError, ValueError, RuntimeError, OverflowError)):
        torch.tensor(data)  # torch refuses it too (complex aside: ember has no complex dtype)
    with pytest.raises(error, match=message):
        em.tensor(data)


COMPLEX = [  # torch has complex dtypes; ember has none, and says so
    (1 + 2j, TypeError, r"tensor\(\): cannot make a tensor from complex"),
    ([1j], TypeError, r"tensor\(\): cannot make a tensor from complex"),
    (np.array([1 + 2j]), TypeError, r"tensor\(\): cannot make a tensor from NumPy data of dtype complex128.*astype"),
    (np.complex64(1), TypeError, r"NumPy data of dtype complex64"),
]


@pytest.mark.parametrize("data,error,message", COMPLEX, ids=repr)
def test_complex_data_is_refused_clearly(data, error, message):
    assert torch.tensor(data).dtype.is_complex
    with pytest.raises(error, match=message):
        em.tensor(data)


def test_tensor_copies_from_numpy_shares_memory():
    arr = np.array([1.0, 2.0, 3.0], np.float32)
    copied, shared, as_t = em.tensor(arr), em.from_numpy(arr), em.as_tensor(arr)
    t_copied, t_shared = torch.tensor(arr), torch.from_numpy(arr)
    arr[0] = 10.0
    assert copied.tolist()[0] == t_copied.tolist()[0] == 1.0
    assert shared.tolist()[0] == as_t.tolist()[0] == t_shared.tolist()[0] == 10.0
    shared[1] = 20.0  # writes through the tensor show in the array
    assert arr[1] == 20.0
    src = em.tensor([1.0, 2.0])
    dup = em.tensor(src)
    src[0] = 5.0
    assert dup.tolist() == [1.0, 2.0]
    # from_numpy keeps the dtype, also for non-contiguous arrays; refuses non-arrays and unsupported dtypes
    base = np.arange(6, dtype=np.int16).reshape(2, 3)
    _same(em.from_numpy(base.T), torch.from_numpy(base.T))
    with pytest.raises(TypeError, match="from_numpy: expected a NumPy array, got list"):
        em.from_numpy([1, 2])
    with pytest.raises(TypeError, match="complex128 has no ember equivalent"):
        em.from_numpy(np.array([1j]))


def test_numpy_item_tolist_match_torch():
    for data in ([[1.5, 2.0], [3.0, 4.0]], [1, 2], [True], 3.25, 7, [[]]):
        e, t = em.tensor(data), torch.tensor(data)
        np.testing.assert_array_equal(e.numpy(), t.numpy())
        assert e.numpy().dtype == t.numpy().dtype
        assert e.tolist() == t.tolist() and type(e.tolist()) is type(t.tolist())
    for data in (2.5, [7], [[True]], np.float16(1.5), np.int32(3)):
        e, t = em.tensor(data), torch.tensor(data)
        assert e.item() == t.item() and type(e.item()) is type(t.item())
    x = em.tensor([1.0, 2.0])
    x.numpy()[0] = 9.0  # numpy() shares memory, as in torch
    assert x.tolist() == [9.0, 2.0]


def test_item_and_numpy_errors():
    for data in ([1, 2], [], [[1.0], [2.0]]):
        with pytest.raises(RuntimeError):
            torch.tensor(data).item()
        with pytest.raises(ValueError, match=r"item\(\): only a tensor with one element .* got shape"):
            em.tensor(data).item()
    with pytest.raises(GradError, match=r"numpy\(\): this tensor requires grad; call .detach\(\).numpy\(\)"):
        em.ones(2, requires_grad=True).numpy()


SHAPES = [(), (3,), (2, 3), (2, 3, 4), (0, 2), (1, 0, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shape_metadata_matches_torch(shape):
    e, t = em.zeros(shape), torch.zeros(shape)
    assert type(e.shape) is tuple and e.shape == tuple(t.shape)
    assert e.size() == tuple(t.size()) and e.ndim == t.ndim == e.dim() and e.numel() == t.numel()
    assert e.dtype == em.float32 and e.element_size() == t.element_size()
    for dim in range(-len(shape), len(shape)):
        assert e.size(dim) == t.size(dim) == e.size(dim=dim)
    for bad in (len(shape), -len(shape) - 1):
        with pytest.raises(IndexError):
            t.size(bad)
        with pytest.raises(IndexError, match=rf"size\(\): dim {bad} (is out of range|given but the tensor is 0-d)"):
            e.size(bad)
    if shape:
        assert len(e) == len(t)
    with pytest.raises(TypeError, match=r"size\(\): dim must be an int, got 1.0"):
        e.size(1.0)


def test_transpose_property():
    m = em.arange(6).reshape(2, 3)
    assert m.T.shape == (3, 2) and m.T.tolist() == torch.arange(6).reshape(2, 3).T.tolist()
    # other ranks: the same result as torch, with torch's deprecation warning (1-D and 0-D: the identity)
    for shape in [(), (4,), (2, 3, 4)]:
        e, t = em.arange(int(np.prod(shape))).reshape(shape), torch.arange(int(np.prod(shape))).reshape(shape)
        with pytest.warns(UserWarning, match=rf"t.T on a {len(shape)}-D tensor .* is deprecated.*t.mT"):
            eT = e.T
        _same(eT, t.permute(tuple(reversed(range(t.ndim)))))
    assert em.zeros(5, 2, 3).mT.shape == tuple(torch.zeros(5, 2, 3).mT.shape)


def test_requires_grad_grad_and_detach():
    x, xt = em.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])
    assert x.requires_grad is xt.requires_grad is False and x.grad is None and x.is_leaf
    assert x.requires_grad_() is x and x.requires_grad
    (x * x).sum().backward()
    assert x.grad.tolist() == [2.0, 4.0] and x.grad.dtype == em.float32
    y = x * 3
    assert y.requires_grad and not y.is_leaf and y.grad_fn is not None
    d = y.detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    d[0] = 100.0  # detach shares memory, as in torch
    assert y.tolist()[0] == 100.0
    with pytest.raises(GradError, match=r"requires_grad_\(False\) on a non-leaf tensor; use .detach\(\)"):
        y.requires_grad_(False)
    assert em.tensor([1.0], dtype=em.float16).requires_grad_().requires_grad
    assert em.tensor([1.0], dtype=em.float64, requires_grad=True).requires_grad


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
def test_requires_grad_refused_for_non_float_tensors(dtype):
    with pytest.raises(RuntimeError, match="floating point"):
        torch.zeros(2, dtype=getattr(torch, dtype)).requires_grad_()
    with pytest.raises(GradError, match=rf"only floating-point tensors can require gradients, this one is "
                                        rf"ember.{dtype}; convert it with .float\(\) first"):
        em.zeros(2, dtype=getattr(em, dtype)).requires_grad_()
    with pytest.raises(GradError, match="only floating-point tensors"):
        em.tensor([1, 0], dtype=getattr(em, dtype), requires_grad=True)
    assert not em.zeros(2, dtype=getattr(em, dtype)).requires_grad_(False).requires_grad


REPRS = [  # (tensor, what its repr contains in order, what it must not contain) -- torch writes the same fields
    (lambda m: m.tensor([1.0, 2.5]), [r"^tensor\(\[1\.0* ?, 2\.50*\]\)$"], ["dtype"]),
    (lambda m: m.tensor([1, 2]), [r"^tensor\(\[1, 2\]\)$"], ["dtype"]),
    (lambda m: m.tensor([True, False]), [r"True, False"], ["dtype"]),
    (lambda m: m.tensor(3.0), [r"^tensor\(3\.\)$"], []),
    (lambda m: m.tensor([1.0], dtype=m.float64), [r"1\.", r"dtype=(ember|torch)\.float64\)$"], []),
    (lambda m: m.tensor([1], dtype=m.int32), [r"dtype=(ember|torch)\.int32"], []),
    (lambda m: m.tensor([1.0], dtype=m.float16), [r"dtype=(ember|torch)\.float16"], []),
    (lambda m: m.tensor([1.5], requires_grad=True), [r"1\.50*", r", requires_grad=True\)$"], ["grad_fn"]),
    (lambda m: m.tensor([1.5], requires_grad=True) * 2, [r"3\.", r", grad_fn=<MulBackward\d*>\)$"],
     ["requires_grad"]),
    (lambda m: m.tensor([]), [r"^tensor\(\[\]\)$"], []),
    (lambda m: m.tensor([], dtype=m.int64), [r"^tensor\(\[\], dtype=(ember|torch)\.int64\)$"], []),
    (lambda m: m.zeros(2, 0), [r"^tensor\(\[\], size=\(2, 0\)\)$"], []),
    (lambda m: m.zeros(3, 0, dtype=m.int32), [r"size=\(3, 0\), dtype=(ember|torch)\.int32\)$"], []),
    (lambda m: m.arange(5000), [r"^tensor\(\[   0,    1,    2, +\.\.\., 4997, 4998, 4999\]\)$"], []),
]


@pytest.mark.parametrize("make,contains,absent", REPRS, ids=range(len(REPRS)))
def test_repr_is_readable_like_torch(make, contains, absent):
    for lib in (em, torch):
        text = repr(make(lib))
        for pattern in contains:
            assert re.search(pattern, text), (lib.__name__, text, pattern)
        for word in absent:
            assert word not in text, (lib.__name__, text)
    assert str(em.tensor([1, 2])) == repr(em.tensor([1, 2]))
