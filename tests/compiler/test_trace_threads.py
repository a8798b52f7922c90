"""Tracing is per thread: ops another thread runs while em.jit traces (a DataLoader worker
thread, a server thread) run eagerly and never land in the graph."""

import threading

import numpy as np

import ember as em


def test_other_threads_run_eagerly_while_a_function_is_traced(fast_thread_switching):
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
    assert errors == []
    assert results and set(results) == {6.0}
    want = x.numpy().astype(np.float64)
    for _ in range(300):
        want = want * 1.0001 + 0.1
    np.testing.assert_allclose(got, want.sum(), rtol=1e-4)


def _run_concurrently(fn, inputs, threads=4, rounds=25):
    """Every thread calls ``fn`` on every input ``rounds`` times; returns {input index: outputs}."""
    got, errors = {i: [] for i in range(len(inputs))}, []
    start = threading.Barrier(threads)

    def worker(offset):
        start.wait()
        try:
            for r in range(rounds):
                i = (offset + r) % len(inputs)
                got[i].append(fn(inputs[i]).numpy().copy())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    return got


@em.no_grad()
def test_threads_calling_one_compiled_graph_at_once_each_get_their_own_result(fast_thread_switching):
    # the graph reuses its intermediate buffers (here the matvec kernel's product and the
    # elementwise chain's temporaries) from run to run, so concurrent runs must not share them
    em.manual_seed(0)
    model = em.nn.Sequential(em.nn.Linear(512, 512), em.nn.ReLU(), em.nn.Linear(512, 64), em.nn.Tanh())
    model.eval()
    f = em.jit(model)
    inputs = [em.randn(1, 512) * (i + 1) for i in range(4)]
    want = [model(x).numpy() for x in inputs]
    for i, outs in _run_concurrently(f, inputs).items():
        for out in outs:
            np.testing.assert_allclose(out, want[i], rtol=1e-5, atol=1e-6)
