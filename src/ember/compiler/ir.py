"""The graph IR: SSA values produced by nodes that are registered primitives.

A ``Graph`` has
  * ``inputs``: values for the traced function's tensor arguments, in flattened order,
  * ``captures``: values read from arrays that existed outside the function (parameters,
    buffers, optimizer state), read again at every run,
  * ``scalars``: values read from Python at every run (e.g. an optimizer group's ``lr``),
  * ``nodes``: one registered primitive each (``node.op``), in execution order,
  * ``outputs``: the function's flattened tensor results,
  * ``writes``: (array, value) pairs: in-place updates of outside arrays (parameters, state),
  * ``grads``: (tensor, value or None): ``.grad`` assignments made by ``backward()``.
"""

from __future__ import annotations

import numpy as np


class Value:
    """One SSA value: a tensor of known shape and dtype."""

    __slots__ = ("id", "shape", "dtype", "kind", "ref", "node", "literal")

    def __init__(self, vid, shape, dtype, kind, ref=None, node=None, literal=None):
        self.id = vid
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.kind = kind          # input | capture | scalar | literal | grad_in | node
        self.ref = ref            # input: position; capture: the array; scalar: a reader function
        self.node = node          # the producing Node for kind == "node"
        self.literal = literal    # the NumPy value of a literal

    @property
    def name(self):
        return f"%{self.id}"

    def __repr__(self):
        return f"{self.name}:{self.dtype}{list(self.shape)}"


class Node:
    __slots__ = ("op", "inputs", "attrs", "output", "scope")

    def __init__(self, op, inputs, attrs, output, scope=""):
        self.op, self.inputs, self.attrs, self.output = op, list(inputs), attrs, output
        self.scope = scope  # the module path that made it, e.g. "blocks.0.attn" (for names)


class KernelNode:
    """A node made by a pass (fusion, the matvec and row lowerings, scatter sums): a kernel,
    numba or a Python function over arrays, returning a tuple of outputs,
    ``kernel(*input_arrays)``."""

    class _Op:
        scalar = None

        def __init__(self, name):
            self.name = name

    def __init__(self, label, inputs, outputs, kernel):
        self.op = KernelNode._Op(label)
        self.label, self.inputs, self.outputs, self.kernel = label, list(inputs), list(outputs), kernel
        self.attrs = {}

    @property
    def output(self):
        return self.outputs[0]

    def describe(self):
        return self.label


def _fmt_attr(v):
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}"
    if isinstance(v, slice):
        return f"{'' if v.start is None else v.start}:{'' if v.stop is None else v.stop}" + \
            ("" if v.step is None else f":{v.step}")
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt_attr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, np.dtype):
        return str(v)
    return repr(v)


