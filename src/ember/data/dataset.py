"""Datasets and samplers (PyTorch's names): map-style ``Dataset``, ``TensorDataset``,
``Subset``, ``ConcatDataset``, ``random_split``, and the samplers that order them."""

from __future__ import annotations

import bisect
import math

import numpy as np

from ..tensor import Tensor


class Dataset:
    """Map-style dataset: implement ``__getitem__(i)`` and ``__len__()``."""

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def __add__(self, other):
        return ConcatDataset([self, other])


class IterableDataset:
    """Stream-style dataset: implement ``__iter__``."""

    def __iter__(self):
        raise NotImplementedError


def _as_array(t):
    return t.data if isinstance(t, Tensor) else np.asarray(t)


class TensorDataset(Dataset):
    """Samples are tuples of rows of ``arrays`` (ember tensors or NumPy arrays)."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        self.arrays = [_as_array(t) for t in tensors]
        n = len(self.arrays[0])
        for a in self.arrays:
            if len(a) != n:
                raise ValueError(f"TensorDataset: all tensors must have the same first dim, got "
                                 f"{[len(b) for b in self.arrays]}")

    @property
    def tensors(self):
        return tuple(Tensor._make(a) for a in self.arrays)

    def __getitem__(self, index):
        return tuple(Tensor._make(np.asarray(a[index])) for a in self.arrays)

    def __len__(self):
        return len(self.arrays[0])


class Subset(Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]

    def __len__(self):
        return len(self.indices)


class ConcatDataset(Dataset):
    def __init__(self, datasets):
        self.datasets = list(datasets)
        self.cumulative = list(np.cumsum([len(d) for d in self.datasets]))

    def __len__(self):
        return self.cumulative[-1] if self.cumulative else 0

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"ConcatDataset index {index} out of range for length {len(self)}")
        d = bisect.bisect_right(self.cumulative, index)
        start = self.cumulative[d - 1] if d else 0
        return self.datasets[d][index - start]


def random_split(dataset, lengths, generator=None):
    """Split into non-overlapping subsets of the given lengths (or fractions summing to 1)."""
    from ..random import _gen

    n = len(dataset)
    if any(x < 0 for x in lengths):
        raise ValueError(f"random_split: lengths {list(lengths)} include a negative length; give sizes >= 0 "
                         f"summing to {n}, or fractions in [0, 1] summing to 1")
    if all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0):
        counts = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if sum(lengths) != n:
        raise ValueError(f"random_split: lengths {list(lengths)} sum to {sum(lengths)}, dataset has {n}")
    perm = _gen(generator).permutation(n)
    out, start = [], 0
    for k in lengths:
        out.append(Subset(dataset, perm[start:start + k].tolist()))
        start += k
    return out


class Sampler:
    def __iter__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    def __init__(self, data_source):
        self.n = len(data_source)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


class RandomSampler(Sampler):
    """A fresh permutation on each iteration, drawn from ``generator`` (default: ember's global)."""

    def __init__(self, data_source, generator=None):
        self.n, self.generator = len(data_source), generator

    def __iter__(self):
        from ..random import _gen

        return iter(_gen(self.generator).permutation(self.n).tolist())

    def __len__(self):
        return self.n


class BatchSampler(Sampler):
    def __init__(self, sampler, batch_size, drop_last):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
