import numpy as np
import pytest
import torch

import ember as em
from opcheck import check, check_fd


def M(x):
    """The library ``x`` belongs to, so one lambda serves ember and torch."""
    return em if isinstance(x, em.Tensor) else torch




def ix(*v):
    """An integer index array (check() makes it a tensor input): ix(0, 2) or ix([[0], [2]])."""
    return np.array(v[0] if len(v) == 1 and isinstance(v[0], list) else v, dtype=np.int64)



# (id, fn, inputs): float shapes are random inputs; integer arrays become index tensors
GETITEM_CASES = [
    ("int", lambda x: x[1], [(3, 4)]),
    ("neg_int", lambda x: x[-1, -2], [(3, 4)]),
    ("slice", lambda x: x[1:3], [(4, 5)]),
    ("step", lambda x: x[::2, 1::3], [(5, 7)]),
    ("neg_bounds", lambda x: x[-3:-1, :-2], [(4, 5)]),
    ("out_of_range_slice", lambda x: x[2:100, 7:], [(4, 5)]),
    ("empty_slice", lambda x: x[3:1], [(4, 5)]),
    ("none", lambda x: x[None, :, None], [(3, 4)]),
    ("ellipsis", lambda x: x[..., 1], [(2, 3, 4)]),
    ("ellipsis_none", lambda x: x[0, ..., None, 1:], [(2, 3, 4)]),
    ("0d_tensor_index", lambda x: x[M(x).tensor(2)], [(4, 3)]),
    ("list_dups", lambda x: x[[0, 2, 0, -1]], [(3, 4)]),
    ("empty_list", lambda x: x[[]], [(3, 4)]),
    ("tensor_dups", lambda x, i: x[i], [(5, 3), ix(0, 4, 0, -1, 4)]),
    ("tensor_2d", lambda x, i: x[i], [(5, 3), ix([0, 1], [1, 0], [4, 4])]),
    ("tensor_pairs", lambda x, i, j: x[i, j], [(4, 5), ix(0, 3, 0), ix(1, 4, 1)]),
    ("tensor_broadcast", lambda x, i, j: x[i, j], [(4, 5), ix([0], [3]), ix(1, 4, 1)]),
    ("second_dim", lambda x, i: x[:, i], [(3, 4), ix(3, 0, 3)]),
    ("mixed_slice_adv", lambda x, i: x[1:, i], [(4, 5, 2), ix(0, 4, 0)]),
    ("adv_split_by_slice", lambda x, i, j: x[i, :, j], [(3, 4, 5), ix(0, 2, 2), ix(1, 0, 1)]),
    ("ellipsis_adv", lambda x, i: x[..., i], [(2, 3, 4), ix(0, 0, 3)]),
    ("none_adv_slice", lambda x, i: x[None, i, 1:3], [(3, 4), ix(2, 0)]),
    ("int_and_adv", lambda x, i: x[1, i], [(3, 4, 2), ix(3, 3, 0)]),
    ("mask_self", lambda x: x[x > 0], [(3, 4)]),
    ("mask_rows", lambda x: x[M(x).tensor([True, False, True])], [(3, 4)]),
    ("mask_all_false", lambda x: x[x > 100], [(3, 4)]),
    ("mask_and_slice", lambda x: x[M(x).tensor([False, True, True]), 1:], [(3, 4)]),
    ("mask_inner", lambda x: x[:, M(x).tensor([True, False, False, True])], [(2, 4, 3)]),
    ("chained", lambda x, i: x[1:][i][:, ::2], [(5, 4), ix(0, 2, 0)]),
]


@pytest.mark.parametrize("name,fn,inputs", GETITEM_CASES, ids=[c[0] for c in GETITEM_CASES])
def test_getitem_matches_torch(name, fn, inputs):
    check(fn, fn, inputs)
    check_fd(fn, [s if isinstance(s, np.ndarray) else s for s in inputs])


