"""``model.fit(..., distributed=True)``: the Keras loop made data-parallel.

``DistributedFit.setup`` copies rank 0's weights to every rank, hooks gradient averaging onto
the model's parameters, gives each rank its shard of array data (a ``DistributedSampler``
order per epoch), and keeps the progress bar and file-writing callbacks on rank 0 only.
``average_logs`` makes the epoch's loss and metrics the mean over all ranks, so callbacks that
decide (EarlyStopping, ReduceLROnPlateau) decide the same on every rank.
"""

from __future__ import annotations

import math

import numpy as np

from ..training.callbacks import Callback, CSVLogger, ModelCheckpoint
from . import comm
from .ddp import GradientReducer, broadcast_parameters
from .sampler import DistributedSampler


def _writes_files(callback):
    return isinstance(callback, (ModelCheckpoint, CSVLogger)) or getattr(callback, "rank_zero_only", False)


class _ShardedArrayBatches:
    """This rank's batches of in-memory arrays: DistributedSampler indices, re-shuffled each epoch."""

    def __init__(self, batches, seed):
        self.inner = batches
        self.sampler = DistributedSampler(range(batches.n), shuffle=batches.shuffle, seed=seed)

    def __len__(self):
        return math.ceil(len(self.sampler) / self.inner.batch_size)

    def __iter__(self):
        from ..tensor import Tensor
        from ..training.trainer import _take

        order = np.fromiter(self.sampler, dtype=np.int64, count=len(self.sampler))
        bs, x, y = self.inner.batch_size, self.inner.x, self.inner.y
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            yield _take(x, idx), (None if y is None else Tensor._make(y[idx]))


class _EpochSync(Callback):
    """Sets each epoch's shard order, and unhooks gradient averaging when training ends."""

    def __init__(self, sampler, reducer):
        self.sampler, self.reducer = sampler, reducer

    def on_epoch_begin(self, epoch, logs=None):
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def on_train_end(self, logs=None):
        self.reducer.remove()


class DistributedFit:
    def __init__(self, model):
        comm.init()
        self.model = model
        self.rank, self.size = comm.rank(), comm.world_size()
        self.reducer = None

    def setup(self, train, callbacks, verbose):
        """(this rank's batches, its callbacks, its verbosity) for ``fit``."""
        from ..training.trainer import ArrayBatches

        model = self.model
        if model.compiled.jit is not None:
            raise ValueError("fit: distributed=True does not work with jit_compile=True yet (the compiled step "
                             "contains the optimizer update, which must come after the gradient average); "
                             "compile with jit_compile=False")
        if model._unbuilt_layers():
            raise ValueError("fit(distributed=True): the model has layers whose sizes are not known yet, so there "
                             "are no weights to copy from rank 0; call model.build(input_shape) before fit")
        broadcast_parameters(model)
        previous = getattr(model, "_distributed_reducer", None)
        if previous is not None:
            previous.remove()
        names = {id(p): name for name, p in model.named_parameters()}
        self.reducer = GradientReducer(model.parameters(), names=names)
        object.__setattr__(model, "_distributed_reducer", self.reducer)
        sampler = None
        if isinstance(train, ArrayBatches):
            from ..random import default_generator

            seed = comm.shared_seed(int(default_generator.np.integers(2 ** 31)))  # rank 0's draw
            train = _ShardedArrayBatches(train, seed)
            sampler = train.sampler
        elif isinstance(getattr(train, "sampler", None), DistributedSampler):
            sampler = train.sampler  # a DataLoader the user sharded: advance its epoch
        self._check_same_length(train)
        kept = [c for c in (callbacks or []) if self.rank == 0 or not _writes_files(c)]
        return train, [_EpochSync(sampler, self.reducer)] + kept, verbose if self.rank == 0 else 0

    def _check_same_length(self, train):
        try:
            steps = len(train)
        except TypeError:
            return  # an iterable without len: the ranks must yield equally many batches
        counts = np.array([steps, -steps], dtype=np.int64)
        comm.all_reduce(counts, "max")
        if counts[0] != -counts[1]:
            raise ValueError(f"fit(distributed=True): the ranks have different numbers of batches per epoch "
                             f"(between {-counts[1]} and {counts[0]}; rank {self.rank} has {steps}). Give each "
                             f"rank an equal share, e.g. DataLoader(dataset, sampler=DistributedSampler(dataset))")

    def average_logs(self, logs, count):
        """The epoch's logs averaged over ranks; the loss weighted by each rank's sample count."""
        if self.size == 1:
            return logs
        keys = list(logs)
        values = np.array([count] + [logs[k] * (count if k == "loss" else 1.0) for k in keys], np.float64)
        comm.all_reduce(values, "sum")
        total = values[0]
        return {k: float(v / total if k == "loss" else v / self.size) for k, v in zip(keys, values[1:])}
