"""DataLoader and default_collate: batches, dtypes and lengths against torch.utils.data;
seeded shuffling; background workers (threads and processes) giving exactly the batches of
num_workers=0, re-raising a worker's error with its traceback and the failing index, and
leaving no thread or process behind after an error or an early ``break``."""

import collections
import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import traceback

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import ember as em
from ember.data import DataLoader, Dataset, IterableDataset, SequentialSampler, Subset, TensorDataset, default_collate

WORKERS = [(0, "thread"), (2, "thread"), (2, "process")]
Point = collections.namedtuple("Point", "x label")


def _plain(obj):
    """Nested batches -> comparable values: tensors become (dtype, values); tuples and lists
    both become lists (torch's default_collate turns tuples into lists)."""
    if isinstance(obj, (em.Tensor, torch.Tensor)):
        a = obj.numpy()
        return ("tensor", a.dtype.str, a.shape, a.tolist())
    if isinstance(obj, (np.ndarray, np.generic)):
        return ("numpy", obj.dtype.str, obj.shape, obj.tolist())
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _assert_same(a, b):
    assert _plain(a) == _plain(b)


class Records(Dataset):
    """Nested samples: a dict holding a float32 array, a python int, a tuple and a string."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.full(3, i, np.float32), "y": i % 3,
                "pair": (np.float64(i) / 2, [i, -i]), "name": f"s{i}"}


class Points(Records):
    def __getitem__(self, i):
        return Point(np.arange(2, dtype=np.int16) + i, i)


class Flaky(Dataset):
    """Item ``fail_at`` raises; records which thread or process served each item."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyError(f"item {i} is broken")
        return np.int64(i), os.getpid(), threading.current_thread().name


def _xy(n=10):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 2, 3)).astype(np.float32), rng.integers(0, 4, n)


def _ember_threads():
    return [t for t in threading.enumerate() if t.name.startswith("ember-data")]


# ---- batching, against torch -----------------------------------------------------------------

@pytest.mark.parametrize("n, batch_size, drop_last", [(10, 1, False), (10, 3, False), (10, 3, True),
                                                      (10, 10, True), (10, 16, False), (10, 16, True),
                                                      (0, 4, False)])
def test_batches_and_len_match_torch(n, batch_size, drop_last):
    x, y = _xy(n)
    ours = DataLoader(TensorDataset(x, y), batch_size=batch_size, drop_last=drop_last)
    theirs = tud.DataLoader(tud.TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=batch_size,
                            drop_last=drop_last)
    assert len(ours) == len(theirs)
    _assert_same(list(ours), list(theirs))
    # the TensorDataset fast path (one fancy index per array) equals collating rows
    _assert_same(list(DataLoader(Subset(TensorDataset(x, y), range(n)), batch_size=batch_size,
                                 drop_last=drop_last)), list(theirs))


def test_batch_size_none_yields_samples_uncollated():
    x, y = _xy(4)
    ds = TensorDataset(x, y)
    _assert_same(list(DataLoader(ds, batch_size=None)), [ds[i] for i in range(4)])
    assert len(DataLoader(ds, batch_size=None)) == 4


def test_sampler_gives_the_order():
    ds = Subset(Records(10), range(10))
    order = [7, 1, 1, 4, 0]
    loader = DataLoader(ds, batch_size=2, sampler=order)
    assert len(loader) == 3
    assert [b["y"].numpy().tolist() for b in loader] == [[1, 1], [1, 1], [0]]
    assert [b["name"] for b in DataLoader(ds, batch_size=2, sampler=SequentialSampler(range(3)))] == \
        [["s0", "s1"], ["s2"]]


def test_iterating_twice_gives_the_same_batches_without_shuffle():
    loader = DataLoader(Records(7), batch_size=3)
    _assert_same(list(loader), list(loader))


# ---- shuffling ----------------------------------------------------------------------------------

def _epochs(loader, k=3):
    return [np.concatenate([b[0].numpy() for b in loader]).tolist() for _ in range(k)]


