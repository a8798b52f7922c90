"""ember's batch-parallel kernels (ember/ops/threads.py): the region itself, and every op that
splits its batch over threads, run split into several ranges and chunks and checked against
PyTorch."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ember as em
import ember.nn.functional as F
from ember.ops import nn as nn_ops
from ember.ops import threads
from opcheck import check


@pytest.fixture
def split_everything(monkeypatch):
    """Every op goes parallel, one batch item per chunk: the ranges and chunk seams are exercised
    even on the tests' small inputs."""
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(threads, "CHUNK_BYTES", 1)


@pytest.fixture(params=["batch_columns", "per_image"])
def layout(request, monkeypatch):
    """Both im2col layouts of the convolutions, whatever the case's size would pick."""
    monkeypatch.setattr(nn_ops, "PER_IMAGE_MAX_ROWS", 0 if request.param == "batch_columns" else 1 << 30)


def P(x):
    return F if isinstance(x, em.Tensor) else TF


# ---- the region ---------------------------------------------------------------------------

_SERIAL_BLAS_WITH_SCIPY = """
import os, scipy.linalg  # SciPy's wheels load a second OpenBLAS, before ember looks for NumPy's
import numpy as np
from threadpoolctl import ThreadpoolController
from ember.ops import threads
numpy_dir = os.path.dirname(np.__file__)
def numpy_threads():
    return [c.num_threads for c in ThreadpoolController().select(internal_api="openblas").lib_controllers
            if c.filepath.startswith((numpy_dir + os.sep, numpy_dir + ".libs" + os.sep))]
assert threads.workers() == 2 and numpy_threads() == [2], numpy_threads()
with threads.serial_blas():
    assert numpy_threads() == [1], numpy_threads()
print("ok")
"""


@pytest.mark.parametrize("hash_seed", ["1", "2", "3"])
def test_serial_blas_holds_numpys_openblas_even_with_scipys_loaded(hash_seed):
    # threadpoolctl lists the two OpenBLAS copies in an order that follows the string hash
    # seed; ember must control NumPy's, or its threads' GEMMs run on two threads each
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, OPENBLAS_NUM_THREADS="2")
    env.pop("EMBER_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", _SERIAL_BLAS_WITH_SCIPY], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

def test_over_batch_covers_the_batch_once_in_order_on_every_worker(split_everything):
    seen, idents = [], set()

    def part(lo, hi):
        idents.add(threading.get_ident())
        seen.extend(range(lo, hi))
        return (lo, hi)

    ranges = threads.over_batch(7, part, 1)
    assert sorted(seen) == list(range(7))
    assert [r[0] for r in ranges] == sorted(r[0] for r in ranges) and ranges[0][0] == 0 and ranges[-1][1] == 7
    assert len(idents) == min(threads.workers(), 7)


def test_small_work_and_nested_regions_run_inline(monkeypatch):
    caller = threading.get_ident()
    assert threads.over_batch(8, lambda lo, hi: (lo, hi, threading.get_ident()), threads.PARALLEL_MIN_WORK - 1) \
        == [(0, 8, caller)]
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)

    def outer(lo, hi):  # a region inside a region must not wait for the pool it is running on
        return threads.over_batch(hi - lo, lambda a, b: (a, b), 1)

    assert all(inner == [(0, hi - lo)] for inner, (lo, hi) in
               zip(threads.over_batch(6, outer, 1), [(0, 6)] if threads.workers() == 1 else [(0, 3), (3, 6)]))


def test_blas_thread_count_is_restored_after_a_region_and_after_a_failure(split_everything):
    state = threads._setup()
    if state["blas"] is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS ember can control: ember leaves it alone")
    get, _ = state["blas"]
    before = get()
    inside = []
    threads.over_batch(4, lambda lo, hi: inside.append(get()), 1)
    assert get() == before
    if threads.workers() > 1:
        assert set(inside) == {1}

    def fails(lo, hi):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        threads.over_batch(4, fails, 1)
    assert get() == before
    assert threads.over_batch(4, lambda lo, hi: hi - lo, 1)  # the region lock was released


def test_a_user_set_openblas_timeout_is_kept(monkeypatch):
    class Lib:  # stands in for the ctypes library: nothing may be called on it
        def __getattr__(self, name):
            raise AssertionError(f"called {name}")

    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "7")
    assert threads._shorten_spin(Lib())
    import os

    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "7"


# ---- the ops, split -----------------------------------------------------------------------

CONV_CASES = [  # batch 5: uneven ranges, one image per chunk
    ((5, 3, 6, 5), (4, 3, 3, 3), dict(padding=1)),
    # stride 1, output the input's size: the numba im2col, with every kind of shift
    ((5, 2, 7, 6), (3, 2, 3, 5), dict(padding=(1, 2))),
    ((5, 2, 8, 7), (3, 2, 3, 3), dict(dilation=(2, 1), padding=(2, 1))),
    ((5, 3, 4, 5), (2, 3, 1, 3), dict(padding=(0, 1))),
    ((5, 4, 7, 6), (6, 2, 3, 2), dict(stride=2, padding=(1, 0), groups=2)),
    ((5, 2, 8, 8), (3, 2, 3, 3), dict(dilation=2, padding=1)),
]


