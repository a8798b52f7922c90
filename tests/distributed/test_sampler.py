"""DistributedSampler against torch.utils.data.DistributedSampler."""

import collections

import numpy as np
import pytest
import torch.utils.data as tud

import ember as em
from ember.distributed import DistributedSampler

CASES = [(n, k, drop) for n in (0, 1, 5, 10, 11, 17) for k in (1, 2, 3, 4) for drop in (False, True)]


@pytest.mark.parametrize("n,replicas,drop_last", CASES)
def test_shards_match_torch(n, replicas, drop_last):
    data = list(range(n))
    for rank in range(replicas):
        ours = DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last)
        ref = tud.DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last)
        # without shuffling the order is defined, so the indices themselves must agree
        assert list(ours) == list(ref) and len(ours) == len(ref), (n, replicas, rank, drop_last)
        assert ours.total_size == ref.total_size


@pytest.mark.parametrize("n,replicas,drop_last", [c for c in CASES if c[0] > 0])
def test_shuffled_shards_follow_torchs_padding_rule(n, replicas, drop_last):
    # the permutations differ (NumPy's PCG64 vs torch's generator); the sizes and the padding rule must not
    data = list(range(n))
    ours = [list(DistributedSampler(data, replicas, r, shuffle=True, seed=7, drop_last=drop_last))
            for r in range(replicas)]
    ref = [list(tud.DistributedSampler(data, replicas, r, shuffle=True, seed=7, drop_last=drop_last))
           for r in range(replicas)]
    assert [len(s) for s in ours] == [len(s) for s in ref]
    # as in torch: each index occurs as often over all ranks (padding repeats the order's start)
    count = collections.Counter(i for s in ours for i in s)
    ref_count = collections.Counter(i for s in ref for i in s)
    assert sorted(count.values()) == sorted(ref_count.values())
    assert set(count) <= set(data)


def test_the_order_depends_only_on_seed_and_epoch():
    data = range(50)
    a, b = DistributedSampler(data, 2, 0, seed=3), DistributedSampler(data, 2, 0, seed=3)
    assert list(a) == list(b) and list(a) == list(a)  # same on every rank and every call
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(DistributedSampler(data, 2, 0, seed=4)) != first
    # the two ranks of one epoch split the same permutation
    r0, r1 = list(DistributedSampler(data, 2, 0, seed=3)), list(DistributedSampler(data, 2, 1, seed=3))
    assert sorted(r0 + r1) == list(range(50))


def test_with_dataloader():
    x = np.arange(22, dtype=np.float32).reshape(11, 2)
    ds = em.data.TensorDataset(em.tensor(x))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    loader = em.data.DataLoader(ds, batch_size=4, sampler=sampler)
    batches = [b[0].numpy() for b in loader]
    assert len(loader) == 2 and [len(b) for b in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), x[[1, 3, 5, 7, 9, 0]])  # padded with index 0


def test_defaults_and_errors():
    s = DistributedSampler(range(4))  # not launched: world size 1, rank 0
    assert (s.num_replicas, s.rank, len(s)) == (1, 0, 4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        DistributedSampler(range(4), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be a positive int, got 0"):
        DistributedSampler(range(4), num_replicas=0, rank=0)
