"""Reverse-mode autograd: the graph node, grad mode, and ``backward``.

Every op that involves a tensor requiring grad attaches a ``Node`` to its output. A node
keeps the primitive, its attributes, the values its gradient rule needs, and one *edge* per
input: the input's own node, the input tensor itself when it is a leaf, or None when that
input needs no gradient. Edges point to nodes rather than tensors so that an in-place op can
give a tensor a new node without changing the graph that earlier ops recorded.

``backward`` sorts the reachable nodes topologically, then runs each node's gradient rules
once with the summed gradient of its output. The rules are ember ops: with
``create_graph=True`` they are recorded too, which gives higher derivatives.
"""

from __future__ import annotations

import functools
import threading
import weakref

import numpy as np

from ..compiler.trace import ACTIVE as TRACING
from ..errors import GradError


class _GradMode(threading.local):
    """Whether ops record the graph; per thread, as in PyTorch, so a server thread's
    ``no_grad()`` never switches recording off for another thread."""

    enabled = True


GradMode = _GradMode()


class _GradModeContext:
    _mode = True

    def __enter__(self):
        self._prev = GradMode.enabled
        GradMode.enabled = self._mode
        return self

    def __exit__(self, *exc):
        GradMode.enabled = self._prev
        return False

    def __call__(self, fn):
        mode = self._mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = GradMode.enabled
            GradMode.enabled = mode
            try:
                return fn(*args, **kwargs)
            finally:
                GradMode.enabled = prev

        return wrapper


class no_grad(_GradModeContext):
    """Context manager and decorator that disables gradient recording."""

    _mode = False


class enable_grad(_GradModeContext):
    """Context manager and decorator that enables gradient recording."""

    _mode = True


class set_grad_enabled(_GradModeContext):
    """``with em.set_grad_enabled(False): ...`` or ``em.set_grad_enabled(True)`` as a call."""

    def __init__(self, mode: bool):
        self._prev = GradMode.enabled
        self._mode = bool(mode)
        GradMode.enabled = self._mode


def is_grad_enabled() -> bool:
    return GradMode.enabled


class Node:
    """One recorded op application (PyTorch's ``grad_fn``)."""

    __slots__ = ("op", "attrs", "edges", "saved", "versions", "out_data", "freed", "retained",
                 "__weakref__")

    def __init__(self, op, attrs, edges, saved, versions):
        self.op = op
        self.attrs = attrs
        self.edges = edges
        self.saved = saved
        self.versions = versions
        self.out_data = None
        self.freed = False
        self.retained = None

    def name(self) -> str:
        return "".join(p.capitalize() for p in self.op.name.split("_")) + "Backward"

    def __repr__(self):
        return f"<{self.name()}>"

    @property
    def next_functions(self):
        return tuple(e if isinstance(e, Node) else ("AccumulateGrad", e) if e is not None else None
                     for e in self.edges)


# ---- post-accumulate-grad hooks ---------------------------------------------------------------
# id(leaf) -> (weak reference to the leaf, [hooks]). Empty unless someone registered a hook, and
# backward checks it once per call, so the engine pays nothing for hooks nobody uses.
POST_ACCUMULATE_HOOKS: dict = {}


class RemovableHandle:
    """What ``register_post_accumulate_grad_hook`` returns; ``.remove()`` unregisters the hook."""

    __slots__ = ("key", "hook")

    def __init__(self, key, hook):
        self.key, self.hook = key, hook

    def remove(self):
        entry = POST_ACCUMULATE_HOOKS.get(self.key)
        if entry is not None and self.hook in entry[1]:
            entry[1].remove(self.hook)
            if not entry[1]:
                del POST_ACCUMULATE_HOOKS[self.key]


