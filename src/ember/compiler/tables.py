"""Products of rows looked up in a small table run on the table instead.

An embedding followed by a linear layer multiplies every looked-up row: the lstm benchmark
gathers 2,048 rows of a 96 x 64 table and projects each to 1,024 gate inputs (268 MFLOP
forward, the same again for each of the two gradients, ~1 ms each). A gather and a
scatter-add commute with a product on the right, so each of the three runs on the table's 96
rows (V rows below) and a gather or scatter of the result:

  forward          table[j] @ w                 ->  (table @ w)[j]
  table gradient   scatter_add_j(g @ w)          ->  scatter_add_j(g) @ w
  weight gradient  g_rows.T @ table[j]           ->  scatter_add_j(g_rows).T @ table

where j are the indices (any shape), ``scatter_add_j(m)`` is the (V, K) sum of m's rows into
the rows j name (``index_put`` with ``accumulate``), and the two gradients share theirs (a
cse pass after this one merges them). Rewritten only when the table has fewer rows than the
lookup; the sums are the same, added in another order.
"""

from __future__ import annotations

import numpy as np

from ..ops.indexing import IndexArg
from ..ops.registry import PRIMITIVES
from .passes import _transposed

_ROWS = (IndexArg(0),)


def _op(v):
    return getattr(getattr(v.node, "op", None), "name", None) if v.node is not None else None


def _is_row_template(template):
    return len(template) == 1 and type(template[0]) is IndexArg and template[0].k == 0


class _Gather:
    """A value that is rows of a 2-D ``table`` looked up by an index value, possibly with its
    leading axes permuted or flattened: ``index`` returns the index for that value's rows (as
    nodes inserted before ``before``)."""

    def __init__(self, table, idx, steps):
        self.table, self.idx, self.steps = table, idx, steps  # steps: ("permute", dims) / ("reshape", shape)

    def index(self, graph, before):
        v = self.idx
        for kind, arg in self.steps:
            if kind == "permute":
                shape = tuple(v.shape[d] for d in arg)
                v = graph.add_node(PRIMITIVES["permute"], [v], {"dims": arg}, shape, v.dtype, before=before).output
            else:
                v = graph.add_node(PRIMITIVES["reshape"], [v], {"shape": arg}, arg, v.dtype, before=before).output
        return v


def _index_shape(gather):
    """The shape of ``gather``'s index after its steps."""
    shape = tuple(gather.idx.shape)
    for kind, arg in gather.steps:
        shape = tuple(shape[d] for d in arg) if kind == "permute" else tuple(arg)
    return shape


def _gather(v):
    """The _Gather ``v`` is, or None: index(table, j) with the row template, under permutes
    that keep the last axis last and reshapes that keep the last axis's size."""
    steps = []
    while _op(v) in ("permute", "reshape"):
        node = v.node
        src = node.inputs[0]
        if not src.shape or not v.shape or v.shape[-1] != src.shape[-1]:
            return None
        if _op(v) == "permute":
            dims = tuple(node.attrs["dims"])
            if dims[-1] != len(dims) - 1:
                return None
            steps.append(("permute", dims[:-1]))
        else:
            steps.append(("reshape", tuple(v.shape[:-1])))
        v = src
    if _op(v) != "index" or not _is_row_template(v.node.attrs["template"]) or len(v.node.inputs) != 2:
        return None
    table, idx = v.node.inputs
    if len(table.shape) != 2 or table.dtype.kind != "f" or idx.dtype.kind not in "iu":
        return None
    return _Gather(table, idx, steps[::-1])


def _fewer_table_rows(gather, looked_up_shape):
    return gather.table.shape[0] < int(np.prod(looked_up_shape[:-1]))


def _matmul(graph, a, b, before):
    shape = a.shape[:-1] + b.shape[1:]
    return graph.add_node(PRIMITIVES["matmul"], [a, b], {}, shape, np.result_type(a.dtype, b.dtype),
                          before=before).output


