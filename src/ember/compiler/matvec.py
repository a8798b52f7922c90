"""Matrix-vector products: a matmul of 1-4 rows by a weight matrix runs as a numba kernel
split over the cores, with the elementwise group that follows it (a bias and activation)
computed in the same kernel.

At batch 1 a Linear layer is a GEMV, bound by reading its weight. OpenBLAS runs it on one
core. Split by output column over the cores, each core reads only its part of every weight
(from its own L2 cache when the parts fit, as the benchmark MLP's do): its three layers took
57 us through NumPy and about 33 us so (measured on the 2-core EPYC VMs this runs on).

The kernel takes the weight as PyTorch stores it, (N, K) with K contiguous (``x @ W.T``), so
each output is one dot product over contiguous memory. A weight in another layout at run time
goes to NumPy's matmul (and the group's own kernel), as does a matrix too large to stay in
the cores' caches.
"""

from __future__ import annotations

import numpy as np

from ..ops import threads
from . import fusion
from .ir import KernelNode
from .kernels import element_body, kernel_imports, kernel_parameters, load_kernel_module

#: rows of the left operand up to which a matmul is a matrix-vector product
MAX_ROWS = 4
#: weight sizes (K * N elements) the kernel takes. Up to PARALLEL_MIN_ELEMENTS it runs on the
#: calling thread (a parallel launch costs more than it saves; one kernel instead of NumPy's
#: permute, matmul and bias calls still saves ~2 us); above MAX_ELEMENTS the parts no longer
#: fit in the cores' L2 caches and OpenBLAS's threaded GEMV is as fast
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


def kernel_source(epilogue=None, product="x0", parallel=True):
    """Source of ``kernel(a, w, parts, *arrays)``: the product into ``acc`` (no epilogue) or,
    with ``epilogue`` (a fused group's spec, see fusion.py), into the group's input
    ``product`` and then the group, column range by column range while it is in cache."""
    if epilogue is None:
        params, hoisted, body, acc = ["acc"], [], [], "acc"
    else:
        spec = epilogue
        params = kernel_parameters(spec["inputs"], spec["outputs"])
        hoisted, body = element_body(spec["shape"], spec["inputs"], spec["members"], spec["outputs"])
        acc = f"{product}_arr"
    lines = [f"@numba.njit(parallel={parallel}, cache=True, nogil=True, error_model='numpy')",
             f"def kernel(a, w, parts, {', '.join(params)}):"]
    lines += ["    " + h for h in hoisted]
    lines += ["    size = w.shape[0]",
              f"    for p in {'numba.prange' if parallel else 'range'}(parts):",
              "        lo = p * size // parts",
              "        hi = (p + 1) * size // parts",
              "        for a0 in range(a.shape[0]):",
              f"            dot_range(a, w, {acc}, a0, lo, hi)"]
    if body:
        lines.append("            for a1 in range(lo, hi):")
        lines += ["                " + b for b in body]
    members = epilogue["members"] if epilogue is not None else []
    return "\n".join(["# ember matrix-vector kernel (format 1)", *kernel_imports(members), "", "", _DOT, "",
                      "\n".join(lines), ""])


def _make_kernel(rows, depth, size, dtype, weight_is_transposed, group=None, product_position=None):
    """``run(a, w, *group_inputs) -> outputs``. ``weight_is_transposed``: ``w`` is the (N, K)
    array whose transpose is the matmul's right operand; else ``w`` is the (K, N) operand.
    ``group``: the FusedNode fed by the product, whose input ``product_position`` it is."""
    parallel = depth * size >= PARALLEL_MIN_ELEMENTS
    parts = threads.workers() if parallel else 1
    matmul = np.matmul
    if group is None:
        source = kernel_source(parallel=parallel)
        fn = load_kernel_module(source).kernel

        def run(a, w):
            wt = w if weight_is_transposed else w.T
            if not wt.flags.c_contiguous:  # e.g. a weight argument passed in another layout
                return (matmul(a, wt.T),)
            out = np.empty((rows, size), dtype)
            fn(np.ascontiguousarray(a), wt, parts, out)
            return (out,)
    else:
        spec = group.spec
        product = spec["names"][group.inputs[product_position].id]
        source = kernel_source(spec, product, parallel)
        fn = load_kernel_module(source).kernel
        acc = np.empty((rows, size), dtype)  # the product: read only inside the kernel
        fixed = list(spec["buffers"])
        dtypes = spec["dtypes"]
        shape = spec["shape"]
        separate = group.kernel
        # the group's kernel reads 0-d inputs as 1-element arrays; which ones is known now
        has_scalars = any(not len(v.shape) for k, v in enumerate(group.inputs) if k != product_position)
        one_new_out = len(fixed) == 1 and fixed[0] is None  # the usual case: one new array per call
        # outputs the graph does not hand out are written into the same buffers every run
        reused_outs = tuple(fixed) if all(b is not None for b in fixed) else None
        empty = np.empty

        # lean on purpose: at batch 1 the kernel takes ~6-9 us, and each list built here ~0.3
        def run(a, w, *others):
            wt = w if weight_is_transposed else w.T
            if not wt.flags.c_contiguous:
                arrays = list(others)
                arrays.insert(product_position, matmul(a, wt.T))
                return separate(*arrays)
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            arrays = others[:product_position] + (acc,) + others[product_position:]
            if has_scalars:
                arrays = tuple(x.reshape(1) if x.ndim == 0 else x for x in arrays)
            if one_new_out:
                out = empty(shape, dtypes[0])
                fn(a, wt, parts, *arrays, out)
                return (out,)
            if reused_outs is not None:
                fn(a, wt, parts, *arrays, *reused_outs)
                return reused_outs
            outs = [empty(shape, d) if b is None else b for b, d in zip(fixed, dtypes)]
            fn(a, wt, parts, *arrays, *outs)
            return tuple(outs)

    run.source = source
    return run


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
    fed by the product when there is one. A right operand that is the transpose of another
    value (``x @ W.T``) is read as that value; the permute then usually becomes dead and is
    removed by the dce that follows."""
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
        rows, size = node.output.shape
        depth = a.shape[1]
        group = _epilogue(graph, i, uses, produced_at, roots)
        if group is None:
            kernel = _make_kernel(rows, depth, size, node.output.dtype, transposed)
            replaced[id(node)] = KernelNode("matvec", [a, w], [node.output], kernel)
            continue
        position = next(k for k, x in enumerate(group.inputs) if x is node.output)
        kernel = _make_kernel(rows, depth, size, node.output.dtype, transposed, group, position)
        others = [x for k, x in enumerate(group.inputs) if k != position]
        replaced[id(node)] = KernelNode(f"matvec + {group.describe()}", [a, w] + others, group.outputs, kernel)
        replaced[id(group.members[0])] = replaced[id(group)] = None
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if replaced.get(id(n), n) is not None]
    return graph
