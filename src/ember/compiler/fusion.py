"""Elementwise fusion: chains of elementwise primitives over one iteration shape become a
single numba kernel (``kernels.py``) that reads each input once and writes only the values
needed outside the chain: e.g. GELU's formula, a layer norm's normalise-scale-shift, or the
whole Adam update of one parameter. Kernels run multi-threaded over the leading dim.

A node joins a group when it has the group's shape and every input it takes from outside
the group is ready before the group starts; the kernel then runs where the group's first
node was, so everything it reads already exists and everything it writes is used later.
"""

from __future__ import annotations

import numpy as np

from .ir import KernelNode
from .kernels import make_kernel

#: groups smaller than this many elements stay NumPy calls unless they fuse several ops
MIN_SINGLE_OP_ELEMENTS = 1 << 14


class FusedNode(KernelNode):
    """A fused group: several elementwise nodes computed by one kernel."""

    def __init__(self, members, inputs, outputs, kernel):
        super().__init__(" + ".join(m.op.name for m in members), inputs, outputs, kernel)
        self.op.name = "fused"
        self.members = members


def fusible(node):
    op = node.op
    if op.scalar is None:
        return False
    dt = node.output.dtype
    if getattr(op, "scalar_dtypes", None) is not None and dt.name not in op.scalar_dtypes:
        return False
    if op.scalar(*["x"] * len(node.inputs), **node.attrs) is None:  # e.g. GELU without its tanh form
        return False
    return dt.kind in "fbiu" and all(v.dtype.kind in "fbiu" for v in node.inputs)


def _single_element(node):
    return int(np.prod(node.output.shape)) <= 1 and node.op.name != "random"


def hoist_scalars(graph):
    """Move each single-element node to just after its inputs, so the scalar arithmetic of an
    update (bias corrections, 1 - beta) does not split the elementwise chain that uses it.
    Consumers stay after it: it only moves earlier, and never before what it reads."""
    small = [n for n in graph.nodes if _single_element(n)]
    if not small:
        return graph
    new = [n for n in graph.nodes if not _single_element(n)]
    for node in small:  # in original order, so chains of scalar nodes stay ordered
        pos = 0
        for v in node.inputs:
            if v.kind == "node":
                pos = max(pos, new.index(v.node) + 1)
        new.insert(pos, node)
    graph.nodes = new
    return graph


def _groups(graph):
    position = {}
    group_of = {}   # value id -> group
    groups = []

    def ready(v, g, start):
        if v.id in g["values"]:
            return True
        other = group_of.get(v.id)
        if other is not None and other is not g:
            return other["start"] < start
        return v.kind != "node" or position[v.id] < start

    for idx, node in enumerate(graph.nodes):
        for v in getattr(node, "outputs", (node.output,)):  # a pass's kernel node may have several
            position[v.id] = idx
        if not fusible(node):
            continue
        shape = node.output.shape
        candidates = []
        for v in node.inputs:
            g = group_of.get(v.id)
            if g is not None and g["shape"] == shape and g not in candidates:
                candidates.append(g)
        chosen = None
        if len(candidates) > 1:  # join sibling chains that meet here into one kernel
            start = min(g["start"] for g in candidates)
            merged = {"start": start, "shape": shape, "nodes": [], "values": set()}
            for g in candidates:
                merged["values"] |= g["values"]
            members = sorted((n for g in candidates for n in g["nodes"]), key=lambda n: position[n.output.id])
            if all(ready(w, merged, start) for n in members + [node] for w in n.inputs):
                merged["nodes"] = members
                for g in candidates:
                    groups.remove(g)
                groups.append(merged)
                for vid in merged["values"]:
                    group_of[vid] = merged
                chosen = merged
        if chosen is None:
            for g in candidates:
                if all(ready(w, g, g["start"]) for w in node.inputs):
                    chosen = g
                    break
        if chosen is None:
            chosen = {"start": idx, "shape": shape, "nodes": [], "values": set()}
            groups.append(chosen)
        chosen["nodes"].append(node)
        chosen["values"].add(node.output.id)
        group_of[node.output.id] = chosen
    return groups