def register_post_accumulate_grad_hook(leaf, hook):
    """Call ``hook(leaf)`` each time backward has finished accumulating ``leaf.grad`` (as soon as
    the last gradient contribution for that leaf is computed, before the rest of backward)."""
    key = id(leaf)
    entry = POST_ACCUMULATE_HOOKS.get(key)
    if entry is None or entry[0]() is not leaf:
        # forget the entry when the leaf dies, unless a new leaf took over its id (the dict is
        # bound as a default: at interpreter exit the module global may already be None)
        def forget(ref, key=key, hooks=POST_ACCUMULATE_HOOKS):
            if hooks.get(key, (None,))[0] is ref:
                del hooks[key]

        entry = (weakref.ref(leaf, forget), [])
        POST_ACCUMULATE_HOOKS[key] = entry
    entry[1].append(hook)
    return RemovableHandle(key, hook)


def _run_post_accumulate_hooks(leaf):
    entry = POST_ACCUMULATE_HOOKS.get(id(leaf))
    if entry is not None and entry[0]() is leaf:
        for hook in tuple(entry[1]):
            hook(leaf)


def _pending_hooked_leaves(order):
    """Hooked leaf id -> how many edges of the nodes in ``order`` still have to deliver to it."""
    pending = {}
    for node in order:
        for e in node.edges:
            if e is not None and type(e) is not Node and id(e) in POST_ACCUMULATE_HOOKS:
                pending[id(e)] = pending.get(id(e), 0) + 1
    return pending


def _finish_ready_leaves(node, pending, leaf_grads, given):
    """After ``node`` ran: the hooked leaves that got their last contribution get ``.grad`` and
    their hooks now, so that e.g. gradient communication overlaps the rest of backward."""
    for e in node.edges:
        if e is None or type(e) is Node:
            continue
        left = pending.get(id(e))
        if left is None:
            continue
        if left > 1:
            pending[id(e)] = left - 1
            continue
        del pending[id(e)]
        g = leaf_grads.pop(e, None)
        if g is not None:
            if type(g) is _Scatter:
                g = g.materialize()
            e.grad = _detached(g, e.grad, given)
            _run_post_accumulate_hooks(e)


def _toposort(roots, leaves_early=False):
    """Nodes reachable from ``roots``, every node before the nodes it feeds from.

    The order is a depth-first one: the input explored last comes right after its consumer.
    With ``leaves_early`` (when post-accumulate hooks wait for parameter gradients) the inputs
    that only read leaves (``W.t()`` in a linear layer) are explored last, so each layer's
    weight gradient is finished right after that layer's backward instead of at the very end.
    """
    order, seen = [], set()
    stack = [(r, False) for r in roots]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        if leaves_early:
            deep = []
            for e in node.edges:
                if type(e) is Node and e not in seen:
                    if any(type(x) is Node for x in e.edges):
                        deep.append((e, False))
                    else:
                        stack.append((e, False))
            stack.extend(deep)
            continue
        for e in node.edges:
            if type(e) is Node and e not in seen:
                stack.append((e, False))
    order.reverse()
    return order


def _check_saved(node):
    if node.freed:
        raise GradError(
            f"{node.name()}: trying to backward through the graph a second time (its saved "
            "values were freed after the first backward). Pass retain_graph=True to the first "
            "backward() call if you need to backward twice.")
    for version_box, seen in node.versions:
        if version_box[0] != seen:
            raise GradError(
                f"{node.name()}: a tensor this op saved for the gradient was modified in place "
                f"after the forward pass (version {version_box[0]}, expected {seen}). Use an "
                "out-of-place op (x = x + y instead of x += y) or .clone() the tensor first.")