def test_shuffle_with_seed_is_reproducible_and_changes_each_epoch():
    ds = TensorDataset(np.arange(20))
    a = _epochs(DataLoader(ds, batch_size=6, shuffle=True, seed=1))
    assert a == _epochs(DataLoader(ds, batch_size=6, shuffle=True, seed=1))
    assert all(sorted(e) == list(range(20)) for e in a)
    assert len({tuple(e) for e in a}) == 3  # a new order every epoch
    assert a != _epochs(DataLoader(ds, batch_size=6, shuffle=True, seed=2))
    em.manual_seed(0)  # the seed, not the global stream, decides
    assert a == _epochs(DataLoader(ds, batch_size=6, shuffle=True, seed=1))


def test_shuffle_follows_manual_seed_and_generator():
    ds = TensorDataset(np.arange(20))
    em.manual_seed(3)
    a = _epochs(DataLoader(ds, batch_size=4, shuffle=True))
    em.manual_seed(3)
    assert _epochs(DataLoader(ds, batch_size=4, shuffle=True)) == a
    assert len({tuple(e) for e in a}) == 3 and all(sorted(e) == list(range(20)) for e in a)
    g = _epochs(DataLoader(ds, batch_size=4, shuffle=True, generator=em.Generator(9)))
    assert g == _epochs(DataLoader(ds, batch_size=4, shuffle=True, generator=em.Generator(9)))
    assert g != _epochs(DataLoader(ds, batch_size=4, shuffle=True, generator=em.Generator(10)))


def test_drop_last_with_shuffle_drops_the_tail_of_the_permutation():
    batches = list(DataLoader(TensorDataset(np.arange(10)), batch_size=4, shuffle=True, seed=0, drop_last=True))
    assert [len(b[0]) for b in batches] == [4, 4]
    assert len(set(np.concatenate([b[0].numpy() for b in batches]).tolist())) == 8


# ---- default_collate --------------------------------------------------------------------------

def _collate_cases():
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    return [
        ("python ints", lambda T: [1, 2, 3]),
        ("python floats", lambda T: [1.5, -2.0]),
        ("python bools", lambda T: [True, False]),
        ("ints then a float", lambda T: [1, 2.5]),
        ("numpy float32 scalars", lambda T: [np.float32(1), np.float32(2.5)]),
        ("numpy float64 scalars", lambda T: [np.float64(1), np.float64(2.5)]),
        ("numpy int32 scalars", lambda T: [np.int32(1), np.int32(-2)]),
        ("numpy uint8 scalars", lambda T: [np.uint8(1), np.uint8(200)]),
        ("numpy bools", lambda T: [np.bool_(True), np.bool_(False)]),
        ("numpy arrays", lambda T: [f32, f32 + 1]),
        ("int16 arrays", lambda T: [np.arange(3, dtype=np.int16), np.ones(3, np.int16)]),
        ("0-d arrays", lambda T: [np.array(1.5), np.array(2.5)]),
        ("tensors", lambda T: [T(f32), T(f32 * 2)]),
        ("int64 tensors", lambda T: [T(np.arange(4)), T(np.arange(4) + 1)]),
        ("tuples", lambda T: [(T(f32), 1), (T(f32), 2)]),
        ("lists", lambda T: [[1, 2.0], [3, 4.0]]),
        ("dicts", lambda T: [{"x": f32, "y": 0}, {"x": f32, "y": 1}]),
        ("strings", lambda T: [("a", 1), ("b", 2)]),
        ("nested", lambda T: [{"a": (np.float32(1), [1, 2]), "b": {"c": 0.5, "d": T(f32)}, "s": "u"},
                              {"a": (np.float32(2), [3, 4]), "b": {"c": 1.5, "d": T(f32)}, "s": "v"}]),
    ]


@pytest.mark.parametrize("name, make", _collate_cases(), ids=[c[0] for c in _collate_cases()])
def test_default_collate_matches_torch(name, make):
    ours = default_collate(make(lambda a: em.tensor(a)))
    theirs = tud.default_collate(make(torch.tensor))
    _assert_same(ours, theirs)


def test_default_collate_keeps_tuples_and_namedtuples():
    assert isinstance(default_collate([(1, 2), (3, 4)]), tuple)
    assert isinstance(default_collate([[1, 2], [3, 4]]), list)
    p = default_collate([Point(np.zeros(2), 1), Point(np.ones(2), 2)])
    assert type(p) is Point and p.label.numpy().tolist() == [1, 2]


