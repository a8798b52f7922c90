"""Server-side dynamic batching.

Each served model version has one ``Batcher``: an asyncio task that takes the oldest waiting
request, waits up to ``timeout`` for others with the same example shape to join it, concatenates
up to ``max_batch_size`` rows, runs the model once in a worker thread, and hands every caller
its own rows. One batch per version is in flight at a time; the next one gathers meanwhile, so
under load batches fill up without waiting for the timeout. A request larger than
``max_batch_size`` runs as a batch of its own.

If a merged batch fails, each of its requests is run again alone, so one bad request (possible
only for models whose file records no input signature) cannot fail the others.

``DirectRunner`` has the same interface without batching (``--no-batching``): every request
is its own model call, run concurrently on the worker threads.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ServeError, unavailable


class RunnerClosed(ServeError):
    """The version was unloaded between choosing it and queueing the request (503: retry)."""

    def __init__(self):
        super().__init__(503, "this model version was just unloaded; retry", {"Retry-After": "1"})


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self):
        return self.x.shape[1:], self.x.dtype


def split_rows(outputs: dict, counts) -> list:
    """``outputs`` (name -> array, batch first) cut into consecutive pieces of ``counts`` rows."""
    pieces, start = [], 0
    for n in counts:
        pieces.append({k: v[start:start + n] for k, v in outputs.items()})
        start += n
    return pieces


class Batcher:
    """Merges concurrent ``submit`` calls into model calls of at most ``max_batch_size`` rows.

    ``run(x) -> {name: array}`` runs the model (in ``executor``); ``on_batch(rows, requests,
    seconds)`` and ``on_wait(seconds)`` report to metrics; ``counter`` is shared by every
    batcher of the server and bounds the rows waiting (``max_queued_rows``; beyond it 503).
    """

    def __init__(self, run, executor, max_batch_size=32, timeout_s=0.002, on_batch=None, on_wait=None,
                 counter=None, max_queued_rows=None):
        self.run = run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.on_batch = on_batch or (lambda rows, requests, seconds: None)
        self.on_wait = on_wait or (lambda seconds: None)
        self.counter = counter if counter is not None else {"rows": 0}
        self.max_queued_rows = max_queued_rows
        self._queue: collections.deque = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._inflight: list = []

    async def submit(self, x: np.ndarray) -> dict:
        if self._closed:
            raise RunnerClosed()
        if self.max_queued_rows is not None and self.counter["rows"] + len(x) > self.max_queued_rows:
            raise unavailable(f"the server is overloaded: {self.counter['rows']} rows are waiting for the model "
                              f"(--max-queued-rows {self.max_queued_rows}); retry later")
        loop = asyncio.get_running_loop()
        item = _Pending(x, loop.create_future())
        self._queue.append(item)
        self.counter["rows"] += len(x)
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop(), name="ember-serve-batcher")
        self._wakeup.set()
        return await item.future

    def close(self) -> None:
        """Stop after the requests already queued are answered."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def _loop(self):
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = await self._gather()
                if batch:
                    await self._run(batch)
        except BaseException:  # cancelled at shutdown (or a bug): nobody may wait forever
            for item in self._inflight:
                _fail(item, unavailable("the server is shutting down"))
            while self._queue:
                item = self._queue.popleft()
                self.counter["rows"] -= len(item.x)
                _fail(item, unavailable("the server is shutting down"))
            raise

    def _take_matching(self, batch, rows, key):
        """Move queued requests with example shape ``key`` into ``batch`` while they fit."""
        kept = collections.deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # the caller went away
                self.counter["rows"] -= len(item.x)
            elif item.key == key and rows + len(item.x) <= self.max_batch_size:
                batch.append(item)
                rows += len(item.x)
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return rows

    async def _gather(self):
        first = self._queue.popleft()
        if first.future.done():
            self.counter["rows"] -= len(first.x)
            return []
        batch, rows = [first], len(first.x)
        self._inflight = batch
        deadline = first.enqueued + self.timeout_s
        loop = asyncio.get_running_loop()
        while True:
            rows = self._take_matching(batch, rows, first.key)
            remaining = deadline - time.perf_counter()
            if rows >= self.max_batch_size or remaining <= 0 or self._closed:
                return batch
            self._wakeup.clear()
            handle = loop.call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                handle.cancel()

    async def _run(self, batch):
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for item in batch:
            self.on_wait(started - item.enqueued)
        rows = [len(item.x) for item in batch]
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, x)
            except Exception as e:
                if len(batch) == 1:
                    _fail(batch[0], e)
                    return
                # isolate the failing request(s): run each alone
                for item in batch:
                    try:
                        _succeed(item, await loop.run_in_executor(self.executor, self.run, item.x))
                    except Exception as e2:
                        _fail(item, e2)
                return
            self.on_batch(sum(rows), len(batch), time.perf_counter() - started)
            for item, piece in zip(batch, split_rows(outputs, rows)):
                _succeed(item, piece)
        finally:
            self.counter["rows"] -= sum(rows)


def _succeed(item, value):
    if not item.future.done():
        item.future.set_result(value)


def _fail(item, error):
    if not item.future.done():
        item.future.set_exception(error)


class DirectRunner:
    """No batching: each request is one model call on the worker threads."""

    def __init__(self, run, executor, on_batch=None, counter=None, max_queued_rows=None):
        self.run = run
        self.executor = executor
        self.on_batch = on_batch or (lambda rows, requests, seconds: None)
        self.counter = counter if counter is not None else {"rows": 0}
        self.max_queued_rows = max_queued_rows
        self._closed = False

    async def submit(self, x: np.ndarray) -> dict:
        if self._closed:
            raise RunnerClosed()
        if self.max_queued_rows is not None and self.counter["rows"] + len(x) > self.max_queued_rows:
            raise unavailable(f"the server is overloaded: {self.counter['rows']} rows are waiting for the model "
                              f"(--max-queued-rows {self.max_queued_rows}); retry later")
        self.counter["rows"] += len(x)
        try:
            started = time.perf_counter()
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, x)
            self.on_batch(len(x), 1, time.perf_counter() - started)
            return out
        finally:
            self.counter["rows"] -= len(x)

    def close(self) -> None:
        self._closed = True
