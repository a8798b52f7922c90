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


def _stack(arrays):
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(f"default_collate: samples have different shapes {shapes}; give them one shape "
                         "(pad or crop) or pass a collate_fn")
    return Tensor._make(np.stack(arrays))


def default_collate(batch):
    """Stack a list of samples: tensors/arrays/numbers become one tensor with a batch dim;
    tuples, lists and dicts are collated element-wise. Dtypes as torch's default_collate:
    arrays, tensors and NumPy scalars keep theirs; Python bools, ints and floats give bool,
    int64 and float64."""
    first = batch[0]
    if isinstance(first, Tensor):
        return _stack([b.data for b in batch])
    if isinstance(first, np.ndarray):
        return _stack(batch)
    if isinstance(first, (str, bytes)):
        return list(batch)
    if isinstance(first, (np.number, np.bool_)):
        return Tensor._make(np.asarray(batch))
    if isinstance(first, bool):
        return Tensor._make(np.asarray(batch, dtype=np.bool_))
    if isinstance(first, int):  # a float among the ints makes them float32, as torch.tensor does
        arr = np.asarray(batch)
        return Tensor._make(arr.astype(np.int64 if arr.dtype.kind in "biu" else np.float32))
    if isinstance(first, float):
        return Tensor._make(np.asarray(batch, dtype=np.float64))
    if isinstance(first, dict):
        return {k: default_collate([b[k] for b in batch]) for k in first}
    if isinstance(first, (tuple, list)):
        sizes = {len(b) for b in batch}
        if len(sizes) != 1:
            raise ValueError(f"default_collate: samples have different lengths {sorted(sizes)}")
        return _like(first, [default_collate(list(items)) for items in zip(*batch)])
    raise TypeError(f"default_collate: cannot batch samples of type {type(first).__name__}; pass a "
                    "collate_fn")


def _like(seq, items):
    """A tuple, namedtuple or list of ``items``, of the type of ``seq``."""
    if hasattr(seq, "_fields"):
        return type(seq)(*items)
    return tuple(items) if isinstance(seq, tuple) else list(items)


class _Array:
    """A tensor's array on its way from a worker process (a marker no sample can look like)."""

    def __init__(self, data):
        self.data = data


def _to_arrays(obj):
    """Tensors -> arrays, for sending batches between processes."""
    if isinstance(obj, Tensor):
        return _Array(obj.data)
    if isinstance(obj, tuple):
        return _like(obj, [_to_arrays(o) for o in obj])
    if isinstance(obj, list):
        return [_to_arrays(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    return obj


def _from_arrays(obj):
    if isinstance(obj, _Array):
        return Tensor._make(obj.data)
    if isinstance(obj, tuple):
        return _like(obj, [_from_arrays(o) for o in obj])
    if isinstance(obj, list):
        return [_from_arrays(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _from_arrays(v) for k, v in obj.items()}
    return obj


def _gather(dataset, indices):
    """``[dataset[i] for i in indices]``; an error raised by the dataset gets a note naming the index."""
    samples = []
    for i in indices:
        try:
            samples.append(dataset[i])
        except Exception as e:
            if hasattr(e, "add_note"):  # Python >= 3.11
                e.add_note(f"DataLoader: raised by dataset[{i!r}] ({type(dataset).__name__}), loading the "
                           f"batch of indices {list(indices)}")
            raise
    return samples


def _fetch(dataset, collate_fn, batched, indices):
    """One batch (or, unbatched, one sample) of ``dataset``: the same in the main thread and in workers."""
    if not batched:
        return _gather(dataset, indices)[0]
    if collate_fn is None and isinstance(dataset, TensorDataset):  # one fancy index per array
        idx = np.asarray(indices)
        return tuple(Tensor._make(a[idx]) for a in dataset.arrays)
    return (collate_fn or default_collate)(_gather(dataset, indices))


_WORKER_STATE: dict = {}


def _worker_init(dataset, collate_fn, batched):
    _WORKER_STATE["args"] = (dataset, collate_fn, batched)


def _load_in_process(indices):
    return _to_arrays(_fetch(*_WORKER_STATE["args"], indices))


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
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size <= 0):
            raise ValueError(f"DataLoader: batch_size must be a positive int or None, got {batch_size!r}")
        if isinstance(dataset, IterableDataset) and (shuffle or sampler is not None):
            raise ValueError("DataLoader: an IterableDataset has no indices, so no shuffle or sampler: shuffle "
                             "inside its __iter__ instead")
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
        return _fetch(self.dataset, self.collate_fn, self.batch_size is not None, indices)

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

    def _new_executor(self):
        if self.worker_type == "thread":
            return cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="ember-data")
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        return cf.ProcessPoolExecutor(self.num_workers, mp_context=ctx, initializer=_worker_init,
                                      initargs=(self.dataset, self.collate_fn, self.batch_size is not None))

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
        # persistent workers serve every epoch; otherwise each iterator has its own, so that one
        # iterator ending does not stop another one still running over this loader
        if not self.persistent_workers:
            executor = self._new_executor()
        else:
            if self._executor is None:
                self._executor = self._new_executor()
            executor = self._executor
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
                executor.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        try:
            self._shutdown()
        except Exception:
            pass


__all__ = ["DataLoader", "default_collate", "Dataset"]
