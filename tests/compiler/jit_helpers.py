"""Helpers shared by the compiler tests: hand-built graphs, running graphs, comparing jitted
and eager runs."""

from __future__ import annotations

import numpy as np

import ember as em
from ember.compiler.codegen import build_runner
from ember.compiler.ir import Graph
from ember.ops.registry import PRIMITIVES, Meta


class GraphBuilder:
    """Build a graph by hand: ``b = GraphBuilder(); x = b.input((3, 4)); y = b.op("mul", x, b.lit(1.0))``."""

    def __init__(self):
        self.graph = Graph()

    def input(self, shape, dtype=np.float32):
        v = self.graph.new_value(shape, dtype, "input", ref=len(self.graph.inputs))
        self.graph.inputs.append(v)
        return v

    def lit(self, value, dtype=np.float32):
        a = np.asarray(value, dtype=dtype)
        return self.graph.new_value(a.shape, a.dtype, "literal", literal=a)

    def op(self, name, *inputs, **attrs):
        prim = PRIMITIVES[name]
        shape, dtype = prim.infer(*[Meta(v.shape, v.dtype) for v in inputs], **attrs)
        return self.graph.add_node(prim, list(inputs), attrs, shape, dtype).output

    def output(self, *values):
        self.graph.outputs = list(values)
        return self.graph


def run_graph(graph, arrays):
    """Run a graph (optimized or not) on NumPy arrays: (outputs, gradients)."""
    outs, grads = build_runner(graph)(list(arrays))
    return [np.asarray(o) for o in outs], grads


def op_names(graph):
    return [getattr(n.op, "name", type(n).__name__) for n in graph.nodes]


def fused_nodes(graph):
    return [n for n in graph.nodes if hasattr(n, "members")]


def compiled_graph(fn, index=0):
    """The optimized graph of a JitFunction's cached specialisation (after a call)."""
    fn = getattr(fn, "forward", fn)
    entries = [e for group in fn.cache.values() for e in group]
    return entries[index].graph


def params_close(p_jit, p_eager, rtol=1e-5, atol=1e-7):
    """|p_jit - p_eager| <= rtol * |p| + atol elementwise; returns the worst ratio for messages."""
    p_jit, p_eager = np.asarray(p_jit), np.asarray(p_eager)
    bound = rtol * np.abs(p_eager) + atol
    worst = float(np.max(np.abs(p_jit - p_eager) / bound)) if p_eager.size else 0.0
    return worst <= 1.0, worst


def arrays_of(tensors):
    return [None if t is None else np.array(t.data, copy=True) for t in tensors]


def assert_tensors_close(a, b, rtol=1e-5, atol=1e-6):
    a = a.detach() if isinstance(a, em.Tensor) else a
    b = b.detach() if isinstance(b, em.Tensor) else b
    np.testing.assert_allclose(np.asarray(a.data if isinstance(a, em.Tensor) else a),
                               np.asarray(b.data if isinstance(b, em.Tensor) else b), rtol=rtol, atol=atol)
