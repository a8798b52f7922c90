"""Graph passes. Each takes a Graph and returns it optimized; each is tested on its own.

  dce       drop nodes whose results nothing needs (random draws always stay)
  cse       compute identical (op, inputs, attrs) once
  fold      evaluate nodes whose inputs are all literals
  simplify  algebra: x*1, x+0, x-0, x/1, x**1, --x (1 and 0 may be constant arrays), cast to
            the same dtype, reshape to the same shape, reshape of reshape, permute of permute,
            transpose of a matmul
"""

from __future__ import annotations

import numpy as np

from .ir import KernelNode, Value

#: primitives that must run every time even if two calls look identical
IMPURE = {"random"}


def _replace_uses(graph, mapping):
    """Point every use of a value in ``mapping`` at its replacement."""
    if not mapping:
        return

    def follow(v):
        while v.id in mapping:
            v = mapping[v.id]
        return v

    for node in graph.nodes:
        node.inputs = [follow(v) for v in node.inputs]
    graph.outputs = [follow(v) if isinstance(v, Value) else v for v in graph.outputs]
    graph.writes = [(a, follow(v)) for a, v in graph.writes]
    graph.grads = [(t, None if v is None else follow(v), h) for t, v, h in graph.grads]


def dce(graph):
    live = {v.id for v in graph.roots()}
    kept = []
    for node in reversed(graph.nodes):
        outs = getattr(node, "outputs", None) or [node.output]
        # random draws advance the generator: an unused one still runs, so the numbers drawn
        # after it are the ones eager mode draws; a fused kernel writing state in place is a
        # write even when none of its results is read
        if any(v.id in live for v in outs) or node.op.name in IMPURE or getattr(node, "in_place", None):
            kept.append(node)
            live.update(v.id for v in node.inputs)
    kept.reverse()
    graph.nodes = kept
    graph.captures = [v for v in graph.captures if v.id in live]
    graph.scalars = [v for v in graph.scalars if v.id in live]
    graph.grad_reads = [(t, v) for t, v in graph.grad_reads if v.id in live]
    return graph