@pytest.mark.parametrize("xs,ws,kw", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv2d_split_matches_torch(split_everything, layout, xs, ws, kw, bias):
    f = lambda x, w, b=None: P(x).conv2d(x, w, b, **kw)
    check(f, f, [xs, ws] + ([(ws[0],)] if bias else []))


def test_same_size_conv_keeps_infinities_in_their_windows_like_torch(layout):
    # the numba im2col masks the shifts that would wrap into the next or previous row: an inf
    # at an image's edge must reach only the outputs whose window holds it, in the forward
    # and in the weight gradient (a multiply by a 0/1 mask would give NaN)
    x = np.random.default_rng(3).standard_normal((3, 8, 5, 6))
    x[0, 0, 1, 0], x[1, 7, 4, 5], x[2, 3, 0, 2] = np.inf, -np.inf, np.inf
    w = np.random.default_rng(4).standard_normal((4, 8, 3, 3))
    g = np.random.default_rng(5).standard_normal((3, 4, 5, 6))
    res = []
    for lib in (em, torch):
        xt, wt = lib.tensor(x), lib.tensor(w, requires_grad=True)
        y = lib.nn.functional.conv2d(xt, wt, padding=1)
        y.backward(lib.tensor(g))
        res.append((y.detach().numpy(), wt.grad.numpy()))
    for ours, theirs in zip(*res):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-10)


CONVT_CASES = [
    ((5, 3, 4, 5), (3, 2, 3, 3), dict(padding=1)),                                # stride 1: flipped conv
    ((5, 4, 3, 3), (4, 3, 2, 2), dict(stride=2, groups=2, output_padding=1)),     # col2im
    ((5, 2, 4, 4), (2, 2, 3, 3), dict(dilation=2, padding=3)),                    # padding past the kernel's reach
]


@pytest.mark.parametrize("xs,ws,kw", CONVT_CASES)
def test_conv_transpose2d_split_matches_torch(split_everything, layout, xs, ws, kw):
    f = lambda x, w: P(x).conv_transpose2d(x, w, **kw)
    check(f, f, [xs, ws])


@pytest.mark.parametrize("xs,kw", [((5, 3, 7, 6), dict(kernel_size=2)), ((5, 3, 8, 6), dict(kernel_size=2)),
                                   ((5, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1))])
def test_max_pool_split_matches_torch(split_everything, xs, kw):
    f = lambda x: P(x).max_pool2d(x, **kw)  # (8, 6) with a 2x2 window: the numba kernels
    check(f, f, [xs])


def test_relu_and_its_gradient_split_match_torch(split_everything):
    x = np.random.default_rng(2).standard_normal((5, 40, 30)).astype(np.float32)
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    g = np.full(x.shape, np.nan, np.float32)  # where(out > 0, g, 0) must give 0, not NaN * 0, where out <= 0
    res = []
    for lib in (em, torch):
        t = lib.tensor(x, requires_grad=True)
        y = lib.relu(t)
        y.backward(lib.tensor(g))
        res.append((y.detach().numpy(), t.grad.numpy()))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(np.isnan(res[0][1]), x > 0)
    np.testing.assert_array_equal(res[0][1][~(x > 0)], 0)


def test_split_conv_training_step_equals_unsplit(monkeypatch, layout):
    """A whole CNN step split into chunks and threads gives the unsplit step's values."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 10, 10)).astype(np.float32)

    def step():
        em.manual_seed(0)
        model = em.nn.Sequential(em.nn.Conv2d(2, 4, 3, padding=1), em.nn.ReLU(), em.nn.MaxPool2d(2),
                                 em.nn.Conv2d(4, 3, 3), em.nn.Flatten())
        loss = (model(em.tensor(x)) ** 2).sum()
        loss.backward()
        return [loss.item()] + [p.grad.numpy() for p in model.parameters()]

    whole = step()
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(threads, "CHUNK_BYTES", 1)
    split = step()
    for a, b in zip(whole, split):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---- conv2d_weight_grad: its own gradients (second order through the weight gradient) --------

def test_weight_gradient_is_differentiable_in_both_inputs(layout):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((2, 4, 3, 3))
    r = rng.standard_normal(w.shape)
    res = []
    for lib, fn, grad in [(em, F.conv2d, em.autograd.grad), (torch, TF.conv2d, torch.autograd.grad)]:
        xt, wt, gt = (lib.tensor(a, requires_grad=True) for a in (x, w, g))
        y = fn(xt, wt, stride=2, padding=1)
        (gw,) = grad(y, [wt], grad_outputs=gt, create_graph=True)
        gx2, gg2 = grad((gw * lib.tensor(r)).sum(), [xt, gt])
        res.append((gw.detach().numpy(), gx2.numpy(), gg2.numpy()))
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
