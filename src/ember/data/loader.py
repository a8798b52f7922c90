"""``DataLoader``: batches from a dataset, optionally shuffled and loaded in background workers.

Batch order depends only on the sampler (and its seed), never on the workers: with
``num_workers > 0`` batches are computed concurrently in threads (or processes) but yielded
in order from a bounded prefetch window, so results equal ``num_workers=0`` exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing

import numpy as np

from ..tensor import Tensor
from .dataset import BatchSampler, Dataset, IterableDataset, RandomSampler, TensorDataset


def default_collate(batch):
    """Stack a list of samples: tensors/arrays/numbers become one tensor with a batch dim;
    tuples, lists and dicts are collated element-wise."""
    first = batch[0]
    if isinstance(first, Tensor):
        return Tensor._make(np.stack([b.data for b in batch]))
    if isinstance(first, np.ndarray):
        return Tensor._make(np.stack(batch))
    if isinstance(first, (bool, np.bool_)):
        return Tensor._make(np.asarray(batch, dtype=np.bool_))
    if isinstance(first, (int, np.integer)):
        return Tensor._make(np.asarray(batch, dtype=np.int64))
    if isinstance(first, (float, np.floating)):
        return Tensor._make(np.asarray(batch, dtype=np.float32))
    if isinstance(first, (str, bytes)):
        return list(batch)
    if isinstance(first, dict):
        return {k: default_collate([b[k] for b in batch]) for k in first}
    if isinstance(first, (tuple, list)):
        sizes = {len(b) for b in batch}
        if len(sizes) != 1:
            raise ValueError(f"default_collate: samples have different lengths {sorted(sizes)}")
        cols = [default_collate(list(items)) for items in zip(*batch)]
        return tuple(cols) if isinstance(first, tuple) else cols
    raise TypeError(f"default_collate: cannot batch samples of type {type(first).__name__}; pass a "
                    "collate_fn")


def _to_arrays(obj):
    """Tensors -> arrays, for sending batches between processes."""
    if isinstance(obj, Tensor):
        return ("__tensor__", obj.data)
    if isinstance(obj, tuple):
        return tuple(_to_arrays(o) for o in obj)
    if isinstance(obj, list):
        return [_to_arrays(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    return obj


def _from_arrays(obj):
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__tensor__":
        return Tensor._make(obj[1])
    if isinstance(obj, tuple):
        return tuple(_from_arrays(o) for o in obj)
    if isinstance(obj, list):
        return [_from_arrays(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _from_arrays(v) for k, v in obj.items()}
    return obj


_WORKER_STATE: dict = {}


def _worker_init(dataset, collate_fn):
    _WORKER_STATE["dataset"], _WORKER_STATE["collate"] = dataset, collate_fn


def _load_in_process(indices):
    ds, collate = _WORKER_STATE["dataset"], _WORKER_STATE["collate"]
    return _to_arrays(collate([ds[i] for i in indices]))


class DataLoader:
    """Iterate over ``dataset`` in batches.

    Args:
        batch_size: samples per batch (None: yield samples one by one, uncollated).
        shuffle: a new random order each epoch; reproducible with ``seed`` (epoch e uses
            seed (seed, e)), with ``generator``, or with ``em.manual_seed`` otherwise.
        drop_last: drop the last incomplete batch.
        collate_fn: turns a list of samples into a batch (default ``default_collate``).
        num_workers: load batches in this many background workers (threads, or processes
            with ``worker_type="process"``); the batches are the same as with 0.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 collate_fn=None, num_workers=0, sampler=None, generator=None, prefetch_factor=2,
                 persistent_workers=False, worker_type="thread"):
        if num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be >= 0, got {num_workers}")
        if worker_type not in ("thread", "process"):
            raise ValueError(f"DataLoader: worker_type must be 'thread' or 'process', got {worker_type!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: give either sampler or shuffle=True, not both")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.drop_last, self.seed, self.generator = drop_last, seed, generator
        self.collate_fn = collate_fn
        self.num_workers, self.prefetch_factor = num_workers, max(1, prefetch_factor)
        self.persistent_workers, self.worker_type = persistent_workers, worker_type
        self.sampler = sampler
        self.epoch = 0
        self._executor = None

    # ---- batch order -----------------------------------------------------------------
    def _order(self):
        if self.sampler is not None:
            return list(self.sampler)
        n = len(self.dataset)
        if not self.shuffle:
            return range(n)
        from ..random import Generator

        if self.seed is not None:
            gen = Generator(None)
            gen.np = np.random.Generator(np.random.PCG64([int(self.seed), self.epoch]))
        else:
            gen = self.generator
        return RandomSampler(self.dataset, gen).__iter__()

    def _index_batches(self):
        if self.batch_size is None:
            return [[i] for i in self._order()]
        return list(BatchSampler(self._order(), self.batch_size, self.drop_last))

    def __len__(self):
        if isinstance(self.dataset, IterableDataset):
            raise TypeError("len() of a DataLoader over an IterableDataset is not defined")
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # ---- loading ------------------------------------------------------------------------
    def _fetch(self, indices):
        if self.batch_size is None:
            return self.dataset[indices[0]]
        ds = self.dataset
        if self.collate_fn is None and isinstance(ds, TensorDataset):  # one fancy index per array
            idx = np.asarray(indices)
            return tuple(Tensor._make(a[idx]) for a in ds.arrays)
        return (self.collate_fn or default_collate)([ds[i] for i in indices])

    def _iter_iterable(self):
        collate = self.collate_fn or default_collate
        if self.batch_size is None:
            yield from self.dataset
            return
        batch = []
        for sample in self.dataset:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch and not self.drop_last:
            yield collate(batch)

    def _get_executor(self):
        if self._executor is None:
            if self.worker_type == "thread":
                self._executor = cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="ember-data")
            else:
                ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else "spawn")
                self._executor = cf.ProcessPoolExecutor(
                    self.num_workers, mp_context=ctx, initializer=_worker_init,
                    initargs=(self.dataset, self.collate_fn or default_collate))
        return self._executor

    def _shutdown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __iter__(self):
        if isinstance(self.dataset, IterableDataset):
            yield from self._iter_iterable()
            return
        batches = self._index_batches()
        self.epoch += 1
        if self.num_workers == 0:
            for indices in batches:
                yield self._fetch(indices)
            return
        yield from self._iter_workers(batches)

    def _iter_workers(self, batches):
        executor = self._get_executor()
        process = self.worker_type == "process"
        submit = (lambda ix: executor.submit(_load_in_process, ix)) if process else \
            (lambda ix: executor.submit(self._fetch, ix))
        window = self.num_workers * self.prefetch_factor
        pending = []
        try:
            it = iter(batches)
            for indices in it:
                pending.append(submit(indices))
                if len(pending) >= window:
                    break
            for indices in it:
                result = pending.pop(0).result()
                pending.append(submit(indices))
                yield _from_arrays(result) if process else result
            while pending:
                result = pending.pop(0).result()
                yield _from_arrays(result) if process else result
        finally:
            for f in pending:
                f.cancel()
            if not self.persistent_workers:
                self._shutdown()

    def __del__(self):
        try:
            self._shutdown()
        except Exception:
            pass


__all__ = ["DataLoader", "default_collate", "Dataset"]
