import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ember as em
import ember.nn.functional as F
from opcheck import check, check_fd


def M(x):
    """The library ``x`` belongs to, so one lambda serves ember and torch."""
    return em if isinstance(x, em.Tensor) else torch


def P(x):
    """The functional module (F.pad) of the library ``x`` belongs to."""
    return F if isinstance(x, em.Tensor) else TF


# (id, fn, input shapes): fn is written once with the shared PyTorch/ember API
UNARY_CASES = [
    ("reshape", lambda x: x.reshape(4, 3), (3, 4)),
    ("reshape_tuple_neg1", lambda x: x.reshape((2, -1, 2)), (3, 4)),
    ("reshape_0d", lambda x: x.reshape(1, 1), ()),
    ("reshape_to_0d", lambda x: x.reshape(()), (1,)),
    ("reshape_zero_size", lambda x: x.reshape(3, 0, 2), (0, 6)),
    ("view_neg1", lambda x: x.view(-1), (2, 3, 4)),
    ("view_as", lambda x: x.view(6, 4).view_as(x), (2, 3, 4)),
    ("flatten", lambda x: x.flatten(), (2, 3, 4)),
    ("flatten_range", lambda x: x.flatten(1, -1), (2, 3, 4)),
    ("flatten_neg", lambda x: x.flatten(-3, -2), (2, 3, 4)),
    ("flatten_0d", lambda x: x.flatten(), ()),
    ("unflatten", lambda x: x.unflatten(1, (3, 4)), (2, 12)),
    ("unflatten_neg1", lambda x: x.unflatten(-1, (2, -1)), (2, 12)),
    ("squeeze_all", lambda x: x.squeeze(), (1, 3, 1, 4)),
    ("squeeze_dim", lambda x: x.squeeze(2), (1, 3, 1, 4)),
    ("squeeze_neg_noop", lambda x: x.squeeze(-1), (1, 3, 1, 4)),
    ("squeeze_tuple", lambda x: x.squeeze((0, 2)), (1, 3, 1, 4)),
    ("unsqueeze", lambda x: x.unsqueeze(1), (3, 4)),
    ("unsqueeze_neg", lambda x: x.unsqueeze(-1), (3, 4)),
    ("unsqueeze_0d", lambda x: x.unsqueeze(0), ()),
    ("transpose", lambda x: x.transpose(0, 2), (2, 3, 4)),
    ("transpose_neg", lambda x: x.transpose(-1, -2), (2, 3, 4)),
    ("swapaxes", lambda x: x.swapaxes(0, 1), (2, 3)),
    ("permute", lambda x: x.permute(2, 0, 1), (2, 3, 4)),
    ("permute_tuple_neg", lambda x: x.permute((-1, 0, 1)), (2, 3, 4)),
    ("movedim", lambda x: x.movedim(0, -1), (2, 3, 4)),
    ("movedim_tuple", lambda x: x.movedim((0, 1), (2, 0)), (2, 3, 4)),
    ("t", lambda x: x.t(), (3, 4)),
    ("t_1d", lambda x: x.t(), (3,)),
    ("T", lambda x: x.T, (3, 4)),
    ("mT", lambda x: x.mT, (2, 3, 4)),
    ("expand", lambda x: x.expand(2, 3, 4), (3, 1)),
    ("expand_neg1", lambda x: x.expand(5, -1, 4), (1, 3, 1)),
    ("expand_zero", lambda x: x.expand(0, 3), (1, 3)),
    ("broadcast_to", lambda x: M(x).broadcast_to(x, (2, 3, 4)), (4,)),
    ("narrow", lambda x: x.narrow(1, 1, 2), (3, 4)),
    ("narrow_neg", lambda x: x.narrow(-1, -3, 2), (3, 4)),
    ("flip", lambda x: x.flip(0), (3, 4)),
    ("flip_tuple", lambda x: x.flip((0, -1)), (2, 3, 4)),
    ("flip_varargs", lambda x: x.flip(0, 1), (2, 3, 4)),
    ("flip_kw", lambda x: M(x).flip(x, dims=[-2]), (2, 3, 4)),
    ("repeat", lambda x: x.repeat(2, 3), (3, 4)),
    ("repeat_new_dims", lambda x: x.repeat(2, 1, 3), (3, 4)),
    ("repeat_zero", lambda x: x.repeat(0, 2), (3, 4)),
    ("tile", lambda x: x.tile((2,)), (3, 4)),
    ("tile_more", lambda x: x.tile((2, 1, 2)), (3, 4)),
    ("repeat_interleave", lambda x: x.repeat_interleave(2, dim=1), (3, 4)),
    ("repeat_interleave_flat", lambda x: x.repeat_interleave(3), (2, 2)),
    ("repeat_interleave_tensor",
     lambda x: x.repeat_interleave(M(x).tensor([1, 0, 3]), dim=0), (3, 4)),
    ("roll", lambda x: x.roll(1), (3, 4)),
    ("roll_dim", lambda x: x.roll(-2, 1), (3, 4)),
    ("roll_big", lambda x: x.roll(7, 0), (3, 4)),
    ("roll_multi", lambda x: x.roll((1, -1), (0, -1)), (2, 3, 4)),
    ("clone", lambda x: x.clone(), (3, 4)),
    ("contiguous", lambda x: x.t().contiguous(), (3, 4)),
    ("chain", lambda x: x.permute(1, 0, 2).reshape(3, 8)[1:].flip(-1).unsqueeze(0), (2, 3, 4)),
]