def _build(graph, group, uses_outside, in_place, escaping):
    members = group["nodes"]
    inside = group["values"]
    inputs, input_index = [], {}
    names = {}
    for node in members:
        for v in node.inputs:
            if v.id in inside or v.id in input_index:
                continue
            input_index[v.id] = len(inputs)
            inputs.append(v)
    spec_inputs = []
    for k, v in enumerate(inputs):
        name = f"x{k}"
        names[v.id] = name
        if v.kind == "literal" and v.literal.size == 1:
            spec_inputs.append((name, None, v.literal))
        else:
            spec_inputs.append((name, v.shape, None))
    exprs = []
    for k, node in enumerate(members):
        name = f"t{k}"
        names[node.output.id] = name
        args = [names[v.id] for v in node.inputs]
        expr = node.op.scalar(*args, **node.attrs)
        if node.output.dtype.kind == "f":  # round each step to the op's dtype, as NumPy does
            expr = f"np.{node.output.dtype.name}({expr})"
        exprs.append((name, expr))
    outputs = [node.output for node in members if node.output.id in uses_outside]
    # outputs written back to state go straight into the state array; other outputs that do
    # not leave the graph reuse one buffer across runs (no allocation, no page faults)
    buffers = []
    for v in outputs:
        if v.id in in_place:
            buffers.append(in_place[v.id])
        elif v.id in escaping or not v.shape:
            buffers.append(None)
        else:
            buffers.append(np.empty(v.shape, v.dtype))
    # an input that is the very state array an output is written into (Adam's m, v, p)
    aliases = {k: j for k, v in enumerate(inputs) if v.kind == "capture" for j, b in enumerate(buffers) if b is v.ref}
    kernel = make_kernel(group["shape"], spec_inputs, exprs, [names[v.id] for v in outputs],
                         [v.dtype for v in outputs], buffers, aliases)
    array_inputs = [v for (_, ishape, _), v in zip(spec_inputs, inputs) if ishape is not None]
    fused = FusedNode(members, array_inputs, outputs, kernel)
    # how the kernel was made, for passes that build it into a bigger kernel (matvec.py)
    fused.spec = dict(shape=tuple(group["shape"]), inputs=spec_inputs, members=exprs,
                      outputs=[names[v.id] for v in outputs], dtypes=[v.dtype for v in outputs],
                      buffers=buffers, aliases=aliases, names=names)
    return fused


def _used_outside(graph, group, roots):
    """Ids of the group's values read outside it: graph roots, or inputs of other nodes."""
    values, members = group["values"], set(map(id, group["nodes"]))
    outside = roots & values
    for node in graph.nodes:
        if id(node) not in members:
            outside.update(v.id for v in node.inputs if v.id in values)
    return outside


def build_group(graph, nodes):
    """A FusedNode computing ``nodes`` (elementwise, of one shape, in order) with no state
    written in place; values used after them are its outputs."""
    group = {"start": None, "shape": nodes[0].output.shape, "nodes": list(nodes),
             "values": {n.output.id for n in nodes}}
    outside = _used_outside(graph, group, {v.id for v in graph.roots()})
    return _build(graph, group, outside, {}, _escaping(graph))


def _in_place_writes(graph, group, position):
    """Writes this group can do directly into the state array: the group reads the array's old
    value elementwise at the same index, and nothing after the group reads the old value."""
    start = group["start"]
    members = set(map(id, group["nodes"]))
    found = {}
    for arr, v in graph.writes:
        if v.id not in group["values"] or arr.shape != group["shape"] or not arr.flags.c_contiguous:
            continue
        capture = next((c for c in graph.captures if c.ref is arr), None)
        if capture is not None:
            later_reader = any(capture in n.inputs and id(n) not in members and position[id(n)] > start
                               for n in graph.nodes)
            if later_reader:
                continue
        found[v.id] = arr
    return found


def _escaping(graph):
    """Values whose memory the caller receives: outputs and gradients, and the values they are
    views of (a reshape of a kernel's buffer hands out that buffer), so never reused buffers."""
    found = set()
    stack = [v for v in graph.outputs if hasattr(v, "id")] + [v for _, v, _ in graph.grads if v is not None]
    while stack:
        v = stack.pop()
        if v.id in found:
            continue
        found.add(v.id)
        if v.kind == "node" and getattr(v.node.op, "is_view", False):
            stack.extend(v.node.inputs[:1])
    return found


def fuse_elementwise(graph):
    graph = hoist_scalars(graph)
    roots = {v.id for v in graph.roots()}
    escaping = _escaping(graph)
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    groups = _groups(graph)
    replaced = {}
    for g in groups:
        outside = _used_outside(graph, g, roots)
        size = int(np.prod(g["shape"])) if g["shape"] else 1
        if len(g["nodes"]) == 1 and size < MIN_SINGLE_OP_ELEMENTS:
            continue  # one small op: NumPy is as fast and needs no compilation
        in_place = _in_place_writes(graph, g, position)
        fused = _build(graph, g, outside, in_place, escaping)
        fused.in_place = set(in_place)
        replaced[id(g["nodes"][0])] = fused
        for node in g["nodes"][1:]:
            replaced[id(node)] = None
    new_nodes = []
    for node in graph.nodes:
        r = replaced.get(id(node), node)
        if r is not None:
            new_nodes.append(r)
    graph.nodes = new_nodes
    done = set()
    for node in new_nodes:
        done |= getattr(node, "in_place", set())
    graph.writes = [(a, v) for a, v in graph.writes if v.id not in done]  # already written by kernels
    return graph
