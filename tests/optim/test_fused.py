"""The fused eager Adam/AdamW update (optim/fused.py) gives bitwise the op path's parameters and
state, and falls back (or refuses, with fused=True) where it does not apply."""

import numpy as np
import pytest

import ember as em
from ember.optim import fused


def _train(name, kw, dtype, fused_flag, steps=6, shape=(64, 300)):
    rng = np.random.default_rng(0)
    p = em.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True)
    opt = getattr(em.optim, name)([p], fused=fused_flag, **kw)
    for step in range(steps):
        p.grad = em.tensor(rng.standard_normal(shape).astype(dtype) * 10.0 ** -step)
        opt.step()
    state = opt.state[p]
    return p.data, state["exp_avg"].data, state["exp_avg_sq"].data, state["step"]


@pytest.mark.parametrize("name,kw", [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, maximize=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=3e-4, weight_decay=0.5)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_update_is_bitwise_the_op_path(name, kw, dtype, monkeypatch):
    calls = []
    kernel = fused._kernels().adam
    spy = type("K", (), {"adam": staticmethod(lambda *a: (calls.append(1), kernel(*a)))})
    monkeypatch.setattr(fused, "_kernels", lambda: spy)
    got = _train(name, kw, dtype, None)
    assert len(calls) == 6, "the fused kernel did not run"
    want = _train(name, kw, dtype, False)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert np.asarray(g).dtype == np.asarray(w).dtype


def test_fused_update_bumps_version_counters():
    p = em.randn(200, 100, requires_grad=True)
    p.grad = em.randn(200, 100)
    opt = em.optim.Adam([p], fused=True)
    opt.step()
    before = p._version[0], opt.state[p]["exp_avg"]._version[0]
    opt.step()
    assert (p._version[0], opt.state[p]["exp_avg"]._version[0]) == (before[0] + 1, before[1] + 1)


def test_small_or_strided_parameters_take_the_op_path(monkeypatch):
    failing = type("K", (), {"adam": staticmethod(lambda *a: pytest.fail("fused kernel ran"))})
    monkeypatch.setattr(fused, "_kernels", lambda: failing)
    small = em.randn(10, 10, requires_grad=True)
    small.grad = em.randn(10, 10)
    em.optim.Adam([small]).step()
    base = em.randn(300, 200)
    strided = base.T.detach().requires_grad_()  # a transposed view: not C-contiguous
    strided.grad = em.randn(200, 300)
    em.optim.Adam([strided]).step()
    amsgrad = em.randn(300, 200, requires_grad=True)
    amsgrad.grad = em.randn(300, 200)
    em.optim.Adam([amsgrad], amsgrad=True).step()


def test_fused_true_refuses_what_it_cannot_fuse():
    base = em.randn(30, 20)
    strided = base.T.detach().requires_grad_()
    strided.grad = em.randn(20, 30)
    with pytest.raises(ValueError, match=r"Adam\(fused=True\): the fused update needs .*C-contiguous"):
        em.optim.Adam([strided], fused=True).step()
    with pytest.raises(ValueError, match="fused=True does not support amsgrad"):
        em.optim.AdamW([strided], fused=True, amsgrad=True)
    with pytest.raises(ValueError, match="fused should be None, True or False"):
        em.optim.Adam([strided], fused="yes")