def _node_grads(node, g, create_graph):
    """Gradients for each input of ``node`` given its output gradient ``g``."""
    from ..ops.registry import Meta
    from ..tensor import Tensor

    op = node.op
    _check_saved(node)
    out = None
    if op.uses_out:
        out = Tensor._make(node.out_data)
        if create_graph:
            out._node, out.requires_grad = node, True
    needs = [e is not None for e in node.edges]
    saved = node.saved
    if op.scatter_grad is not None and not create_graph and TRACING[0] is None:
        index, values, accumulate = op.scatter_grad(g, *saved, **node.attrs)
        return [_Scatter(index, values, saved[0].shape, accumulate)] + [None] * (len(saved) - 1)
    if op.vjp is not None:
        grads = op.vjp(g, out, needs, *saved, **node.attrs)
    else:
        grads = [rule(g, out, *saved, **node.attrs) if need else None
                 for rule, need in zip(op.grads, needs)]
    fixed = []
    for gi, x in zip(grads, saved):
        if gi is None:
            fixed.append(None)
            continue
        if gi.data.shape != x.shape:
            if not op.broadcasts:
                raise GradError(f"internal: gradient rule of {op.name} returned shape "
                                f"{gi.data.shape} for an input of shape {x.shape}")
            gi = gi.sum_to_shape(x.shape)
        xdt = x.data.dtype if type(x) is not Meta else x.np_dtype
        if gi.data.dtype != xdt and xdt.kind == "f":
            gi = gi.astype(xdt)
        fixed.append(gi)
    return fixed


def run_backward(roots, root_grads, retain_graph=False, create_graph=False, inputs=None,
                 accumulate=True, allow_unused=True):
    """Propagate ``root_grads`` from ``roots`` (tensors) back through the graph.

    With ``inputs`` the gradients for those tensors are returned (``em.autograd.grad``);
    with ``accumulate`` they are also summed into leaves' ``.grad`` (``Tensor.backward``).
    """
    from ..ops.registry import Meta

    grads: dict = {}
    leaf_grads: dict = {}
    root_nodes = []
    for t, g in zip(roots, root_grads):
        if t._node is None:  # backward() directly on a leaf
            leaf_grads[t] = _add(leaf_grads.get(t), g)
            continue
        grads[t._node] = _add(grads.get(t._node), g)
        root_nodes.append(t._node)

    wanted_nodes = {}
    if inputs is not None:
        for t in inputs:
            if t._node is not None:
                wanted_nodes[t._node] = t
    captured: dict = {}

    pending = given = None
    if POST_ACCUMULATE_HOOKS and accumulate and inputs is None and not create_graph and TRACING[0] is None:
        order = _toposort(root_nodes, leaves_early=True)
        pending = _pending_hooked_leaves(order)
        given = {id(g.data) for g in root_grads}
    else:
        order = _toposort(root_nodes)
    prev = GradMode.enabled
    GradMode.enabled = bool(create_graph)
    try:
        owned = {}  # gradient buffers this backward allocated for one key: safe to update in place
        for node in order:
            g = grads.pop(node, None)
            if g is None:
                continue
            if type(g) is _Scatter:
                g = g.materialize()
            if node in wanted_nodes:
                captured[wanted_nodes[node]] = g
            if node.retained is not None:
                held = node.retained()
                if held is not None:
                    held.grad = g if create_graph or TRACING[0] is not None else _detached(g, held.grad)
            for edge, gi in zip(node.edges, _node_grads(node, g, create_graph)):
                if gi is None:
                    continue
                _accumulate(grads if type(edge) is Node else leaf_grads, edge, gi, owned)
            if pending:
                _finish_ready_leaves(node, pending, leaf_grads, given)
            if not retain_graph and node.versions:  # it held values: free them
                node.freed = True
                node.saved = tuple(s if type(s) is Meta else None for s in node.saved)
                node.out_data = None
    finally:
        GradMode.enabled = prev
    for leaf, g in leaf_grads.items():
        if type(g) is _Scatter:
            leaf_grads[leaf] = g.materialize()

    if inputs is not None:
        result = []
        for t in inputs:
            g = captured.get(t) if t._node is not None else leaf_grads.get(t)
            if g is None and not allow_unused:
                raise GradError("one of the differentiated tensors was not used to compute the "
                                "output; pass allow_unused=True to get None for it")
            result.append(g)
        return result
    if accumulate:
        tracer = TRACING[0]
        if given is None and tracer is None:
            given = {id(g.data) for g in root_grads}
        for leaf, g in leaf_grads.items():
            if tracer is not None:  # inside em.jit: .grad updates become graph effects
                tracer.set_grad(leaf, g if tracer.current_grad(leaf) is None else tracer.read_grad(leaf) + g)
            elif create_graph:
                leaf.grad = g if leaf.grad is None else leaf.grad + g
            else:
                leaf.grad = _detached(g, leaf.grad, given)
        if POST_ACCUMULATE_HOOKS and tracer is None:
            for leaf in leaf_grads:
                _run_post_accumulate_hooks(leaf)
    return None


