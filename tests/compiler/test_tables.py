"""compiler/tables.py: an embedding's rows times a weight run on the table (forward, the
table's gradient and the weight's); results equal torch's, and small lookups are left alone."""

import numpy as np
import pytest
import torch
from jit_helpers import compiled_graph

import ember as em
import ember.nn.functional as F


def _products(f):
    """(input shapes) of each matmul node in the compiled graph."""
    return [tuple(v.shape for v in n.inputs) for n in compiled_graph(f).nodes if getattr(n.op, "name", "") == "matmul"]


def _step(tokens, time_major, dtype, rows=12, dim=5, width=7):
    rng = np.random.default_rng(2)
    table = rng.standard_normal((rows, dim)).astype(dtype)
    weight = rng.standard_normal((dim, width)).astype(dtype)
    up = rng.standard_normal(tokens.shape[::-1] + (width,) if time_major else tokens.shape + (width,)).astype(dtype)

    def ours(table, weight):
        x = F.embedding(em.tensor(tokens), table)
        if time_major:  # as the LSTM layer reads it: (L, N, C)
            x = x.transpose(0, 1)
        y = x @ weight
        (y * em.tensor(up)).sum().backward()
        return y

    t_table, t_weight = torch.tensor(table, requires_grad=True), torch.tensor(weight, requires_grad=True)
    x = torch.nn.functional.embedding(torch.tensor(tokens), t_table)
    y = (x.transpose(0, 1) if time_major else x) @ t_weight
    (y * torch.tensor(up)).sum().backward()
    args = em.tensor(table, requires_grad=True), em.tensor(weight, requires_grad=True)
    f = em.jit(ours)
    got = f(*args)
    return f, (got, args[0].grad, args[1].grad), (y.detach(), t_table.grad, t_weight.grad)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_of_looked_up_rows_run_on_the_table_and_match_torch(time_major, dtype):
    tokens = np.random.default_rng(3).integers(0, 12, (6, 9))  # 54 lookups of a 12-row table
    f, got, want = _step(tokens, time_major, dtype)
    # every product's operands are the table's 12 rows (or its sums), none the 54 looked-up ones
    assert all(54 not in a[:-1] and 54 not in b for a, b in _products(f)), _products(f)
    assert len(_products(f)) == 3
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g.numpy()), w.numpy(), rtol=tol, atol=tol)


def test_a_lookup_of_fewer_rows_than_the_table_is_left_alone():
    tokens = np.array([[1, 4], [7, 2]])  # 4 lookups of a 12-row table
    f, got, want = _step(tokens, False, np.float32)
    assert any(a == (2, 2, 5) for a, _ in _products(f))  # the forward multiplies the looked-up rows
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