def _attr_key(obj):
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, dict):
        return tuple((k, _attr_key(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_attr_key(o) for o in obj)
    if isinstance(obj, slice):
        return ("slice", obj.start, obj.stop, obj.step)
    try:
        hash(obj)
        return obj
    except TypeError:
        return ("id", id(obj))


def cse(graph):
    seen = {}
    mapping = {}
    kept = []
    literal_ids = {}  # equal constants become one value, so nodes using them can merge
    for v in graph.values:
        if v.kind == "literal":
            key = (v.literal.dtype.str, v.literal.shape, v.literal.tobytes())
            canon = literal_ids.setdefault(key, v)
            if canon is not v:
                mapping[v.id] = canon
    for node in graph.nodes:
        node.inputs = [mapping.get(v.id, v) for v in node.inputs]
        if node.op.name in IMPURE:
            kept.append(node)
            continue
        key = (node.op.name, tuple(v.id for v in node.inputs), _attr_key(node.attrs))
        prior = seen.get(key)
        if prior is not None:
            mapping[node.output.id] = prior
        else:
            seen[key] = node.output
            kept.append(node)
    graph.nodes = kept
    _replace_uses(graph, mapping)
    return graph


def fold(graph, max_size=1 << 16):
    """Evaluate nodes whose inputs are all literals (small results become literals)."""
    kept = []
    mapping = {}
    for node in graph.nodes:
        node.inputs = [mapping.get(v.id, v) for v in node.inputs]
        if node.inputs and node.op.name not in IMPURE and all(v.kind == "literal" for v in node.inputs):
            result = np.asarray(node.op.forward(*[v.literal for v in node.inputs], **node.attrs))
            if result.size <= max_size:
                lit = graph.new_value(result.shape, result.dtype, "literal", literal=result)
                mapping[node.output.id] = lit
                continue
        kept.append(node)
    graph.nodes = kept
    _replace_uses(graph, mapping)
    return graph


def _single_use(graph, value):
    uses = sum(1 for n in graph.nodes for v in n.inputs if v is value)
    return uses == 1 and value.id not in {r.id for r in graph.roots()}


def _transposed(graph, v, before):
    """A permute node swapping the last two dims of ``v``, inserted before ``before``."""
    from ..ops.registry import PRIMITIVES

    n = len(v.shape)
    dims = tuple(range(n - 2)) + (n - 1, n - 2)
    shape = v.shape[:-2] + (v.shape[-1], v.shape[-2])
    return graph.add_node(PRIMITIVES["permute"], [v], {"dims": dims}, shape, v.dtype, before=before).output


def _is_literal(v, value):
    """A constant whose every element is ``value`` (a scalar, or e.g. a folded ones(n, m))."""
    if v.kind != "literal" or v.literal.size == 0:
        return False
    if v.literal.size == 1:
        return v.literal.reshape(()).item() == value
    return bool(np.all(v.literal == value))


def simplify(graph):
    mapping = {}

    def same(node, v):
        return v.shape == node.output.shape and v.dtype == node.output.dtype

    for node in graph.nodes:
        node.inputs = [mapping.get(v.id, v) for v in node.inputs]
        name, ins = node.op.name, node.inputs
        replacement = None
        if name == "mul":
            a, b = ins
            if _is_literal(b, 1) and same(node, a):
                replacement = a
            elif _is_literal(a, 1) and same(node, b):
                replacement = b
        elif name == "add":
            a, b = ins
            if _is_literal(b, 0) and same(node, a):
                replacement = a
            elif _is_literal(a, 0) and same(node, b):
                replacement = b
        elif name == "sub" and _is_literal(ins[1], 0) and same(node, ins[0]):
            replacement = ins[0]
        elif name in ("div", "pow") and _is_literal(ins[1], 1) and same(node, ins[0]):
            replacement = ins[0]
        elif name == "neg" and ins[0].node is not None and ins[0].node.op.name == "neg":
            replacement = ins[0].node.inputs[0]
        elif name == "cast" and ins[0].dtype == node.output.dtype:
            replacement = ins[0]
        elif name == "reshape":
            src = ins[0]
            if src.shape == node.output.shape:
                replacement = src
            elif src.node is not None and src.node.op.name == "reshape":
                origin = src.node.inputs[0]
                if origin.shape == node.output.shape:
                    replacement = origin
                elif _single_use(graph, src):
                    # with other uses the inner reshape still runs; reshaping its result is a
                    # view, while reshaping a strided origin (a permuted gradient) copies again
                    node.inputs = [origin]
        elif name == "permute":
            src = ins[0]
            dims = node.attrs["dims"]
            n = len(dims)
            swap_last = n >= 2 and dims == tuple(range(n - 2)) + (n - 1, n - 2)
            if dims == tuple(range(len(dims))):
                replacement = src
            elif swap_last and src.node is not None and src.node.op.name == "matmul" \
                    and all(len(v.shape) == n for v in src.node.inputs) and _single_use(graph, src):
                # (A @ B)^T = B^T @ A^T: the transposed product is computed contiguous directly
                a, b = src.node.inputs
                node.op, node.attrs = src.node.op, {}
                node.inputs = [_transposed(graph, b, node), _transposed(graph, a, node)]
            elif src.node is not None and src.node.op.name == "permute":
                inner = src.node.attrs["dims"]
                combined = tuple(inner[d] for d in dims)
                node.inputs = [src.node.inputs[0]]
                node.attrs = {"dims": combined}
                if combined == tuple(range(len(combined))):
                    replacement = node.inputs[0]
        elif node.op.simplify is not None:
            node.op.simplify(node, graph)
        if replacement is not None:
            mapping[node.output.id] = replacement
    _replace_uses(graph, mapping)
    return dce(graph)


def _uses(graph):
    count = {}
    for node in graph.nodes:
        for v in node.inputs:
            count[v.id] = count.get(v.id, 0) + 1
    for v in graph.roots():
        count[v.id] = count.get(v.id, 0) + 2  # a root is never absorbed
    return count


def _tile_the_buffer(shape, terms, max_elements=1 << 26):
    """Whether the slices of ``terms`` (all basic: slices and ints, no index arrays) cover a
    buffer of ``shape`` once each, as the q, k and v parts of a fused qkv projection's gradient
    do; then the buffer can be written instead of zero-filled and added to."""
    from ..ops.indexing import _is_basic

    if not all(_is_basic(template) for _, template, _ in terms) or int(np.prod(shape)) > max_elements:
        return False
    written = np.zeros(shape, np.int8)
    for _, template, _ in terms:
        written[template] += 1
    return bool((written == 1).all())


def scatter_sums(graph):
    """A sum of several ``index_put`` results (how the gradients of many slices of one tensor
    add up, e.g. an RNN's per-step slices) becomes one buffer with each slice added in place,
    instead of one full-size array per slice."""
    from ..ops.helpers import add_at
    from ..ops.indexing import _fill

    uses = _uses(graph)
    by_output = {n.output.id: n for n in graph.nodes if not hasattr(n, "outputs")}

    def absorbable(v, shape):
        n = by_output.get(v.id)
        return n is not None and n.op.name == "add" and uses.get(v.id, 0) == 1 and v.shape == shape

    replaced = {}
    for node in graph.nodes:
        if getattr(node.op, "name", None) != "add" or node.output.id in replaced:
            continue
        shape, dtype = node.output.shape, node.output.dtype
        leaves, stack, inner = [], list(node.inputs), []
        while stack:
            v = stack.pop()
            if absorbable(v, shape):
                inner.append(by_output[v.id])
                stack.extend(by_output[v.id].inputs)
            else:
                leaves.append(v)
        if any(v.shape != shape or v.dtype != dtype for v in leaves):
            continue
        scatters = [v for v in leaves if v.id in by_output and by_output[v.id].op.name == "index_put"
                    and uses.get(v.id, 0) == 1]
        if len(scatters) < 2:
            continue
        dense = [v for v in leaves if v not in scatters]
        terms, inputs = [], list(dense)
        for v in scatters:
            ip = by_output[v.id]
            terms.append((len(ip.inputs) - 1, ip.attrs["template"], ip.attrs["accumulate"]))
            inputs.extend(ip.inputs)
        n_dense = len(dense)
        tiles = not n_dense and _tile_the_buffer(shape, terms)

        def run(*arrays, n_dense=n_dense, terms=terms, shape=shape, dtype=dtype, tiles=tiles):
            if tiles:  # each element is written exactly once: no zero fill, no read-add-write
                buf = np.empty(shape, dtype)
                for k, (_, template, _) in enumerate(terms):
                    buf[template] = arrays[k]
                return (buf,)
            if n_dense:
                buf = np.array(arrays[0], dtype=dtype, copy=True)
                for a in arrays[1:n_dense]:
                    buf += a
            else:
                buf = np.zeros(shape, dtype)
            k = n_dense
            for n_idx, template, accumulate in terms:
                values, idx = arrays[k], arrays[k + 1:k + 1 + n_idx]
                k += 1 + n_idx
                index = _fill(template, idx)
                if accumulate:
                    add_at(buf, index, values)
                else:
                    buf[index] += values
            return (buf,)

        replaced[node.output.id] = KernelNode(f"scatter_sum[{len(scatters)} slices]", inputs, [node.output], run)
    if replaced:
        graph.nodes = [replaced.get(n.output.id, n) if not hasattr(n, "outputs") else n for n in graph.nodes]
        graph = dce(graph)
    return graph


PIPELINE = [("dce", dce), ("fold", fold), ("simplify", simplify), ("cse", cse), ("dce", dce),
            ("scatter_sums", scatter_sums)]


def optimize(graph, debug=False, fuse=True):
    """Run the pass pipeline (and elementwise fusion into numba kernels when ``fuse``)."""
    pipeline = list(PIPELINE)
    if fuse:
        from .convolution import lower_conv_backward, lower_conv_relu, lower_pooled_weight_grad
        from .fusion import fuse_elementwise
        from .matvec import lower_matvec
        from .rowwise import lower_rowwise
        from .tables import lower_table_products

        pipeline += [("tables", lower_table_products), ("cse", cse), ("dce", dce),
                     ("pooled_weight_grad", lower_pooled_weight_grad), ("conv_relu", lower_conv_relu),
                     ("conv_backward", lower_conv_backward),
                     ("fuse", fuse_elementwise), ("matvec", lower_matvec), ("rowwise", lower_rowwise),
                     ("dce", dce)]
    for name, p in pipeline:
        before = len(graph.nodes)
        graph = p(graph)
        if debug:
            print(f"--- after {name}: {before} -> {len(graph.nodes)} nodes")
    return graph
