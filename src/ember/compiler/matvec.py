"""Matrix-vector products: a matmul of 1-4 rows by a weight matrix runs as a numba kernel
split over the cores, with the elementwise group that follows it (a bias and activation)
computed in the same kernel; consecutive layers run as one kernel.

At batch 1 a Linear layer is a GEMV, bound by reading its weight. OpenBLAS runs it on one
core. Split by output column over the cores, each core reads only its part of every weight
(from its own L2 cache when the parts fit, as the benchmark MLP's do): its three layers took
57 us through NumPy and about 33 us so (measured on the 2-core EPYC VMs this runs on). An
MLP's layers then run in one parallel region, the threads waiting for each other between
layers (``chain_source``): a region launch is ~3-4 us, a tenth of the whole inference.

The kernel takes the weight as PyTorch stores it, (N, K) with K contiguous (``x @ W.T``), so
each output is one dot product over contiguous memory. A weight in another layout at run time
goes to NumPy's matmul (and the group's own kernel), as does a matrix too large to stay in
the cores' caches.
"""

from __future__ import annotations

import functools

import numpy as np

from ..ops import threads
from . import fusion
from .ir import KernelNode
from .kernels import element_body, kernel_imports, kernel_parameters, load_kernel_module
from .passes import dce

#: rows of the left operand up to which a matmul is a matrix-vector product
MAX_ROWS = 4
#: weight sizes (K * N elements) the kernel takes. A chain whose weights add up to less than
#: PARALLEL_MIN_ELEMENTS runs on the calling thread (a parallel launch costs more than it saves;
#: one kernel instead of NumPy's permute, matmul and bias calls still saves ~2 us); above
#: MAX_ELEMENTS the parts no longer fit in the cores' L2 caches and OpenBLAS's threaded GEMV is
#: as fast
MIN_ELEMENTS = 1 << 12
PARALLEL_MIN_ELEMENTS = 1 << 17
MAX_ELEMENTS = 1 << 20

# only the dot product may be reassociated (that is what vectorizes it); the epilogue keeps
# NumPy's exact arithmetic, as the fused kernels do
_DOT = '''@numba.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True, error_model="numpy")
def dot_range(a, w, acc, m, lo, hi):
    """acc[m, n] = sum_k a[m, k] * w[n, k] for n in [lo, hi)."""
    depth = a.shape[1]
    n = lo
    while n + 4 <= hi:  # four outputs share each load of a[m, k]
        s0 = a.dtype.type(0)
        s1 = s0
        s2 = s0
        s3 = s0
        for k in range(depth):
            x = a[m, k]
            s0 += x * w[n, k]
            s1 += x * w[n + 1, k]
            s2 += x * w[n + 2, k]
            s3 += x * w[n + 3, k]
        acc[m, n] = s0
        acc[m, n + 1] = s1
        acc[m, n + 2] = s2
        acc[m, n + 3] = s3
        n += 4
    while n < hi:
        s = a.dtype.type(0)
        for k in range(depth):
            s += a[m, k] * w[n, k]
        acc[m, n] = s
        n += 1
'''


class _Stage:
    """One matrix-vector product ``a @ w.T`` (or ``a @ w``) and the elementwise group fed by
    it (a FusedNode, or None): one layer of a chain."""

    def __init__(self, matmul, a, w, transposed, group, position):
        self.a, self.w, self.transposed = a, w, transposed
        self.group, self.position = group, position  # position: the product's among the group's inputs
        self.others = [] if group is None else [x for k, x in enumerate(group.inputs) if k != position]
        self.outputs = [matmul.output] if group is None else list(group.outputs)
        self.buffers = [None] if group is None else list(group.spec["buffers"])
        self.dtypes = [matmul.output.dtype] if group is None else list(group.spec["dtypes"])
        self.shape = tuple(matmul.output.shape)
        self.product_dtype = matmul.output.dtype
        self.label = "matvec" if group is None else f"matvec + {group.describe()}"

    def function_source(self, name):
        """``name(a, w, lo, hi, *arrays)``: outputs [lo, hi) of every row of ``a``: the product
        (into its ``acc``), then the group column by column while the product is in cache."""
        if self.group is None:
            params, hoisted, body, acc = ["acc"], [], [], "acc"
        else:
            spec = self.group.spec
            params = kernel_parameters(spec["inputs"], spec["outputs"])
            hoisted, body = element_body(spec["shape"], spec["inputs"], spec["members"], spec["outputs"])
            acc = f"{spec['names'][self.group.inputs[self.position].id]}_arr"
        lines = ["@numba.njit(cache=True, nogil=True, error_model='numpy')",
                 f"def {name}(a, w, lo, hi, {', '.join(params)}):"]
        lines += ["    " + h for h in hoisted]
        lines += ["    for a0 in range(a.shape[0]):", f"        dot_range(a, w, {acc}, a0, lo, hi)"]
        if body:
            lines.append("        for a1 in range(lo, hi):")
            lines += ["            " + b for b in body]
        return "\n".join(lines), len(params)

    def fallback(self, a, w, others):
        """The same results by NumPy's matmul and the group's own kernel (a weight whose layout
        at run time the kernel cannot read)."""
        product = np.matmul(a, w.T if self.transposed else w)
        if self.group is None:
            return (product,)
        return self.group.kernel(*others[:self.position], product, *others[self.position:])


