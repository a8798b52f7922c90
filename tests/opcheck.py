"""One-line op checks against PyTorch and finite differences (tinygrad's helper_test_op idea).

``check(em_fn, torch_fn, shapes)`` builds random inputs of the given shapes, runs both
frameworks forward and backward with the same upstream gradient, and compares values, dtypes,
shapes and gradients. ``check_fd`` compares ember's analytic gradient with central finite
differences in float64.
"""

from __future__ import annotations

import numpy as np
import torch

import ember as em

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-9)}


def _array(spec, rng, dtype, low, high):
    if isinstance(spec, np.ndarray):
        return spec
    if low is not None:
        return rng.uniform(low, high, size=spec).astype(dtype)
    return rng.standard_normal(spec).astype(dtype)


def _noncontiguous(a):
    """The same values as ``a`` but in a strided (non C-contiguous) buffer."""
    if a.ndim == 0 or a.size <= 1:
        return a
    if a.ndim == 1:
        buf = np.empty(a.shape[0] * 2, a.dtype)
        buf[::2] = a
        return buf[::2]
    return np.asfortranarray(a)


def check(em_fn, torch_fn, shapes, *, dtype=np.float32, grad=True, low=None, high=None,
          noncontig=True, seed=0, rtol=None, atol=None, grad_inputs=None):
    """Compare ember and PyTorch forward and backward on random inputs of ``shapes``.

    ``shapes`` entries are shapes (random float inputs) or ready NumPy arrays (used as given;
    integer arrays are never differentiated). ``grad_inputs`` limits which inputs get grads.
    """
    rng = np.random.default_rng(seed)
    arrays = [_array(s, rng, dtype, low, high) for s in shapes]
    tol = dict(TOL[dtype])
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    diff = [a.dtype.kind == "f" and grad and (grad_inputs is None or i in grad_inputs)
            for i, a in enumerate(arrays)]
    variants = [False, True] if noncontig else [False]
    for strided in variants:
        ems = []
        for a, d in zip(arrays, diff):
            src = _noncontiguous(a) if strided and a.dtype.kind == "f" else a.copy()
            t = em.from_numpy(src)
            if d:
                t.requires_grad_(True)
            ems.append(t)
        tts = [torch.tensor(a, requires_grad=d) for a, d in zip(arrays, diff)]
        out_e = em_fn(*ems)
        out_t = torch_fn(*tts)
        _compare_out(out_e, out_t, tol, "forward")
        if not any(diff):
            continue
        oe = out_e[0] if isinstance(out_e, (tuple, list)) else out_e
        ot = out_t[0] if isinstance(out_t, (tuple, list)) else out_t
        up = rng.standard_normal(tuple(ot.shape)).astype(ot.detach().numpy().dtype)
        oe.backward(em.tensor(up))
        ot.backward(torch.tensor(up))
        for i, (e, t, d) in enumerate(zip(ems, tts, diff)):
            if not d:
                continue
            ge = e.grad
            gt = t.grad
            if gt is None:
                assert ge is None or np.all(ge.numpy() == 0), f"input {i}: torch has no grad"
                continue
            assert ge is not None, f"input {i}: ember produced no gradient"
            assert ge.shape == tuple(gt.shape), f"input {i}: grad shape {ge.shape} vs {tuple(gt.shape)}"
            np.testing.assert_allclose(ge.numpy(), gt.numpy(), err_msg=f"grad of input {i}", **tol)


def _compare_out(out_e, out_t, tol, what):
    if isinstance(out_t, (tuple, list)):
        assert len(out_e) == len(out_t)
        for a, b in zip(out_e, out_t):
            _compare_out(a, b, tol, what)
        return
    assert isinstance(out_e, em.Tensor), f"ember returned {type(out_e)}"
    assert out_e.shape == tuple(out_t.shape), f"{what}: shape {out_e.shape} vs {tuple(out_t.shape)}"
    assert str(out_e.dtype).split(".")[-1] == str(out_t.dtype).split(".")[-1], \
        f"{what}: dtype {out_e.dtype} vs {out_t.dtype}"
    a = out_e.detach().numpy()
    b = out_t.detach().numpy()
    if a.dtype.kind == "f":
        np.testing.assert_allclose(a, b, err_msg=what, **tol)
    else:
        np.testing.assert_array_equal(a, b, err_msg=what)


def check_fd(em_fn, shapes, *, low=None, high=None, seed=1, eps=1e-6, rtol=1e-5, atol=1e-7,
             grad_inputs=None):
    """Analytic gradients of sum(v * f(x)) against central finite differences in float64."""
    rng = np.random.default_rng(seed)
    arrays = [_array(s, rng, np.float64, low, high) for s in shapes]
    diff = [a.dtype.kind == "f" and (grad_inputs is None or i in grad_inputs)
            for i, a in enumerate(arrays)]
    ems = [em.tensor(a, requires_grad=d) for a, d in zip(arrays, diff)]
    out = em_fn(*ems)
    out = out[0] if isinstance(out, (tuple, list)) else out
    v = rng.standard_normal(out.shape)

    def scalar(arrs):
        with em.no_grad():
            o = em_fn(*[em.tensor(a) for a in arrs])
            o = o[0] if isinstance(o, (tuple, list)) else o
            return float(np.sum(o.numpy() * v))

    out.backward(em.tensor(v))
    for i, (a, d) in enumerate(zip(arrays, diff)):
        if not d:
            continue
        num = np.zeros_like(a)
        flat = a.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            fp = scalar(arrays)
            flat[j] = old - eps
            fm = scalar(arrays)
            flat[j] = old
            num.reshape(-1)[j] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(ems[i].grad.numpy(), num, rtol=rtol, atol=atol,
                                   err_msg=f"finite differences, input {i}")
