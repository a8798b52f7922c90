"""ops/helpers.py: add_at, the fast scatter-add behind embedding and indexing gradients."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.ops.helpers import add_at


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), n=st.integers(0, 300), extra=st.sampled_from([(), (3,), (2, 5)]),
       index_ndim=st.integers(1, 2), negative=st.booleans(), dtype=st.sampled_from([np.float32, np.float64, np.int64]),
       seed=st.integers(0, 2**31 - 1))
def test_add_at_equals_numpy_add_at(rows, n, extra, index_ndim, negative, dtype, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(-rows if negative else 0, rows, n)
    if index_ndim == 2 and n % 2 == 0:
        idx = idx.reshape(2, -1)
    values = (rng.standard_normal(idx.shape + extra) * 10).astype(dtype)
    start = (rng.standard_normal((rows,) + extra) * 10).astype(dtype)
    want, got = start.copy(), start.copy()
    np.add.at(want, (idx,), values)
    add_at(got, (idx,) + (slice(None),) * len(extra), values)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("index", [
    lambda i: (slice(None), i),           # not along axis 0: the general path
    lambda i: (i, 1),                     # an integer after the array
    lambda i: (i.astype(np.int64), slice(1, 3)),
])
def test_other_index_forms_fall_back_to_numpy(index):
    rng = np.random.default_rng(0)
    i = rng.integers(0, 4, 100)
    buf = rng.standard_normal((4, 4)).astype(np.float32)
    ix = index(i)
    values = rng.standard_normal(buf[ix].shape).astype(np.float32)
    want, got = buf.copy(), buf.copy()
    np.add.at(want, ix, values)
    add_at(got, ix, values)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_non_contiguous_buffer_is_updated_in_place():
    buf = np.zeros((6, 6, 4), np.float32)[:, ::2, :]  # a strided view: must not be written through a copy
    idx = np.arange(200) % 6
    values = np.ones((200, 3, 4), np.float32)
    add_at(buf, (idx, slice(None), slice(None)), values)
    np.testing.assert_array_equal(buf, np.bincount(idx, minlength=6)[:, None, None] * np.ones((1, 3, 4)))


def test_out_of_range_index_raises():
    with pytest.raises(IndexError):
        add_at(np.zeros((3, 2)), (np.arange(100) % 5, slice(None)), np.ones((100, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_rows_are_added_in_index_order_like_numpy(dtype):
    # the same additions in the same order: bitwise np.add.at, not merely close
    rng = np.random.default_rng(1)
    idx = rng.integers(-96, 96, (32, 64))
    values = rng.standard_normal((32, 64, 128)).astype(dtype) * 1e3
    start = rng.standard_normal((96, 128)).astype(dtype)
    want, got = start.copy(), start.copy()
    np.add.at(want, idx, values)
    add_at(got, (idx, slice(None)), values)
    np.testing.assert_array_equal(got, want)


def test_values_of_another_dtype_are_cast_like_numpy():
    idx = np.arange(100) % 7
    values = np.arange(100, dtype=np.float64) / 3
    want, got = np.zeros(7, np.float32), np.zeros(7, np.float32)
    np.add.at(want, idx, values)
    add_at(got, idx, values)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_index_below_minus_rows_raises(dtype):
    with pytest.raises(IndexError):
        add_at(np.zeros((3, 2), dtype), (np.arange(100) % 3 - 4, slice(None)), np.ones((100, 2), dtype))