def test_negative_steps_beyond_torch():
    # torch has no negative slice steps; ember follows NumPy, which is flip + positive step
    check(lambda x: x[::-2, 3:0:-1], lambda x: x.flip(0)[::2].flip(1)[:, :3], [(5, 4)])
    x = np.arange(20.0).reshape(5, 4)
    np.testing.assert_array_equal(em.tensor(x)[::-2, 3:0:-1].numpy(), x[::-2, 3:0:-1])
    check_fd(lambda x: x[::-1, ::-3], [(3, 5)])


def test_index_errors():
    x = em.ones(3, 4)
    cases = [
        (lambda: x[3], r"getitem: index 3 is out of range for dim 0 of size 3"),
        (lambda: x[:, -5], r"index -5 is out of range for dim 1 of size 4"),
        (lambda: x[em.tensor([0, 5])], r"index 5 is out of range for dim 0"),
        (lambda: x[..., [4]], r"index 4 is out of range for dim 1"),
        (lambda: x[0, 0, 0], r"too many indices for a tensor of shape \(3, 4\)"),
        (lambda: x[..., 0, ...], "single ellipsis"),
        (lambda: x[em.tensor([True, False])], r"mask of shape \(2,\) does not match"),
        (lambda: x[np.ones((3, 3), bool)], r"mask of shape \(3, 3\) does not match dims 0..1"),
    ]
    for fn, msg in cases:
        with pytest.raises(IndexError, match=msg):
            fn()
        with pytest.raises(em.OpError, match=msg):  # also one of ember's op errors
            fn()
    with pytest.raises(IndexError, match="setitem: index 7"):
        x[7] = 1.0
    with pytest.raises(em.OpError, match="integer or bool"):
        x[em.tensor([0.0, 1.0])]


ROWS = ix([[0, 2, 1, 0], [2, 2, 0, 1]])  # (2, 4): index into dim 0 of a (3, 4) input
COLS = ix([[1, 0], [3, 3], [0, 2]])      # (3, 2): index into dim 1 of a (3, 4) input

FN_CASES = [
    ("gather0", lambda x, i: x.gather(0, i), [(3, 4), ROWS]),
    ("gather_neg", lambda x, i: x.gather(-1, i), [(3, 4), COLS]),
    ("gather_smaller", lambda x, i: M(x).gather(x, 1, i), [(3, 5), ix([[4], [0]])]),
    ("scatter", lambda x, i, s: x.scatter(1, i, s), [(3, 4), ix([[1, 0], [3, 2], [0, 2]]), (3, 2)]),
    # torch's own gradient for a src larger than the index is broken: finite differences only
    ("scatter_src_bigger", lambda x, i, s: x.scatter(0, i, s), [(3, 4), ix([[2, 0, 1]]), (2, 5)],
     {"grad_inputs": (0,)}),
    ("scatter_value", lambda x, i: x.scatter(1, i, 2.5), [(3, 4), ix([[1, 0], [3, 2], [0, 2]])]),
    ("scatter_add", lambda x, i, s: x.scatter_add(0, i, s), [(3, 4), ROWS, (2, 4)]),
    ("scatter_add_neg", lambda x, i, s: x.scatter_add(-1, i, s), [(3, 4), COLS, (3, 2)]),
    ("scatter_reduce_add", lambda x, i, s: x.scatter(0, i, s, reduce="add"), [(3, 4), ROWS, (2, 4)],
     {"torch": lambda x, i, s: x.scatter_add(0, i, s)}),  # torch has no gradient for reduce='add'

    ("index_select", lambda x, i: x.index_select(1, i), [(3, 4), ix(3, 0, 3, 1)]),
    ("index_select_0d", lambda x, i: x.index_select(0, i), [(3, 4), np.array(2)]),
    ("index_select_empty", lambda x, i: x.index_select(0, i), [(3, 4), ix()]),
    ("index_add", lambda x, i, s: x.index_add(0, i, s), [(3, 4), ix(2, 0, 2), (3, 4)]),
    ("index_add_alpha", lambda x, i, s: x.index_add(-1, i, s, alpha=-2.0), [(3, 4), ix(1, 1), (3, 2)]),
    ("masked_fill", lambda x: x.masked_fill(x > 0, 1.5), [(3, 4)]),
    ("masked_fill_bcast", lambda x: x.masked_fill(M(x).tensor([True, False, True, False]), -1.0),
     [(3, 4)]),
    ("masked_fill_tensor_value", lambda x, v: x.masked_fill(x < 0, v), [(3, 4), ()]),
    ("masked_select", lambda x: x.masked_select(x > 0.2), [(3, 4)]),
    ("masked_select_bcast", lambda x: x.masked_select(M(x).tensor([[True], [False], [True]])),
     [(3, 4)]),
    ("take", lambda x, i: x.take(i), [(3, 4), ix([0, 11], [-1, 5], [5, 5])]),
    ("take_along_dim", lambda x, i: M(x).take_along_dim(x, i, 1), [(3, 4), COLS]),
    ("take_along_dim_bcast", lambda x, i: M(x).take_along_dim(x, i, 0), [(3, 4), ix([[2], [0]])]),
    ("take_along_dim_flat", lambda x, i: M(x).take_along_dim(x, i), [(3, 4), ix(11, 0, 0)]),
    ("take_along_argmax", lambda x: M(x).take_along_dim(x, x.argmax(1, keepdim=True), 1), [(3, 4)]),
]


