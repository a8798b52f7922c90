"""Code generation: a graph becomes one straight-line Python function.

Each node is a call of its primitive's NumPy forward (BLAS for matmul), or of a fused numba
kernel made by the fusion pass (``kernels.py``); there is no autograd bookkeeping, no Tensor
objects and no dict lookups at run time. The generated source is printed with
``em.jit(..., debug=True)`` or ``EMBER_JIT_DEBUG=1``.
"""

from __future__ import annotations

import numpy as np


def _ident(v):
    return f"v{v.id}"


def _aliases_outside(v):
    """Whether value ``v`` is (a view of) memory the graph does not own."""
    while v.kind == "node" and getattr(v.node.op, "is_view", False) and v.node.inputs:
        v = v.node.inputs[0]
    return v.kind in ("capture", "input", "literal", "grad_in", "scalar")


def build_runner(graph, debug=False):
    ns = {"_np": np, "_copyto": np.copyto, "_asarray": np.asarray, "_shares": np.shares_memory}
    lines = ["def run(args):"]
    emit = lines.append

    def ref(v):
        if v.kind == "literal":
            name = f"L{v.id}"
            ns[name] = v.literal
            return name
        if v.kind == "capture":
            name = f"C{v.id}"
            ns[name] = v.ref
            return name
        return _ident(v)

    for v in graph.inputs:
        emit(f"    {_ident(v)} = args[{v.ref}]")
    for v in graph.scalars:
        ns[f"S{v.id}"], ns[f"D{v.id}"] = v.ref, v.dtype
        emit(f"    {_ident(v)} = _asarray(S{v.id}(), D{v.id})")
    for tensor, v in graph.grad_reads:
        ns[f"G{v.id}"] = tensor
        emit(f"    {_ident(v)} = G{v.id}.grad.data")
    for k, node in enumerate(graph.nodes):
        call_args = ", ".join(ref(v) for v in node.inputs)
        outputs = getattr(node, "outputs", None)
        if outputs is not None:  # a fused kernel returns a tuple of outputs
            ns[f"F{k}"] = node.kernel
            comment = f"  # fused: {node.describe()}" if debug else ""
            emit(f"    {', '.join(_ident(v) for v in outputs)}, = F{k}({call_args}){comment}")
            continue
        ns[f"F{k}"] = node.op.forward
        if node.attrs:
            ns[f"A{k}"] = node.attrs
            call_args += (", " if call_args else "") + f"**A{k}"
        comment = f"  # {node.op.name} -> {node.output.dtype}{list(node.output.shape)}" if debug else ""
        emit(f"    {_ident(node.output)} = F{k}({call_args}){comment}")
    # outputs and gradients are new arrays the caller owns; state is written back in place
    for i, (arr, v) in enumerate(graph.writes):
        ns[f"W{i}"] = arr
        emit(f"    _copyto(W{i}, {ref(v)})")
    # never hand out one buffer twice, or a buffer that is not ours (a parameter, an argument,
    # a constant of the graph, or a view of one: passes such as x*1 -> x can make those results)
    outs = ", ".join((f"{ref(v)}.copy()" if _aliases_outside(v) else ref(v)) if hasattr(v, "kind") else repr(v)
                     for v in graph.outputs)
    seen = set()
    grads = []
    for _, v, _ in graph.grads:
        if v is None:
            grads.append("None")
            continue
        expr = ref(v)
        if v.id in seen or _aliases_outside(v):
            expr = f"{expr}.copy()"
        seen.add(v.id)
        grads.append(expr)
    emit(f"    return [{outs}], [{', '.join(grads)}]")
    source = "\n".join(lines)
    code = compile(source, "<ember.jit>", "exec")
    exec(code, ns)
    run = ns["run"]
    run.source = source
    if debug:
        print("--- generated code\n" + source)
        for node in graph.nodes:
            if getattr(node, "outputs", None) is not None:  # a pass's Python function has no source file
                text = getattr(node.kernel, "source", None) or f"(Python: {node.kernel.__qualname__})"
                print(f"--- kernel for {node.describe()}\n{text}")
    return run