class Graph:
    def __init__(self):
        self.values: list[Value] = []
        self.inputs: list[Value] = []
        self.captures: list[Value] = []
        self.scalars: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list = []          # Value or a static Python value
        self.writes: list = []           # (array, Value)
        self.grads: list = []            # (tensor, Value or None, had a .grad before)
        self.grad_reads: list = []       # (tensor, Value): .grad read at run time

    def new_value(self, shape, dtype, kind, **kw):
        v = Value(len(self.values), shape, dtype, kind, **kw)
        self.values.append(v)
        return v

    def add_node(self, op, inputs, attrs, shape, dtype, before=None):
        """A new node computing ``op(*inputs, **attrs)``: appended, or inserted just before
        the node ``before`` (a pass's rewrite)."""
        out = self.new_value(shape, dtype, "node")
        node = Node(op, inputs, attrs, out)
        out.node = node
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def roots(self):
        """Values the graph must compute: outputs, in-place writes and gradients."""
        out = [v for v in self.outputs if isinstance(v, Value)]
        out += [v for _, v in self.writes]
        out += [v for _, v, _ in self.grads if v is not None]
        return out

    # ---- display ----------------------------------------------------------------------
    def __str__(self):
        lines = []
        for v in self.inputs:
            lines.append(f"{v!r} = input[{v.ref}]")
        for v in self.captures:
            lines.append(f"{v!r} = capture")
        for v in self.scalars:
            lines.append(f"{v!r} = scalar")
        for _, v in self.grad_reads:
            lines.append(f"{v!r} = grad_in")
        for node in self.nodes:
            args = ", ".join(_operand(v) for v in node.inputs)
            outs = getattr(node, "outputs", None)
            if outs is not None:
                lines.append(f"{', '.join(map(repr, outs))} = fused[{node.describe()}]({args})")
                continue
            attrs = ", ".join(f"{k}={_fmt_attr(a)}" for k, a in node.attrs.items())
            lines.append(f"{node.output!r} = {node.op.name}({args}{', ' if args and attrs else ''}{attrs})")
        outs = ", ".join(_operand(v) if isinstance(v, Value) else repr(v) for v in self.outputs)
        lines.append(f"return {outs}")
        for node in self.nodes:  # state that fused kernels update in place (memory planning)
            for v in getattr(node, "outputs", None) or ():
                if v.id in getattr(node, "in_place", ()):
                    lines.append(f"write {v.name} -> state{list(v.shape)} (in place, by the kernel)")
        for arr, v in self.writes:
            lines.append(f"write {v.name} -> state{list(arr.shape)}")
        for t, v, _ in self.grads:
            target = f"input[{t}]" if isinstance(t, int) else f"param{list(t.shape)}"  # an argument's .grad
            lines.append(f"grad {'None' if v is None else v.name} -> {target}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz DOT text of the graph (render with ``dot -Tpng``). A fused kernel is one box
        listing its outputs; in-place writes and gradients are drawn as sinks like outputs."""
        out = ["digraph ember {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
        names = {}  # value id -> DOT node id

        def source(v, consumer):
            if v.id in names:
                return names[v.id]
            if v.kind == "literal":
                lid = f"l{v.id}_{consumer}"
                out.append(f'  {lid} [label="{v.literal.item() if v.literal.size == 1 else "const"}", '
                           "shape=plaintext];")
                return lid
            return f"v{v.id}"

        for v in self.inputs + self.captures + self.scalars + [v for _, v in self.grad_reads]:
            names[v.id] = f"v{v.id}"
            out.append(f'  v{v.id} [label="{v.kind} {v.dtype}{list(v.shape)}", shape=ellipse];')
        for node in self.nodes:
            outs = getattr(node, "outputs", None) or [node.output]
            nid = f"v{outs[0].id}"
            title = f"fused[{node.describe()}]" if getattr(node, "outputs", None) is not None else node.op.name
            shapes = "\\n".join(f"{o.dtype}{list(o.shape)}" for o in outs)
            out.append(f'  {nid} [label="{title}\\n{shapes}"];')
            for i in node.inputs:
                out.append(f"  {source(i, nid)} -> {nid};")
            for o in outs:
                names[o.id] = nid
        sinks = [(f"out{k}", f"output {k}", v) for k, v in enumerate(self.outputs) if isinstance(v, Value)]
        sinks += [(f"w{k}", f"write state{list(arr.shape)}", v) for k, (arr, v) in enumerate(self.writes)]
        sinks += [(f"wk{v.id}", f"write state{list(v.shape)} in place", v) for node in self.nodes
                  for v in getattr(node, "outputs", None) or () if v.id in getattr(node, "in_place", ())]
        sinks += [(f"g{k}", "grad", v) for k, (_, v, _) in enumerate(self.grads) if v is not None]
        for sid, label, v in sinks:
            out.append(f'  {sid} [label="{label}", shape=ellipse]; {source(v, sid)} -> {sid};')
        out.append("}")
        return "\n".join(out)


def _operand(v):
    if v.kind == "literal" and v.literal.size == 1:
        return f"{v.literal.item()!r}"
    return v.name