def _scatter_rows(graph, rows, idx, table_rows, before):
    """(table_rows, K): the sum of ``rows`` (idx.shape + (K,)) into the rows idx names."""
    shape = (table_rows, rows.shape[-1])
    return graph.add_node(PRIMITIVES["index_put"], [rows, idx],
                          {"template": _ROWS, "shape": shape, "accumulate": True}, shape, rows.dtype,
                          before=before).output


def _unflattened(rows, gather):
    """(rows, gather) before a flattening both share: a reshape of (..., K) rows to (R, K) and
    the gather's last step reshaping its index to (R,), so that every weight and table
    gradient sums the same unflattened rows by the same index (cse merges those sums)."""
    if _op(rows) == "reshape" and gather.steps and gather.steps[-1][0] == "reshape":
        unflat = _Gather(gather.table, gather.idx, gather.steps[:-1])
        source = rows.node.inputs[0]
        if source.shape[:-1] == _index_shape(unflat) and source.shape[-1] == rows.shape[-1]:
            return source, unflat
    return rows, gather


def _leading_permute(v):
    """(source, dims) if v = permute(source, dims) with the last axis kept last, else (v, None)."""
    if _op(v) == "permute":
        dims = tuple(v.node.attrs["dims"])
        if dims[-1] == len(dims) - 1:
            return v.node.inputs[0], dims
    return v, None


def lower_table_products(graph):
    """Rewrite the three products of looked-up rows (module docstring) in place."""
    for node in list(graph.nodes):
        name = getattr(node.op, "name", None)
        if name == "matmul" and not hasattr(node, "outputs"):
            a, b = node.inputs
            if len(b.shape) != 2:
                continue
            g = _gather(a)
            if g is not None and _fewer_table_rows(g, a.shape):  # forward: table[j] @ w
                projected = _matmul(graph, g.table, b, node)
                node.op, node.attrs = PRIMITIVES["index"], {"template": _ROWS}
                node.inputs = [projected, g.index(graph, node)]
                continue
            if len(a.shape) != 2 or _op(a) != "permute" or tuple(a.node.attrs["dims"]) != (1, 0):
                continue
            inner = a.node.inputs[0]
            # weight gradients, the rows summed by index first: rows.T @ table[j] (a weight used
            # as x @ w.T, as Linear's) or table[j].T @ rows (one used as x @ w)
            for rows, looked_up, table_first in ((inner, b, False), (b, inner, True)):
                g = _gather(looked_up)
                if g is None or rows.shape[0] != looked_up.shape[0] or not _fewer_table_rows(g, looked_up.shape):
                    continue
                rows, g = _unflattened(rows, g)
                summed = _scatter_rows(graph, rows, g.index(graph, node), g.table.shape[0], node)
                node.inputs = ([_transposed(graph, g.table, node), summed] if table_first
                               else [_transposed(graph, summed, node), g.table])
                break
        elif name == "index_put" and node.attrs["accumulate"] and _is_row_template(node.attrs["template"]) \
                and len(node.inputs) == 2 and len(node.attrs["shape"]) == 2:
            values, idx = node.inputs                         # table gradient: scatter_add_j(g @ w)
            source, dims = _leading_permute(values)
            if _op(source) != "matmul" or len(source.node.inputs[1].shape) != 2 or \
                    node.attrs["shape"][0] >= int(np.prod(values.shape[:-1])):
                continue
            g, w = source.node.inputs
            if dims is not None:  # permuting the rows is permuting their indices the other way
                inverse = tuple(int(d) for d in np.argsort(dims[:-1]))
                idx = graph.add_node(PRIMITIVES["permute"], [idx], {"dims": inverse},
                                     tuple(idx.shape[d] for d in inverse), idx.dtype, before=node).output
            summed = _scatter_rows(graph, g, idx, node.attrs["shape"][0], node)
            node.op, node.attrs, node.inputs = PRIMITIVES["matmul"], {}, [summed, w]
    return graph