@pytest.mark.parametrize("case", FN_CASES, ids=[c[0] for c in FN_CASES])
def test_indexing_functions_match_torch(case):
    _, fn, inputs, *extra = case
    extra = dict(extra[0]) if extra else {}
    check(fn, extra.pop("torch", fn), inputs, **extra)
    check_fd(fn, inputs)


def test_unsupported_and_invalid_arguments_raise_clear_errors():
    x = em.ones(2, 3)
    with pytest.raises(em.OpError, match="scatter: reduce must be None or 'add', got 'multiply'"):
        x.scatter(0, em.tensor([[0, 1, 0]]), em.ones(1, 3), reduce="multiply")
    with pytest.raises(em.OpError, match="masked_fill: mask must be a bool tensor"):
        x.masked_fill(em.ones(2, 3), 1.0)
    with pytest.raises(em.ShapeError, match=r"gather: index has 1 dims but input has 2"):
        x.gather(0, em.tensor([0, 1]))
    with pytest.raises(em.OpError, match=r"gather: index values must be in \[0, 2\)"):
        x.gather(0, em.tensor([[0, 2, 0]]))
    with pytest.raises(em.ShapeError, match=r"scatter_add: index of shape \(1, 4\) is larger than src"):
        x.scatter_add(0, em.tensor([[0, 1, 0, 1]]), em.ones(1, 3))
    with pytest.raises(em.OpError, match="index_select: index must be an integer tensor"):
        x.index_select(0, em.tensor([0.0]))


def test_duplicate_indices_accumulate_gradients():
    x = em.ones(3, requires_grad=True)
    (x[[0, 0, 2, 0]] * em.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [7.0, 0.0, 3.0]
    x.grad = None
    x.gather(0, em.tensor([1, 1, 1])).sum().backward()
    assert x.grad.tolist() == [0.0, 3.0, 0.0]
    x.grad = None
    em.take_along_dim(x, em.tensor([2, 2])).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 2.0]


def test_nonzero():
    for a in [np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]], np.float32),
              np.array([True, False, True]), np.zeros((2, 0)), np.array(3.0), np.array(0.0)]:
        check(lambda x: x.nonzero(), lambda x: x.nonzero(), [a], grad=False)
        check(lambda x: M(x).nonzero(x, as_tuple=True), lambda x: torch.nonzero(x, as_tuple=True),
              [a], grad=False)


def _setitem_cases():
    return [
        ((1,), 5.0),
        ((slice(None), 1), np.arange(3.0)),
        ((Ellipsis, -1), 2.0),
        ((slice(1, None), slice(None, None, 2)), np.array([[1.0, 2.0], [3.0, 4.0]])),
        (([0, 2],), np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])),
        (([0, 2], [3, 1]), np.array([-1.0, -2.0])),
        ((np.array([True, False, True]),), 0.0),
        ((np.array([[True, False, True, False]] * 3),), np.arange(6.0)),
        ((None, 1, slice(0, 2)), np.array([9.0, 8.0])),
    ]