@pytest.mark.parametrize("name,fn,shape", UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
def test_shape_ops_match_torch(name, fn, shape):
    check(fn, fn, [shape])


FD_CASES = ["reshape_tuple_neg1", "permute", "movedim_tuple", "expand_neg1", "flip_tuple",
            "repeat_new_dims", "tile", "repeat_interleave_tensor", "roll_multi", "narrow_neg",
            "chain"]


@pytest.mark.parametrize("name", FD_CASES)
def test_shape_ops_finite_differences(name):
    _, fn, shape = next(c for c in UNARY_CASES if c[0] == name)
    check_fd(fn, [shape])


JOIN_CASES = [
    ("cat0", lambda a, b: M(a).cat([a, b]), [(2, 3), (4, 3)]),
    ("cat_neg", lambda a, b: M(a).cat((a, b, a), -1), [(2, 3), (2, 1)]),
    ("cat_empty", lambda a, b: M(a).cat([a, b], 0), [(0, 3), (2, 3)]),
    ("cat_3d", lambda a, b: M(a).cat([a, b], 1), [(2, 1, 4), (2, 3, 4)]),
    ("concat", lambda a, b: M(a).concat([a, b], 1), [(2, 1), (2, 2)]),
    ("stack", lambda a, b: M(a).stack([a, b]), [(2, 3), (2, 3)]),
    ("stack_neg", lambda a, b: M(a).stack([a, b, a], -1), [(2, 3), (2, 3)]),
    ("stack_mid", lambda a, b: M(a).stack((a, b), 1), [(2, 3), (2, 3)]),
    ("stack_0d", lambda a, b: M(a).stack([a, b]), [(), ()]),
    ("cat_legacy_empty", lambda a, b: M(a).cat([M(a).zeros(0), a, b], -2), [(2, 3), (1, 3)]),  # (0,) skipped
    ("cat_single", lambda a, b: M(a).cat([a]) * b, [(2, 3), (3,)]),
]


@pytest.mark.parametrize("name,fn,shapes", JOIN_CASES, ids=[c[0] for c in JOIN_CASES])
def test_cat_stack(name, fn, shapes):
    check(fn, fn, shapes)
    check_fd(fn, shapes)


def test_cat_promotes_dtypes_like_torch():
    a, b = np.arange(6, dtype=np.int64).reshape(2, 3), np.ones((1, 3), np.float32)
    f = lambda a, b: M(a).cat([a, b])
    check(f, f, [a, b])
    check(f, f, [a, a.astype(np.int32)])
    with pytest.raises(em.ShapeError, match=r"cat: all tensors must have the same shape except in dim 0"):
        em.cat([em.ones(2, 3), em.ones(2, 4)])
    x = em.ones(2)
    y = em.cat([x])  # a copy, as in torch
    y += 1
    assert x.tolist() == [1.0, 1.0]
    with pytest.raises(em.ShapeError, match="stack: all tensors must have the same shape"):
        em.stack([em.ones(2, 3), em.ones(3, 2)])


# multi-output ops: forward compares every piece; the gradient flows through all of them
SPLIT_CASES = [
    ("split_int", lambda x: x.split(2, 1), (3, 5)),
    ("split_sizes", lambda x: x.split([1, 3, 1], -1), (3, 5)),
    ("split_dim0", lambda x: x.split(2), (5, 2)),
    ("chunk_uneven", lambda x: x.chunk(3, 1), (3, 5)),
    ("chunk_fewer", lambda x: x.chunk(4, 0), (6, 2)),
    ("chunk_more_than_size", lambda x: x.chunk(5, 0), (2, 3)),
    ("unbind", lambda x: x.unbind(1), (3, 4)),
    ("unbind_neg", lambda x: x.unbind(-1), (2, 3, 2)),
    ("split_zero_size", lambda x: x.split(1, 0), (0, 3)),
]


def _weighted(pieces):
    lib = M(pieces[0])
    return lib.cat([(p * (i + 1)).reshape(-1) for i, p in enumerate(pieces)])


@pytest.mark.parametrize("name,fn,shape", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_split_chunk_unbind(name, fn, shape):
    check(lambda x: tuple(fn(x)), lambda x: tuple(fn(x)), [shape], grad=False)
    if shape[0]:
        g = lambda x: _weighted(fn(x))
        check(g, g, [shape])
        check_fd(g, [shape])


PAD_CASES = [
    ((3, 4), (1, 2), "constant", 0.0),
    ((3, 4), (1, 2, 0, 3), "constant", 1.5),
    ((3, 4), (-1, 2, 1, -2), "constant", 0.0),       # negative pads crop
    ((2, 3, 4), (0, 0, -1, -1, 2, 0), "constant", -2.0),
    ((2, 3, 5), (2, 1), "reflect", 0.0),
    ((2, 3, 4, 5), (1, 2, 3, 1), "reflect", 0.0),
    ((2, 1, 3, 4, 4), (1, 1, 2, 0, 1, 2), "reflect", 0.0),
    ((2, 3, 5), (2, 4), "replicate", 0.0),
    ((2, 3, 4, 5), (0, 2, 3, 1), "replicate", 0.0),
    ((2, 1, 3, 4, 4), (1, 1, 2, 0, 1, 2), "replicate", 0.0),
    ((2, 3, 5), (2, 3), "circular", 0.0),
    ((2, 3, 4, 5), (1, 2, 3, 0), "circular", 0.0),
    ((2, 1, 3, 4, 4), (1, 1, 2, 0, 1, 2), "circular", 0.0),
]


@pytest.mark.parametrize("shape,pad,mode,value", PAD_CASES)
def test_pad_matches_torch(shape, pad, mode, value):
    kw = {"value": value} if mode == "constant" else {}
    f = lambda x: P(x).pad(x, pad, mode=mode, **kw)
    check(f, f, [shape])
    check_fd(f, [shape])


def test_pad_errors():
    with pytest.raises(em.OpError, match="reflect padding"):
        F.pad(em.ones(1, 2, 3), (3, 0), mode="reflect")
    with pytest.raises(em.OpError, match="even length"):
        F.pad(em.ones(2, 3), (1, 2, 3))
    with pytest.raises(em.OpError, match="mode"):
        F.pad(em.ones(2, 3), (1, 1), mode="wrap")


def test_views_share_data_and_clone_copies():
    x = em.arange(12.0).reshape(3, 4)
    v = x.t()
    with em.no_grad():
        x[0, 1] = 100.0
    assert v[1, 0].item() == 100.0
    c = x.clone()
    with em.no_grad():
        x[0, 0] = -1.0
    assert c[0, 0].item() == 0.0
    assert v.contiguous().numpy().flags.c_contiguous
    assert x.contiguous() is x


def test_shape_errors_name_the_op():
    with pytest.raises(em.ShapeError, match=r"reshape: cannot reshape a tensor of shape \(3, 4\)"):
        em.ones(3, 4).reshape(5, -1)
    with pytest.raises(em.ShapeError, match="only one dim may be -1"):
        em.ones(3, 4).reshape(-1, -1)
    with pytest.raises(em.ShapeError, match="expand"):
        em.ones(3, 2).expand(3, 4)
    with pytest.raises(em.OpError, match="permute"):
        em.ones(2, 3).permute(0, 0)
    with pytest.raises(em.OpError, match="narrow"):
        em.ones(2, 3).narrow(1, 2, 2)
    with pytest.raises(em.ShapeError, match="t: expects a tensor with <= 2 dims"):
        em.ones(2, 3, 4).t()
    with pytest.raises(em.OpError, match="split: sections"):
        em.ones(2, 3).split([1, 1], 1)
    with pytest.raises(em.OpError, match=r"view: reinterpreting .* not supported; use .to\(dtype\)"):
        em.ones(2, 3).view(em.int32)
