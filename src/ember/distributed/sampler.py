"""``DistributedSampler``: each rank's share of a dataset's indices, as in PyTorch."""

from __future__ import annotations

import math

import numpy as np

from ..data.dataset import Sampler


class DistributedSampler(Sampler):
    """Indices ``rank, rank + num_replicas, ...`` of one (per-epoch shuffled) order of the dataset.

    As in ``torch.utils.data.DistributedSampler``: every rank gets ``ceil(len / num_replicas)``
    indices, the order is padded by repeating its start so that all ranks get the same count
    (``drop_last=True`` drops the tail instead), and the shuffle depends only on ``seed`` and the
    epoch set with ``set_epoch`` (call it at the start of each epoch, or each epoch repeats the
    first one's order). The permutation is drawn with NumPy's PCG64 seeded by (seed, epoch), so
    it differs from torch's, but is the same on every rank.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        from . import comm

        if num_replicas is None:
            num_replicas = comm.world_size()
        if rank is None:
            rank = comm.rank()
        if not (isinstance(num_replicas, int) and num_replicas >= 1):
            raise ValueError(f"DistributedSampler: num_replicas must be a positive int, got {num_replicas!r}")
        if not (isinstance(rank, int) and 0 <= rank < num_replicas):
            raise ValueError(f"DistributedSampler: rank must be in [0, {num_replicas}), got {rank!r}")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if drop_last and n % num_replicas:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle for ``epoch`` (the same on every rank)."""
        self.epoch = int(epoch)

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[:self.total_size]
        elif self.total_size > n:  # pad with the order's start (repeated if the padding is longer)
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        return iter(order[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self):
        return self.num_samples
