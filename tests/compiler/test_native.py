"""BLAS calls and the spin barrier for numba kernels (ember/compiler/native.py), against NumPy."""

import threading

import numba
import numpy as np
import pytest

from ember.compiler import native
from ember.ops import threads


@numba.njit
def _gemm(address, int64_api, trans_a, trans_b, a, b, c):
    m, n = c.shape
    k = a.shape[0] if trans_a == native.CBLAS_TRANS else a.shape[1]
    native.blas_gemm(address, int64_api, trans_a, trans_b, m, n, k, a, a.strides[0] // a.itemsize,
                     b, b.strides[0] // b.itemsize, c, c.strides[0] // c.itemsize)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_blas_gemm_equals_numpy_matmul_on_row_strided_views(dtype, trans_a, trans_b):
    found = threads.gemm_address(dtype)
    if found is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS ember can call")
    rng = np.random.default_rng(0)
    m, n, k = 5, 3, 7
    # operands are row slices of wider arrays: lda/ldb/ldc differ from the widths
    a_full = rng.standard_normal((9, 11)).astype(dtype)
    b_full = rng.standard_normal((9, 11)).astype(dtype)
    a = a_full[:k, 2:2 + m] if trans_a else a_full[:m, 2:2 + k]
    b = b_full[:n, 1:1 + k] if trans_b else b_full[:k, 1:1 + n]
    c_full = np.full((m, 6), 7.0, dtype=dtype)
    c = c_full[:, :n]
    codes = {False: native.CBLAS_NO_TRANS, True: native.CBLAS_TRANS}
    _gemm(*found, codes[trans_a], codes[trans_b], a, b, c)
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert (c_full[:, n:] == 7.0).all()  # nothing written past the view


@numba.njit(nogil=True)
def _count_in_lockstep(counters, parts, index, steps, log):
    for step in range(steps):
        log[step, index] = native.atomic_load(counters, 0)  # no part may be a step ahead
        if not native.spin_barrier(counters, parts * (step + 1)):
            return False
    return True


def test_spin_barrier_keeps_threads_in_lockstep():
    parts, steps = 3, 200
    counters = np.zeros(2, dtype=np.int64)
    log = np.zeros((steps, parts), dtype=np.int64)
    done = []
    workers = [threading.Thread(target=lambda i=i: done.append(_count_in_lockstep(counters, parts, i, steps, log)))
               for i in range(parts)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert done == [True] * parts and counters[0] == parts * steps
    # at step s a part sees between s * parts (all arrived at the last barrier) and
    # s * parts + parts - 1 arrivals
    lower = np.arange(steps)[:, None] * parts
    assert ((log >= lower) & (log < lower + parts)).all()