def test_default_collate_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"default_collate.*shapes.*\(2,\).*\(3,\)"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match=r"default_collate.*\(2, 2\).*\(3, 2\)"):
        default_collate([em.zeros(3, 2), em.zeros(2, 2)])
    with pytest.raises(ValueError, match=r"default_collate.*lengths \[1, 2\]"):
        default_collate([(1,), (1, 2)])
    with pytest.raises(TypeError, match="default_collate.*object.*collate_fn"):
        default_collate([object(), object()])


@pytest.mark.parametrize("num_workers, worker_type", WORKERS)
def test_custom_collate_fn(num_workers, worker_type):
    def collate(samples):
        return {"ids": [s["y"] for s in samples], "sum": float(sum(s["x"].sum() for s in samples))}

    batches = list(DataLoader(Records(5), batch_size=2, collate_fn=collate, num_workers=num_workers,
                              worker_type=worker_type))
    assert batches == [{"ids": [0, 1], "sum": 3.0}, {"ids": [2, 0], "sum": 15.0}, {"ids": [1], "sum": 12.0}]


# ---- workers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_workers, worker_type", WORKERS[1:] + [(3, "thread")])
@pytest.mark.parametrize("dataset", [Records(23), Points(9), TensorDataset(*_xy(23))],
                         ids=["nested", "namedtuple", "tensors"])
@pytest.mark.parametrize("batch_size", [4, None])
def test_workers_give_the_batches_of_num_workers_0(num_workers, worker_type, dataset, batch_size):
    kw = dict(batch_size=batch_size, shuffle=True, seed=4)
    reference = DataLoader(dataset, **kw)
    expected = [list(reference) for _ in range(2)]
    loader = DataLoader(dataset, num_workers=num_workers, worker_type=worker_type, prefetch_factor=1, **kw)
    got = [list(loader) for _ in range(2)]
    _assert_same(got, expected)
    assert [type(b) for b in got[0]] == [type(b) for b in expected[0]]
    if isinstance(dataset, Points):
        assert type(got[0][0]) is Point


@pytest.mark.parametrize("worker_type", ["thread", "process"])
@pytest.mark.parametrize("batch_size", [3, None])
def test_worker_error_is_reraised_with_its_traceback_and_index(worker_type, batch_size):
    loader = DataLoader(Flaky(12, fail_at=7), batch_size=batch_size, num_workers=2, worker_type=worker_type)
    with pytest.raises(KeyError, match="item 7 is broken") as info:
        list(loader)
    text = "".join(traceback.format_exception(info.value))
    assert 'raise KeyError(f"item {i} is broken")' in text  # the worker's own frame
    assert "dataset[7]" in text
    assert not _ember_threads() and not multiprocessing.active_children()
    # the loader still works afterwards, up to the broken item
    good = DataLoader(Subset(Flaky(12), range(6)), batch_size=batch_size, num_workers=2, worker_type=worker_type)
    assert len(list(good)) == len(DataLoader(range(6), batch_size=batch_size))


def test_error_without_workers_names_the_index():
    with pytest.raises(KeyError) as info:
        list(DataLoader(Flaky(5, fail_at=3), batch_size=2))
    assert "dataset[3]" in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_break_leaves_no_workers(worker_type):
    loader = DataLoader(Flaky(40), batch_size=2, num_workers=2, worker_type=worker_type)
    for _ in loader:
        break
    assert not _ember_threads() and not multiprocessing.active_children()


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_persistent_workers_are_reused_across_epochs_and_closed_with_the_loader(worker_type):
    loader = DataLoader(Flaky(16), batch_size=2, num_workers=2, worker_type=worker_type, persistent_workers=True)
    where = 1 if worker_type == "process" else 2  # pid or thread name
    for _ in loader:
        break  # an early break keeps them too
    seen = [{w for b in loader for w in (b[where].numpy().tolist() if where == 1 else b[where])} for _ in range(2)]
    assert len(seen[0] | seen[1]) <= 2
    assert [b[0].numpy().tolist() for b in loader] == [[i, i + 1] for i in range(0, 16, 2)]
    assert _ember_threads() or multiprocessing.active_children()
    del loader
    gc.collect()
    assert not _ember_threads() and not multiprocessing.active_children()


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_two_iterators_over_one_loader_at_once(worker_type):
    loader = DataLoader(Records(9), batch_size=2, num_workers=2, worker_type=worker_type)
    expected = list(DataLoader(Records(9), batch_size=2))
    first, second = iter(loader), iter(loader)
    a = [next(first)]
    b = [next(second)]
    a += list(first)  # the first iterator ends while the second still has batches in flight
    b += list(second)
    _assert_same(a, expected)
    _assert_same(b, expected)


