"""Batch-size-generic graphs for ``em.jit(fn, dynamic_batch=True)``.

The function is traced at batch sizes B, B+1 and B+2. Everything that differs between the
graphs must be a size: a shape dimension or an integer attribute ``a*B + c`` (e.g. a reshape
to (B*T, C)), a scalar constant ``a*B + c`` or ``1 / (a*B + c)`` (the divisor of a mean over
the batch), an ``arange`` index array (cross-entropy's row indices), or a constant-filled
literal. The result is a template that builds the graph for any batch size without running
the user's Python code again. If anything else differs, there is no template and ``em.jit``
compiles one graph per batch size instead.
"""

from __future__ import annotations

import numpy as np

from .ir import Graph, Node, Value


class NotGeneric(Exception):
    pass


class Affine:
    __slots__ = ("a", "c")

    def __init__(self, a, c):
        self.a, self.c = a, c

    def at(self, b):
        return self.a * b + self.c


def _affine(v1, v2, b1, v3=None):
    a = v2 - v1  # traced at b1, b1 + 1 (and b1 + 2)
    if v3 is not None and v3 - v2 != a:
        raise NotGeneric(f"a size goes {v1}, {v2}, {v3}: not affine in the batch size")
    return Affine(a, v1 - a * b1)


class _ScalarOfB:
    """A scalar constant that is a*B + c, or 1 / (a*B + c), of the batch size B."""

    def __init__(self, affine, reciprocal, dtype, shape):
        self.affine, self.reciprocal, self.dtype, self.shape = affine, reciprocal, dtype, shape

    def at(self, b):
        v = self.affine.a * b + self.affine.c
        return np.full(self.shape, 1.0 / v if self.reciprocal else v, self.dtype)


def _scalar_pattern(x1, x2, x3, b1):
    vals = [float(x.reshape(-1)[0]) for x in (x1, x2, x3)]
    for reciprocal in (False, True):
        v = [1.0 / t if reciprocal and t else t for t in vals]
        a = v[1] - v[0]
        if np.isclose(v[2] - v[1], a, rtol=1e-5, atol=1e-9) and (not reciprocal or all(vals)):
            pattern = _ScalarOfB(Affine(a, v[0] - a * b1), reciprocal, x1.dtype, x1.shape)
            if np.allclose(pattern.at(b1), x1, rtol=1e-6):
                return pattern
    raise NotGeneric("a constant depends on the batch size in an unknown way")


def _shape_pattern(s1, s2, b1, s3=None):
    if len(s1) != len(s2) or (s3 is not None and len(s3) != len(s1)):
        raise NotGeneric("rank changes with the batch size")
    s3 = s3 if s3 is not None else s2
    return tuple(d1 if d1 == d2 == d3 else _affine(d1, d2, b1, d3) for d1, d2, d3 in zip(s1, s2, s3))


def _shape_at(pattern, b):
    return tuple(d.at(b) if isinstance(d, Affine) else d for d in pattern)


class _Arange:
    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def at(self, b):
        shape = _shape_at(self.shape, b)
        return np.arange(int(np.prod(shape)), dtype=self.dtype).reshape(shape)


class _Full:
    def __init__(self, shape, value, dtype):
        self.shape, self.value, self.dtype = shape, value, dtype

    def at(self, b):
        return np.full(_shape_at(self.shape, b), self.value, self.dtype)


class _Const:
    def __init__(self, value):
        self.value = value

    def at(self, b):
        return self.value


class _Pattern:
    """An attribute value with sizes left open; ``at(b)`` fills them in."""

    def __init__(self, kind, parts):
        self.kind, self.parts = kind, parts

    def at(self, b):
        items = [p.at(b) if hasattr(p, "at") else p for p in self.parts]
        if self.kind == "tuple":
            return tuple(items)
        if self.kind == "list":
            return items
        if self.kind == "slice":
            return slice(*items)
        if self.kind == "dict":
            return dict(items)
        raise AssertionError(self.kind)


class _Pair:  # a (key, value) pair inside a dict pattern
    def __init__(self, key, value):
        self.key, self.value = key, value

    def at(self, b):
        return (self.key, self.value.at(b) if hasattr(self.value, "at") else self.value)


def _is_arange(a):
    return np.array_equal(a.reshape(-1), np.arange(a.size))


