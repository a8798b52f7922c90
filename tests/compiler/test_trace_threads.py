"""Tracing is per thread: ops another thread runs while em.jit traces (a DataLoader worker
thread, a server thread) run eagerly and never land in the graph."""

import sys
import threading

import numpy as np

import ember as em


def test_other_threads_run_eagerly_while_a_function_is_traced():
    stop, results, errors = threading.Event(), [], []

    def worker():
        while not stop.is_set():
            try:
                results.append((em.ones(3) * 2).sum().item())
            except Exception as e:  # a traced value reaching .item() would raise TraceError
                errors.append(repr(e))
                return

    @em.jit
    def f(x):
        y = x
        for _ in range(300):
            y = y * 1.0001 + 0.1
        return y.sum()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=worker)
    t.start()
    try:
        x = em.randn(50)
        for n in (50, 51, 52):  # three signatures: three traces
            x = em.randn(n)
            got = f(x).item()
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert results and set(results) == {6.0}
    want = x.numpy().astype(np.float64)
    for _ in range(300):
        want = want * 1.0001 + 0.1
    np.testing.assert_allclose(got, want.sum(), rtol=1e-4)