class Watched(Dataset):
    def __init__(self, n):
        self.n, self.asked = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.asked.append(i)
        return i


@pytest.mark.parametrize("num_workers, prefetch_factor", [(1, 1), (2, 2)])
def test_prefetch_window_bounds_the_batches_loaded_ahead(num_workers, prefetch_factor):
    ds = Watched(60)
    loader = DataLoader(ds, batch_size=1, num_workers=num_workers, prefetch_factor=prefetch_factor)
    window = num_workers * prefetch_factor
    for k, batch in enumerate(loader):
        assert batch.numpy().tolist() == [k]
        assert max(ds.asked) <= k + window  # batch k consumed, at most `window` more submitted


def test_worker_processes_exit_after_errors_and_breaks():
    """In a fresh interpreter: break, error and persistent loaders, then the interpreter must
    exit on its own (a hung worker or queue thread would keep it alive) within the timeout."""
    script = textwrap.dedent("""
        import multiprocessing, threading
        from ember.data import DataLoader, Dataset

        class Flaky(Dataset):
            def __len__(self):
                return 30
            def __getitem__(self, i):
                if i == 9:
                    raise ValueError("broken")
                return i

        for worker_type in ("thread", "process"):
            for persistent in (False, True):
                loader = DataLoader(Flaky(), batch_size=2, num_workers=2, worker_type=worker_type,
                                    persistent_workers=persistent)
                for _ in loader:
                    break
                try:
                    list(loader)
                except ValueError:
                    pass
                else:
                    raise SystemExit("no error")
                if not persistent:
                    assert not multiprocessing.active_children(), worker_type
        print("ok", flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


# ---- IterableDataset ----------------------------------------------------------------------------

class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter({"v": np.float32(i), "i": i} for i in range(self.n))


class TorchStream(tud.IterableDataset):
    def __init__(self, n):
        self.inner = Stream(n)

    def __iter__(self):
        return iter(self.inner)


@pytest.mark.parametrize("batch_size, drop_last", [(3, False), (3, True), (None, False)])
def test_iterable_dataset_matches_torch(batch_size, drop_last):
    ours = DataLoader(Stream(8), batch_size=batch_size, drop_last=drop_last)
    # torch converts unbatched samples' arrays to tensors; ember yields them as they are
    theirs = list(Stream(8)) if batch_size is None else \
        tud.DataLoader(TorchStream(8), batch_size=batch_size, drop_last=drop_last)
    _assert_same(list(ours), list(theirs))
    _assert_same(list(ours), list(theirs))  # twice
    with pytest.raises(TypeError, match="IterableDataset"):
        len(ours)


def test_iterable_dataset_refuses_shuffle_and_sampler():
    with pytest.raises(ValueError, match="IterableDataset.*shuffle"):
        DataLoader(Stream(3), shuffle=True)
    with pytest.raises(ValueError, match="IterableDataset.*sampler"):
        DataLoader(Stream(3), sampler=[0, 1])


# ---- argument checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(num_workers=-1), "num_workers must be >= 0, got -1"),
    (dict(worker_type="fiber"), "worker_type.*'fiber'"),
    (dict(sampler=[0], shuffle=True), "give either sampler or shuffle"),
    (dict(batch_size=0), "batch_size.*got 0"),
    (dict(batch_size=-2), "batch_size.*got -2"),
])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=f"DataLoader: {match}"):
        DataLoader(Records(3), **kw)