def _diff(x1, x2, x3, b1):
    """A pattern for an attribute traced as x1, x2, x3 at batch sizes b1, b1 + 1, b1 + 2."""
    if any(isinstance(x, np.ndarray) for x in (x1, x2, x3)):
        if not all(isinstance(x, np.ndarray) and x.dtype == x1.dtype for x in (x2, x3)):
            raise NotGeneric("an array attribute changes type")
        if x1.shape == x2.shape == x3.shape and np.array_equal(x1, x2) and np.array_equal(x1, x3):
            return x1
        shape = _shape_pattern(x1.shape, x2.shape, b1, x3.shape)
        if all(_is_arange(x) for x in (x1, x2, x3)):
            return _Arange(shape, x1.dtype)
        first = x1.reshape(-1)[0] if x1.size else None
        if first is not None and all(x.size and (x == first).all() for x in (x1, x2, x3)):
            return _Full(shape, first, x1.dtype)
        if x1.shape == x2.shape == x3.shape and x1.size == 1 and x1.dtype.kind == "f":
            return _scalar_pattern(x1, x2, x3, b1)
        raise NotGeneric("an array attribute depends on the batch size in an unknown way")
    if any(isinstance(x, bool) for x in (x1, x2, x3)):
        if not x1 == x2 == x3:
            raise NotGeneric("a flag depends on the batch size")
        return x1
    if all(isinstance(x, (int, np.integer)) for x in (x1, x2, x3)):
        return x1 if x1 == x2 == x3 else _affine(int(x1), int(x2), b1, int(x3))
    if isinstance(x1, (tuple, list)) and type(x1) is type(x2) is type(x3):
        if not len(x1) == len(x2) == len(x3):
            raise NotGeneric("an attribute's length depends on the batch size")
        parts = [_diff(a, b, c, b1) for a, b, c in zip(x1, x2, x3)]
        if all(p is a for p, a in zip(parts, x1)):
            return x1
        return _Pattern("tuple" if isinstance(x1, tuple) else "list", parts)
    if isinstance(x1, dict) and isinstance(x2, dict) and isinstance(x3, dict):
        if not x1.keys() == x2.keys() == x3.keys():
            raise NotGeneric("attributes differ")
        parts = [_Pair(k, _diff(x1[k], x2[k], x3[k], b1)) for k in x1]
        if all(p.value is x1[p.key] for p in parts):
            return x1
        return _Pattern("dict", parts)
    if isinstance(x1, slice) and isinstance(x2, slice) and isinstance(x3, slice):
        parts = [_diff(*trio, b1) for trio in ((x1.start, x2.start, x3.start), (x1.stop, x2.stop, x3.stop),
                                                (x1.step, x2.step, x3.step))]
        if all(p is a for p, a in zip(parts, (x1.start, x1.stop, x1.step))):
            return x1
        return _Pattern("slice", parts)
    if (x1 is x2 and x1 is x3) or (type(x1) is type(x2) is type(x3) and _equal(x1, x2) and _equal(x1, x3)):
        return x1
    raise NotGeneric(f"attribute {x1!r} vs {x2!r}")


def _equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return False


class BatchTemplate:
    def __init__(self, g1, value_shapes, literals, node_attrs):
        self.g1, self.value_shapes, self.literals, self.node_attrs = g1, value_shapes, literals, node_attrs

    def instantiate(self, b):
        g1 = self.g1
        g = Graph()
        values = []
        for v, shape in zip(g1.values, self.value_shapes):
            lit = self.literals.get(v.id, v.literal)
            kind = v.kind
            if hasattr(lit, "at"):
                lit = lit.at(b)
                kind = "literal"  # includes arrays captured during tracing that are constants
            nv = Value(v.id, _shape_at(shape, b), v.dtype, kind, ref=None if kind == "literal" else v.ref,
                       literal=lit)
            values.append(nv)
        g.values = values
        g.inputs = [values[v.id] for v in g1.inputs]
        g.captures = [values[v.id] for v in g1.captures if values[v.id].kind == "capture"]
        g.scalars = [values[v.id] for v in g1.scalars]
        g.grad_reads = [(t, values[v.id]) for t, v in g1.grad_reads]
        for node, attrs in zip(g1.nodes, self.node_attrs):
            out = values[node.output.id]
            new = Node(node.op, [values[v.id] for v in node.inputs], attrs.at(b) if hasattr(attrs, "at") else
                       dict(attrs), out)
            out.node = new
            g.nodes.append(new)
        g.outputs = [values[v.id] if isinstance(v, Value) else v for v in g1.outputs]
        g.writes = [(a, values[v.id]) for a, v in g1.writes]
        g.grads = [(t, None if v is None else values[v.id], h) for t, v, h in g1.grads]
        return g


def batch_template(g1, g2, g3, b1):
    """A BatchTemplate from graphs traced at batch sizes b1, b1 + 1 and b1 + 2, or None."""
    try:
        if not (len(g1.values) == len(g2.values) == len(g3.values) and
                len(g1.nodes) == len(g2.nodes) == len(g3.nodes)):
            raise NotGeneric("different numbers of values or nodes")
        shapes, literals = [], {}
        for v1, v2, v3 in zip(g1.values, g2.values, g3.values):
            if not (v1.kind == v2.kind == v3.kind and v1.dtype == v2.dtype == v3.dtype):
                raise NotGeneric("values differ")
            if v1.kind == "capture" and not (v1.ref is v2.ref is v3.ref):
                # an array made during tracing (e.g. positions np.arange(T)): a constant if the
                # traces agree on its value and nothing writes to it
                written = {id(a) for g in (g1, g2, g3) for a, _ in g.writes}
                if any(id(v.ref) in written for v in (v1, v2, v3)):
                    raise NotGeneric("captured state arrays differ")
                pattern = _diff(v1.ref, v2.ref, v3.ref, b1)
                literals[v1.id] = pattern if hasattr(pattern, "at") else _Const(v1.ref)
            shapes.append(_shape_pattern(v1.shape, v2.shape, b1, v3.shape))
            if v1.kind == "literal":
                pattern = _diff(v1.literal, v2.literal, v3.literal, b1)
                if pattern is not v1.literal:
                    literals[v1.id] = pattern
        attrs = []
        for n1, n2, n3 in zip(g1.nodes, g2.nodes, g3.nodes):
            ids = [v.id for v in n1.inputs]
            if not (n1.op is n2.op is n3.op) or ids != [v.id for v in n2.inputs] or ids != [v.id for v in n3.inputs]:
                raise NotGeneric(f"node {n1.op.name} differs")
            attrs.append(_diff(n1.attrs, n2.attrs, n3.attrs, b1))
        outs = [[getattr(v, "id", v) for v in g.outputs] for g in (g1, g2, g3)]
        if not outs[0] == outs[1] == outs[2]:
            raise NotGeneric("outputs differ")
        writes = [[(id(a), v.id) for a, v in g.writes] for g in (g1, g2, g3)]
        if not writes[0] == writes[1] == writes[2]:
            raise NotGeneric("state writes differ")
        return BatchTemplate(g1, shapes, literals, attrs)
    except NotGeneric as e:
        batch_template.last_reason = str(e)
        return None
