"""Dynamic batching (ember.serve.batcher) with a fake model: merging, splitting, limits, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ember.serve.batcher import Batcher, DirectRunner, split_rows
from ember.serve.errors import ServeError


class FakeModel:
    """Doubles its input; records the batch sizes it was called with."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls, self.delay, self.fail_on = [], delay, fail_on
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.calls.append(len(x))
        time.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError("poisoned row")
        return {"output": x * 2, "sum": x.reshape(len(x), -1).sum(1)}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture()
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_split_rows():
    out = {"a": np.arange(6), "b": np.arange(12).reshape(6, 2)}
    pieces = split_rows(out, [1, 3, 2])
    assert [p["a"].tolist() for p in pieces] == [[0], [1, 2, 3], [4, 5]]
    assert pieces[2]["b"].tolist() == [[8, 9], [10, 11]]


def test_concurrent_requests_are_merged_and_each_gets_its_rows(pool):
    model, seen = FakeModel(), []
    batcher = Batcher(model, pool, max_batch_size=64, timeout_s=0.05,
                      on_batch=lambda rows, requests, s: seen.append((rows, requests)))

    async def main():
        xs = [np.full((1 + i % 3, 2), i, dtype=np.float32) for i in range(20)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        for x, out in zip(xs, outs):
            np.testing.assert_array_equal(out["output"], x * 2)
            np.testing.assert_array_equal(out["sum"], x.sum(1))

    run(main())
    assert model.calls == [sum(1 + i % 3 for i in range(20))]  # one merged model call
    assert seen == [(model.calls[0], 20)]


def test_batches_never_exceed_max_batch_size(pool):
    model = FakeModel(delay=0.01)
    batcher = Batcher(model, pool, max_batch_size=8, timeout_s=0.05)

    async def main():
        outs = await asyncio.gather(*(batcher.submit(np.full((3, 1), i)) for i in range(10)))
        assert [int(o["output"][0, 0]) for o in outs] == [2 * i for i in range(10)]

    run(main())
    assert max(model.calls) <= 8 and sum(model.calls) == 30 and len(model.calls) >= 4


def test_a_request_larger_than_the_batch_runs_alone(pool):
    model = FakeModel()
    batcher = Batcher(model, pool, max_batch_size=4, timeout_s=0.01)
    out = run(batcher.submit(np.ones((10, 1))))
    assert out["output"].shape == (10, 1) and model.calls == [10]


def test_timeout_bounds_the_wait_of_a_lone_request(pool):
    batcher = Batcher(FakeModel(), pool, max_batch_size=32, timeout_s=0.02)

    async def main():
        started = time.perf_counter()
        await batcher.submit(np.ones((1, 1)))
        return time.perf_counter() - started

    assert 0.015 < run(main()) < 0.5


def test_different_example_shapes_are_not_merged(pool):
    model = FakeModel()
    batcher = Batcher(model, pool, max_batch_size=32, timeout_s=0.02)

    async def main():
        a, b, c = await asyncio.gather(batcher.submit(np.ones((2, 3))), batcher.submit(np.ones((1, 5))),
                                       batcher.submit(np.ones((1, 3))))
        assert a["output"].shape == (2, 3) and b["output"].shape == (1, 5) and c["output"].shape == (1, 3)

    run(main())
    assert sorted(model.calls) == [1, 3]


def test_a_failing_request_does_not_fail_the_others(pool):
    model = FakeModel(fail_on=-1)
    batcher = Batcher(model, pool, max_batch_size=32, timeout_s=0.02)

    async def main():
        good1 = batcher.submit(np.ones((1, 2)))
        bad = batcher.submit(np.full((1, 2), -1.0))
        good2 = batcher.submit(np.full((2, 2), 3.0))
        return await asyncio.gather(good1, bad, good2, return_exceptions=True)

    r1, r_bad, r2 = run(main())
    assert isinstance(r_bad, ValueError)
    np.testing.assert_array_equal(r1["output"], [[2, 2]])
    np.testing.assert_array_equal(r2["output"], [[6, 6], [6, 6]])
    assert model.calls[0] == 4  # merged first, then each alone


def test_queue_limit_gives_503_and_counter_returns_to_zero(pool):
    counter = {"rows": 0}
    batcher = Batcher(FakeModel(delay=0.02), pool, max_batch_size=4, timeout_s=0.001, counter=counter,
                      max_queued_rows=6)

    async def main():
        return await asyncio.gather(*(batcher.submit(np.ones((2, 1))) for _ in range(5)), return_exceptions=True)

    results = run(main())
    rejected = [r for r in results if isinstance(r, ServeError)]
    assert rejected and all(r.status == 503 for r in rejected)
    assert counter["rows"] == 0


def test_closed_batcher_answers_queued_requests_then_refuses(pool):
    batcher = Batcher(FakeModel(delay=0.01), pool, max_batch_size=2, timeout_s=0.001)

    async def main():
        pending = [asyncio.ensure_future(batcher.submit(np.ones((1, 1)))) for _ in range(5)]
        await asyncio.sleep(0)
        batcher.close()
        done = await asyncio.gather(*pending)
        with pytest.raises(ServeError) as info:
            await batcher.submit(np.ones((1, 1)))
        assert info.value.status == 503
        return done

    assert len(run(main())) == 5


def test_direct_runner_runs_each_request_alone(pool):
    model, seen = FakeModel(), []
    runner = DirectRunner(model, pool, on_batch=lambda rows, requests, s: seen.append(rows))

    async def main():
        return await asyncio.gather(*(runner.submit(np.full((2, 1), i)) for i in range(4)))

    outs = run(main())
    assert [int(o["output"][0, 0]) for o in outs] == [0, 2, 4, 6]
    assert model.calls == [2, 2, 2, 2] and seen == [2, 2, 2, 2]