def zero_grads(params, set_to_none=True):
    """Clear ``.grad`` of each tensor (None, or zeros of the same shape); traced in em.jit."""
    from ..tensor import Tensor

    tracer = TRACING[0]
    for p in params:
        if p.grad is None:
            if tracer is not None:  # the compiled step clears it whatever it is at run time
                tracer.set_grad(p, None)
            continue
        if set_to_none:
            g = None
        elif tracer is not None:
            from ..compiler.trace import Sym

            g = Tensor._make(Sym(tracer.literal(np.zeros(p.grad.shape, p.grad.data.dtype))))
        else:
            g = Tensor._make(np.zeros_like(p.grad.data))
        if tracer is not None:
            tracer.set_grad(p, g)
        else:
            p.grad = g


def _add(acc, g):
    return g if acc is None else acc + g


class _Scatter:
    """A gradient that is zeros(shape) with ``values`` put (or added) at ``index``."""

    __slots__ = ("index", "values", "shape", "accumulate")

    def __init__(self, index, values, shape, accumulate):
        self.index, self.values, self.shape, self.accumulate = index, values, shape, accumulate

    def add_into(self, buf):
        if self.accumulate:
            from ..ops.helpers import add_at

            add_at(buf, self.index, self.values)
        else:
            buf[self.index] += self.values

    def materialize(self):
        from ..tensor import Tensor

        z = np.zeros(self.shape, dtype=self.values.dtype)
        if self.accumulate:
            from ..ops.helpers import add_at

            add_at(z, self.index, self.values)
        else:
            z[self.index] = self.values
        return Tensor._make(z)


def _own(owned, key, data):
    owned[id(data)] = (key, weakref.ref(data))  # (a weak reference: ids of freed arrays are reused)


def _accumulate(table, key, gi, owned):
    """Add gradient ``gi`` into ``table[key]``, in place when the buffer is ours (only when
    backward is not recorded; with create_graph the sum stays a graph op)."""
    acc = table.get(key)
    if acc is None:
        table[key] = gi
        return
    if type(acc) is _Scatter:
        if type(gi) is _Scatter:
            acc = acc.materialize()
            _own(owned, key, acc.data)
        else:
            acc, gi = gi, acc
    if type(gi) is _Scatter or (not GradMode.enabled and TRACING[0] is None and acc.data.flags.writeable):
        # only a buffer allocated for this very key: a gradient rule may hand one tensor to
        # several inputs (add gives g to both), so a buffer can be another key's gradient too
        hit = owned.get(id(acc.data))
        if hit is None or hit[0] is not key or hit[1]() is not acc.data:
            from ..tensor import Tensor

            acc = Tensor._make(acc.data.copy())
            _own(owned, key, acc.data)
        if type(gi) is _Scatter:
            gi.add_into(acc.data)
        else:
            acc.data += gi.data
        table[key] = acc
        return
    table[key] = acc + gi


def _detached(g, existing, given=None):
    """g (plus an existing .grad) as a fresh, graph-free tensor that owns its memory, so that
    no two leaves share a gradient buffer and none shares the caller's gradient."""
    from ..tensor import Tensor

    data = g.data
    if existing is not None:
        return Tensor._make(existing.data + data)
    if given is None:
        given = set()
    owner = data
    while owner.base is not None:  # a view needs no copy unless another gradient uses its buffer
        owner = owner.base
    # PyTorch's gradient layout contract: .grad is laid out like the (C-contiguous) parameter. A
    # transposed weight gradient (x.T @ g).T costs one copy here, where left strided it made
    # every optimizer pass over it several times slower
    if not data.flags.writeable or id(owner) in given or not data.flags.c_contiguous:
        data = data.copy()
        owner = data
    given.add(id(owner))
    return Tensor._make(data)