def chain_source(stages, parallel=True):
    """Source of ``kernel(parts, claims, a, w0, *arrays0, w1, *arrays1, ...)``: the stages in
    turn, each stage's a the previous one's output, each split into ``parts`` output ranges.

    The ranges go to whichever thread claims them first (an atomic counter per range) and a
    thread moves on to the next stage once every range of this one is done. Claiming instead of
    fixed ranges per thread: if numba runs the loop's iterations one after the other (fewer
    threads than parts), the first computes every range instead of waiting forever. In the
    usual case each thread takes its own range of every stage, so each core keeps its part of
    every weight in its own L2 cache. One parallel region for the whole chain saves a launch
    (~3-4 us) and a Python call per layer after the first."""
    functions, lines = [], []
    params, a = [], "a"
    n = len(stages)
    for s, stage in enumerate(stages):
        text, count = stage.function_source(f"stage{s}")
        functions.append(text)
        arrays = [f"s{s}_{j}" for j in range(count)]
        params += [f"w{s}"] + arrays
        lines += ["        for i in range(parts):",
                  "            q = (p + i) % parts",
                  f"            if atomic_add(claims, {s} * parts + q, 1) == 0:",
                  f"                size = w{s}.shape[0]",
                  "                lo, hi = q * size // parts, (q + 1) * size // parts",
                  f"                stage{s}({a}, w{s}, lo, hi, {', '.join(arrays)})",
                  f"                atomic_add(claims, {n} * parts + {s}, 1)"]
        if s + 1 < n:
            lines += [f"        while atomic_load(claims, {n} * parts + {s}) < parts:", "            pass"]
        a = arrays[-1]  # a stage's one output is its last array: the next stage's left operand
    kernel = [f"@numba.njit(parallel={parallel}, cache=True, nogil=True, error_model='numpy')",
              f"def kernel(parts, claims, a, {', '.join(params)}):",
              "    for i in range(claims.size):",
              "        claims[i] = 0",
              f"    for p in {'numba.prange' if parallel else 'range'}(parts):", *lines]
    members = [m for stage in stages if stage.group is not None for m in stage.group.spec["members"]]
    return "\n".join(["# ember matrix-vector kernel (format 2)", *kernel_imports(members),
                      "from ember.compiler.native import atomic_add, atomic_load", "", "", _DOT, "",
                      "\n\n".join(functions), "", "", "\n".join(kernel), ""])


def _make_kernel(stages):
    """``run(a, w0, *others0, w1, *others1, ...) -> outputs of the last stage``, a generated
    function: at batch 1 the whole chain takes ~15-40 us, and each Python-level step of a
    general wrapper ~0.3."""
    parallel = sum(int(np.prod(s.w.shape)) for s in stages) >= PARALLEL_MIN_ELEMENTS
    parts = threads.workers() if parallel else 1
    source = chain_source(stages, parallel)
    ns = {"_kernel": load_kernel_module(source).kernel, "_claims": np.zeros(len(stages) * (parts + 1), np.int64),
          "_contiguous": np.ascontiguousarray, "_empty": np.empty, "_parts": parts}
    params, weights, args, new_outputs, k = ["a"], [], ["_parts", "_claims", "a"], [], 0
    for s, stage in enumerate(stages):
        w = f"i{k}"
        others = [f"i{k + 1 + j}" for j in range(len(stage.others))]
        params += [w] + others
        k += 1 + len(others)
        weights.append(f"    w{s} = {w if stage.transposed else w + '.T'}")
        arrays = [f"{x}.reshape(1)" if not v.shape else x for x, v in zip(others, stage.others)]
        if stage.group is not None:  # else the product is the output
            ns[f"A{s}"] = np.empty(stage.shape, stage.product_dtype)  # read only inside the kernel
            arrays.insert(stage.position, f"A{s}")
        outs = []
        for j, (buffer, dtype) in enumerate(zip(stage.buffers, stage.dtypes)):
            if s + 1 < len(stages) and buffer is None:
                buffer = np.empty(stage.shape, dtype)  # an intermediate only the next stage reads
            if buffer is None:
                outs.append(f"o{j}")
                new_outputs.append(f"    o{j} = _empty({stage.shape!r}, D{j})")
                ns[f"D{j}"] = dtype
            else:
                outs.append(f"B{s}_{j}")
                ns[f"B{s}_{j}"] = buffer
        args += [f"w{s}"] + arrays + outs
    ns["_fallback"] = functools.partial(_fallback, stages)
    contiguous = " and ".join(f"w{s}.flags.c_contiguous" for s in range(len(stages)))
    body = [f"def run({', '.join(params)}):", *weights,
            f"    if not ({contiguous}):",
            f"        return _fallback({', '.join(params)})",
            "    if not a.flags.c_contiguous:",
            "        a = _contiguous(a)",
            *new_outputs,
            f"    _kernel({', '.join(args)})",
            f"    return ({', '.join(outs)},)"]
    exec(compile("\n".join(body), "<ember matvec>", "exec"), ns)
    run = ns["run"]
    run.source = source
    return run


