"""Grad mode is per thread, as in PyTorch: one thread's no_grad() never changes another's."""

import threading

import ember as em


def test_concurrent_no_grad_blocks_leave_recording_on(fast_thread_switching):
    # with one global flag, interleaved enter/exit pairs restore each other's saved value and
    # can leave recording off for everybody (a model server runs predictions this way)
    start = threading.Barrier(4)

    def worker():
        start.wait()
        for _ in range(3000):
            with em.no_grad():
                pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert em.is_grad_enabled()


def test_no_grad_in_one_thread_does_not_reach_another():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other():
        inside.wait()
        x = em.ones(2, requires_grad=True)
        seen["recording"] = em.is_grad_enabled()
        seen["requires_grad"] = (x * 2).requires_grad
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with em.no_grad():
        inside.set()
        release.wait(10)
        assert not em.is_grad_enabled()
    t.join()
    assert seen == {"recording": True, "requires_grad": True}
