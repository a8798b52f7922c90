"""Datasets and samplers against torch.utils.data: same items, same index orders where the API
is deterministic, and for the random ones (RandomSampler, random_split) the same sizes plus
reproducibility from ember's generators."""

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import ember as em
from ember.data import (
    BatchSampler,
    ConcatDataset,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    random_split,
)


def _np(x):
    return x.numpy() if isinstance(x, (em.Tensor, torch.Tensor)) else np.asarray(x)


def _assert_items_equal(ours, theirs):
    """Two samples (tuples of tensors, or plain values) hold the same values and dtypes."""
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _assert_items_equal(a, b)
        return
    a, b = _np(ours), _np(theirs)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


class Squares(Dataset):
    def __init__(self, n, offset=0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.offset + (i % self.n) ** 2


class TorchSquares(tud.Dataset):
    def __init__(self, n, offset=0):
        self.inner = Squares(n, offset)

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


# ---- TensorDataset ------------------------------------------------------------------------------

def test_tensor_dataset_items_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 2)).astype(np.float32)
    y = rng.integers(0, 5, 7)
    ours = TensorDataset(em.tensor(x), y)  # an ember tensor and a NumPy array
    theirs = tud.TensorDataset(torch.tensor(x), torch.tensor(y))
    assert len(ours) == len(theirs) == 7
    for i in range(-7, 7):
        _assert_items_equal(ours[i], theirs[i])
    _assert_items_equal(ours.tensors, theirs.tensors)
    with pytest.raises(IndexError):
        ours[7]


def test_tensor_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"TensorDataset.*\[4, 3\]"):
        TensorDataset(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="at least one"):
        TensorDataset()


# ---- Subset, ConcatDataset --------------------------------------------------------------------------

def test_subset_matches_torch():
    idx = [5, 0, 3, 3, 9]
    ours, theirs = Subset(Squares(10), idx), tud.Subset(TorchSquares(10), idx)
    assert len(ours) == len(theirs)
    assert [ours[i] for i in range(-5, 5)] == [theirs[i] for i in range(-5, 5)]
    assert Subset(Squares(10), range(2, 4)).indices == [2, 3]


@pytest.mark.parametrize("sizes", [[3], [3, 4], [2, 0, 5], [0, 4], [1, 1, 1, 1]])
def test_concat_dataset_matches_torch(sizes):
    ours = ConcatDataset([Squares(n, 100 * k) for k, n in enumerate(sizes)])
    theirs = tud.ConcatDataset([TorchSquares(n, 100 * k) for k, n in enumerate(sizes)])
    n = sum(sizes)
    assert len(ours) == len(theirs) == n
    assert [ours[i] for i in range(-n, n)] == [theirs[i] for i in range(-n, n)]
    for bad in (n, -n - 1):
        with pytest.raises(IndexError, match="out of range"):
            ours[bad]


def test_dataset_add_concatenates():
    both = Squares(2) + Squares(3, 10)
    assert isinstance(both, ConcatDataset)
    assert [both[i] for i in range(len(both))] == [0, 1, 10, 11, 14]


# ---- random_split -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, lengths", [
    (10, [3, 7]), (10, [10, 0]), (5, [1, 1, 1, 1, 1]),
    (10, [0.8, 0.2]), (11, [0.5, 0.5]), (7, [0.3, 0.3, 0.4]), (10, [0.1] * 10), (3, [0.25, 0.25, 0.5]),
    (100, [0.333, 0.333, 0.334]),
])
def test_random_split_sizes_match_torch_and_partition(n, lengths):
    parts = random_split(Squares(n), lengths, generator=em.Generator(0))
    torch_parts = tud.random_split(TorchSquares(n), lengths, generator=torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [len(p) for p in torch_parts]
    indices = [i for p in parts for i in p.indices]
    assert sorted(indices) == list(range(n))  # disjoint and covering
    assert all(isinstance(p, Subset) for p in parts)


def test_random_split_is_reproducible_from_generator_and_global_seed():
    def split(**kw):
        return [p.indices for p in random_split(range(50), [20, 30], **kw)]

    assert split(generator=em.Generator(3)) == split(generator=em.Generator(3))
    assert split(generator=em.Generator(3)) != split(generator=em.Generator(4))
    em.manual_seed(7)
    a = split()
    em.manual_seed(7)
    assert split() == a
    assert split() != a  # the global stream moved on


@pytest.mark.parametrize("lengths, match", [
    ([3, 3], "sum to 6"),
    ([0.5, 0.4], r"sum to 0\.9"),
    ([12, -2], "negative"),
    ([1.5, -0.5], "negative"),
])
def test_random_split_rejects_bad_lengths(lengths, match):
    with pytest.raises(ValueError, match=f"random_split.*{match}"):
        random_split(range(10), lengths)


# ---- samplers ----------------------------------------------------------------------------------------

def test_sequential_sampler_matches_torch():
    for n in (0, 1, 9):
        assert list(SequentialSampler(range(n))) == list(tud.SequentialSampler(range(n)))
        assert len(SequentialSampler(range(n))) == n


def test_random_sampler_permutes_and_is_reproducible():
    s = RandomSampler(range(20), generator=em.Generator(1))
    e1, e2 = list(s), list(s)
    assert sorted(e1) == sorted(e2) == list(range(20)) and len(s) == 20
    assert e1 != e2  # a fresh permutation each epoch
    s2 = RandomSampler(range(20), generator=em.Generator(1))
    assert [list(s2), list(s2)] == [e1, e2]
    em.manual_seed(5)
    g = list(RandomSampler(range(20)))
    em.manual_seed(5)
    assert list(RandomSampler(range(20))) == g


@pytest.mark.parametrize("n", [0, 1, 7, 8])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 10])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sampler_matches_torch(n, batch_size, drop_last):
    ours = BatchSampler(SequentialSampler(range(n)), batch_size, drop_last)
    theirs = tud.BatchSampler(tud.SequentialSampler(range(n)), batch_size, drop_last)
    assert list(ours) == list(theirs)
    assert len(ours) == len(theirs)


def test_batch_sampler_rejects_non_positive_batch_size():
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size.*{bad}"):
            BatchSampler(range(3), bad, False)