def _fallback(stages, a, *inputs):
    k = 0
    for stage in stages:
        w, others = inputs[k], inputs[k + 1:k + 1 + len(stage.others)]
        k += 1 + len(others)
        outputs = stage.fallback(a, w, others)
        a = outputs[-1]
    return outputs


def _candidate(node):
    if node.op.name != "matmul" or len(node.inputs) != 2:
        return False
    a, b = node.inputs
    if len(a.shape) != 2 or len(b.shape) != 2 or threads.workers() < 2:
        return False  # on one thread OpenBLAS's GEMV is as fast
    dtype = node.output.dtype
    if dtype not in (np.float32, np.float64) or a.dtype != dtype or b.dtype != dtype:
        return False
    return a.shape[0] <= MAX_ROWS and MIN_ELEMENTS <= b.shape[0] * b.shape[1] <= MAX_ELEMENTS


def _epilogue(graph, index, uses, produced_at, roots):
    """The fused elementwise group (or single elementwise node) that alone reads node
    ``index``'s product and can run where the product is made (its other inputs already
    exist, it writes no state), as a FusedNode; else None."""
    v = graph.nodes[index].output
    if uses.get(v.id, 0) != 1 or v.id in roots:
        return None
    consumer = next(n for n in graph.nodes[index + 1:] if any(x is v for x in n.inputs))
    if any(x is not v and produced_at.get(x.id, -1) > index for x in consumer.inputs):
        return None
    if not hasattr(consumer, "outputs") and fusion.fusible(consumer) and consumer.output.shape == v.shape:
        # one elementwise op left unfused for its size (a classifier's bias): a group of one
        consumer = fusion.build_group(graph, [consumer])
    spec = getattr(consumer, "spec", None)
    if spec is None or spec["shape"] != tuple(v.shape) or spec["aliases"] or getattr(consumer, "in_place", None):
        return None
    return consumer


def lower_matvec(graph):
    """Replace small-batch matmuls by the matrix-vector kernel, with the elementwise group
    fed by the product when there is one; consecutive layers (each product's group feeding
    only the next product) become one kernel. A right operand that is the transpose of
    another value (``x @ W.T``) is read as that value; the permute then becomes dead."""
    uses, produced_at = {}, {}
    for i, node in enumerate(graph.nodes):
        for x in node.inputs:
            uses[x.id] = uses.get(x.id, 0) + 1
        for out in getattr(node, "outputs", None) or [node.output]:
            produced_at[out.id] = i
    roots = {v.id for v in graph.roots()}
    replaced = {}
    for i, node in enumerate(graph.nodes):
        if not _candidate(node):
            continue
        a, b = node.inputs
        transposed = (b.kind == "node" and b.node.op.name == "permute"
                      and tuple(b.node.attrs.get("dims", ())) == (1, 0))
        w = b.node.inputs[0] if transposed else b
        group = _epilogue(graph, i, uses, produced_at, roots)
        position = None if group is None else next(k for k, x in enumerate(group.inputs) if x is node.output)
        stage = _Stage(node, a, w, transposed, group, position)
        replaced[id(node)] = placeholder = KernelNode(stage.label, [a, w] + stage.others, stage.outputs, None)
        placeholder.stage = stage
        if group is not None:
            replaced[id(group.members[0])] = replaced[id(group)] = None
    if not replaced:
        return graph
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if replaced.get(id(n), n) is not None]
    graph = dce(graph)  # the permutes the kernels read through: chained layers are then adjacent
    return _chain(graph, uses, roots)


def _chain(graph, uses, roots):
    """Build each run of adjacent stages, each one's only output read only by the next, into one
    KernelNode."""
    nodes, run = [], []

    def close():
        if run:
            stages = [n.stage for n in run]
            label = " -> ".join(stage.label for stage in stages)
            inputs = [stages[0].a] + [x for stage in stages for x in [stage.w] + stage.others]
            nodes.append(KernelNode(label, inputs, stages[-1].outputs, _make_kernel(stages)))
            run.clear()

    for node in graph.nodes:
        stage = getattr(node, "stage", None)
        if stage is None:
            close()
            nodes.append(node)
            continue
        if run:
            before = run[-1].stage
            out = before.outputs[0] if len(before.outputs) == 1 else None
            if out is None or stage.a is not out or uses.get(out.id, 0) != 1 or out.id in roots:
                close()
        run.append(node)
    close()
    graph.nodes = nodes
    return graph