@pytest.mark.parametrize("k", range(9))
def test_setitem_matches_torch(k):
    index, value = _setitem_cases()[k]
    base = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    e, t = em.tensor(base), torch.tensor(base)
    conv_e = tuple(em.tensor(i) if isinstance(i, (list, np.ndarray)) else i for i in index)
    conv_t = tuple(torch.tensor(i) if isinstance(i, (list, np.ndarray)) else i for i in index)
    ve = em.tensor(value, dtype=em.float32) if isinstance(value, np.ndarray) else value
    vt = torch.tensor(value, dtype=torch.float32) if isinstance(value, np.ndarray) else value
    version = e._version[0]
    e[conv_e] = ve
    t[conv_t] = vt
    np.testing.assert_array_equal(e.numpy(), t.numpy())
    assert e._version[0] > version
    # a view sees the write
    e2 = em.tensor(base)
    v = e2[1:]
    e2[conv_e] = ve
    np.testing.assert_array_equal(v.numpy(), t.numpy()[1:])


def test_setitem_on_int_tensor_and_with_tensor_index():
    x = em.zeros(5, dtype=em.int64)
    x[em.tensor([1, 3])] = em.tensor([7, 9])
    assert x.tolist() == [0, 7, 0, 9, 0]
    x[x > 5] = -1
    assert x.tolist() == [0, -1, 0, -1, 0]


def test_setitem_refuses_leaves_that_require_grad():
    w = em.ones(3, 4, requires_grad=True)
    with pytest.raises(em.GradError, match=r"setitem: cannot assign into a leaf tensor that requires "
                                           r"grad \(shape \(3, 4\)\).*out of place"):
        w[0] = 2.0
    with em.no_grad():
        view = w[0]
    with pytest.raises(em.GradError, match="view of a tensor that requires grad"):
        view[0] = 1.0  # torch refuses this too: the view was made under no_grad
    with em.no_grad():  # outside autograd (e.g. initialisation) it is allowed
        w[0] = 2.0
    assert w.detach().numpy()[0].tolist() == [2.0] * 4
    with pytest.raises(em.OpError, match="read-only broadcast view"):
        em.ones(3).expand(2, 3)[0, 0] = 1.0
    with pytest.raises(em.ShapeError, match="setitem: cannot assign a value of shape"):
        em.zeros(3, 4)[0] = em.ones(3)
    y = w * 2
    with pytest.raises(em.ShapeError, match=r"setitem: cannot assign a value of shape \(3,\) to x\[index\]"):
        y[0] = em.ones(3, requires_grad=True)


@pytest.mark.parametrize("k", range(9))
def test_setitem_on_a_tensor_in_the_graph_matches_torch_gradients(k):
    """Assigning into a non-leaf (or assigning a value that requires grad) is recorded: the
    overwritten positions get no gradient, the value gets the gradient of where it went."""
    index, value = _setitem_cases()[k]
    base = np.random.default_rng(k).standard_normal((3, 4))
    value = np.asarray(value, dtype=np.float64)
    weights = np.random.default_rng(k + 100).standard_normal((3, 4))
    grads = []
    for lib, make in [(em, lambda a: em.tensor(a, requires_grad=True)),
                      (torch, lambda a: torch.tensor(a, requires_grad=True))]:
        x, v = make(base), make(value)
        conv = tuple(lib.tensor(i) if isinstance(i, (list, np.ndarray)) else i for i in index)
        y = x * 3
        y[conv] = v * 2
        (y * lib.tensor(weights)).sum().backward()
        grads.append((y.detach().numpy(), x.grad.numpy(), v.grad.numpy()))
    for got, want in zip(grads[0], grads[1]):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_setitem_compiles_inside_jit():
    def f(x, v):
        y = x * 3
        y[:, 1] = v
        y[0] = 0.0
        return y

    x, v = em.randn(3, 4), em.randn(3)
    np.testing.assert_allclose(em.jit(f)(x, v).numpy(), f(x, v).numpy(), rtol=1e-6)


def test_setitem_invalidates_saved_values():
    w = em.randn(3, requires_grad=True)
    x = em.randn(3)
    y = (w * x).sum()
    x[0] = 5.0
    with pytest.raises(em.GradError, match="modified in place"):
        y.backward()
