"""``em.jit``: trace a function once per input signature, optimize the graph, run it compiled.

The cache key is the signature of the tensor arguments (shape, dtype, requires_grad), the
non-tensor arguments and grad mode. After tracing, *guards* record the Python state the graph
depends on (each module's train/eval mode, optimizer hyperparameters, which parameters had a
``.grad``); a call whose guards fail retraces and, with debug logging, says why.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

import numpy as np

from ..autograd.engine import GradMode
from ..autograd.functional import _flatten
from ..tensor import Tensor
from . import passes
from .codegen import build_runner
from .generalize import batch_template
from .ir import Value
from .trace import Sym, TraceError, Tracer, tracing

log = logging.getLogger("ember.jit")


def _debug_enabled(flag):
    return flag or os.environ.get("EMBER_JIT_DEBUG", "") not in ("", "0")


def _static_key(obj):
    """A hashable description of the non-tensor parts of the arguments."""
    if isinstance(obj, Tensor):
        return ("T",)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_static_key(o) for o in obj)
    if isinstance(obj, dict):
        return ("dict",) + tuple((k, _static_key(v)) for k, v in sorted(obj.items()))
    try:
        hash(obj)
        return ("V", obj)
    except TypeError:
        return ("id", id(obj))


_FLAT_STATIC: dict = {}  # number of arguments -> _static_key of that many tensors


def _describe_change(description, before, now):
    """``AdamW.param_groups[0]['weight_decay'] changed from 0.01 to 0.1`` for guards over
    (key, value) pairs; the whole values otherwise."""
    def pairs(v):
        if isinstance(v, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in v):
            return dict(v)
        return None

    a, b = pairs(before), pairs(now)
    if a is not None and b is not None and a.keys() == b.keys():
        return "; ".join(f"{description}[{k!r}] changed from {a[k]!r} to {b[k]!r}" for k in a if a[k] != b[k])
    return f"{description} changed from {before!r} to {now!r}"


def _guards_check(guards):
    """``holds()``: True while every guard reads its expected value. One generated expression:
    looping over the guards costs ~0.3 us each, and a model has one per module."""
    ns, terms = {}, []
    for i, (_, reader, expected) in enumerate(guards.values()):
        ns[f"r{i}"], ns[f"e{i}"] = reader, expected
        terms.append(f"not (r{i}() != e{i})")  # failed_guard's very test
    source = ("def holds():\n    try:\n        return " + (" and ".join(terms) or "True") +
              "\n    except Exception:\n        return False\n")
    exec(compile(source, "<ember.jit guards>", "exec"), ns)
    return ns["holds"]


class Compiled:
    """One traced and compiled specialisation of a function."""

    def __init__(self, graph, guards, out_tree, input_grads, debug):
        self.graph = graph
        self.guards = guards
        self.guards_hold = _guards_check(guards)
        self.out_tree = out_tree
        self.input_grads = input_grads      # argument positions whose .grad the graph sets
        self.runner = build_runner(graph, debug)
        self.calls = 0
        # the usual result, one new array and no .grad to set: _run wraps it without the
        # general tree rebuild
        self.returns_one_array = not graph.grads and len(graph.outputs) == 1 and \
            hasattr(graph.outputs[0], "kind") and out_tree([0]) == 0
        # the graph's intermediate buffers are reused across runs, so one run at a time: two
        # threads running it at once (thread DataLoader workers, a server's pool) would share them
        self._running = threading.Lock()
        self.one_size = False  # a dynamic-batch first step traced for its own batch size only

    def failed_guard(self):
        if self.guards_hold():
            return None
        for description, reader, expected in self.guards.values():
            try:
                now = reader()
            except Exception:  # noqa: BLE001 - a guard that cannot be read has failed
                return f"{description} can no longer be read"
            if now != expected:
                return _describe_change(description, expected, now)
        return None

    def __call__(self, tensors):
        with self._running:
            self.calls += 1
            return self.runner([t.data for t in tensors])


class JitFunction:
    """A function compiled by ``em.jit``. Call it like the original."""

    #: graphs kept per input signature for different guarded states (oldest dropped first)
    MAX_SPECIALISATIONS = 8

    def __init__(self, fn, dynamic_batch=False, debug=False):
        functools.update_wrapper(self, fn, updated=())
        self.fn = fn
        self.dynamic_batch = dynamic_batch
        self.debug = debug
        self.module_names = {}  # id(module) -> name: scopes in the printed graph and in ONNX names
        self.cache: dict = {}
        self._per_batch = set()  # dynamic-batch signatures that need one graph per batch size
        self.traces = 0
        self.compile_seconds = []
        self._compiling = threading.Lock()
        self._last = None  # (tensor signature, grad mode, cache entry, graph) of the last call

    # ---- keys ----------------------------------------------------------------------------
    def _signature(self, args, kwargs):
        if not kwargs and all(type(a) is Tensor for a in args):
            # the common call, f(x) or f(x, y): the general walk below costs ~20 us, a
            # batch-1 inference's whole budget; this builds the very same key
            tensors = args
            static = _FLAT_STATIC.get(len(args))
            if static is None:
                static = _FLAT_STATIC[len(args)] = _static_key((args, kwargs))
        else:
            tensors, _ = _flatten((args, kwargs))
            static = _static_key((args, kwargs))
        batch = None
        if self.dynamic_batch and tensors and tensors[0].ndim:
            batch = tensors[0].shape[0]
        shapes = tuple((-1,) + t.data.shape[1:] if batch is not None and t.ndim and t.shape[0] == batch
                       else t.data.shape for t in tensors)
        sig = tuple((shape, t.data.dtype, t.requires_grad) for shape, t in zip(shapes, tensors))
        return (sig, static, GradMode.enabled), tensors, batch

    def __call__(self, *args, **kwargs):
        if not kwargs:
            compiled = self._same_as_last(args)
            if compiled is not None:
                return self._run(compiled, args, args, kwargs)
        base, tensors, batch = self._signature(args, kwargs)
        entry, _ = self._lookup(base, batch)
        traced = False
        if entry is None:
            with self._compiling:  # threads making the same first call trace it once
                entry, reason = self._lookup(base, batch)
                if entry is None:
                    entry, traced = self._compile_entry(base, batch, args, kwargs, reason), True
        # numba compiles the kernels on their first call (or loads them from its disk cache):
        # that is compile time too, most of it on a cold cache
        t0 = time.perf_counter() if traced else 0.0
        compiled = entry.for_batch(batch) if isinstance(entry, DynamicBatch) else entry
        if tensors is args:  # _signature's flat case (only tensors, no keywords), the fast path's kind
            self._last = (tuple((a.data.shape, a.data.dtype, a.requires_grad) for a in args), GradMode.enabled,
                          entry, compiled)
        result = self._run(compiled, tensors, args, kwargs)
        if not traced:
            return result
        dt = time.perf_counter() - t0
        self.compile_seconds[-1] += dt
        log.debug("em.jit(%s): first run, which compiles or loads the numba kernels, took %.3f s; %.3f s "
                  "compiling in all", self.__name__, dt, self.compile_seconds[-1])
        return result

    def _same_as_last(self, args):
        """The graph the previous call ran if this call's tensors have its shapes, dtypes and
        requires_grad, grad mode is as it was and the guards still hold; else None. At batch 1
        building and hashing the signature key costs ~5 us, a sixth of the whole call."""
        last = self._last
        if last is None or len(args) != len(last[0]) or GradMode.enabled is not last[1]:
            return None
        for a, (shape, dtype, requires_grad) in zip(args, last[0]):
            if type(a) is not Tensor or a.data.shape != shape or a.data.dtype != dtype or \
                    a.requires_grad is not requires_grad:
                return None
        entry, compiled = last[2], last[3]
        if entry.failed_guard() is not None:
            return None
        if compiled is not entry:  # a dynamic-batch template: counted as its own call
            entry.calls += 1
        return compiled

    def _key(self, base, batch):
        per_size = batch is not None and base in self._per_batch  # no batch template: one graph per size
        return (base + (batch,) if per_size else base), per_size

    def _lookup(self, base, batch):
        """(the cached specialisation whose guards hold, None) or (None, why a trace is needed).
        There is one specialisation per state of the guarded Python values (e.g. train and eval
        mode): switching back and forth reuses the graphs traced before."""
        entries = self.cache.get(self._key(base, batch)[0])
        if not entries:
            return None, "a new input signature" if self.cache else "the first call"
        for candidate in entries:
            if candidate.failed_guard() is None:
                return candidate, None
        return None, entries[0].failed_guard()

    def _compile_entry(self, base, batch, args, kwargs, reason):
        key, per_size = self._key(base, batch)
        if key in self.cache:
            log.debug("em.jit(%s): retracing because %s", self.__name__, reason)
        entry = self._compile(args, kwargs, reason, None if per_size else batch)
        if batch is not None and not per_size and not isinstance(entry, DynamicBatch):
            if not entry.one_size:  # else: the next call traces the template (state now exists)
                self._per_batch.add(base)
            key = base + (batch,)
        entries = self.cache.setdefault(key, [])
        entries.insert(0, entry)
        del entries[self.MAX_SPECIALISATIONS:]
        return entry

    def _run(self, compiled, tensors, args, kwargs):
        outputs, grads = compiled(tensors)
        if compiled.returns_one_array and type(outputs[0]) is np.ndarray:
            return Tensor._make(outputs[0])
        for (tensor, _, _), g in zip(compiled.graph.grads, grads):
            target = tensors[tensor] if isinstance(tensor, int) else tensor
            if g is not None:
                g = np.asarray(g)
                if not g.flags.writeable:  # e.g. a broadcast view: .grad must be the caller's to modify
                    g = g.copy()
            target.grad = None if g is None else Tensor._make(g)
        flat = [Tensor._make(np.asarray(o)) if isinstance(o, (np.ndarray, np.generic)) else o for o in outputs]
        return compiled.out_tree(flat)

    # ---- tracing ---------------------------------------------------------------------------
    def trace(self, *args, **kwargs):
        """Trace without compiling: returns (graph, guards, output tree)."""
        tracer = Tracer()
        tracer.module_names = self.module_names
        graph = tracer.graph
        tensors, rebuild = _flatten((args, kwargs))
        sym_tensors = []
        for i, t in enumerate(tensors):
            v = graph.new_value(t.data.shape, t.data.dtype, "input", ref=i)
            graph.inputs.append(v)
            s = Tensor._make(Sym(v))
            s.requires_grad = t.requires_grad
            tracer.origin[id(s)] = ("input", i)
            sym_tensors.append(s)
        sym_args, sym_kwargs = rebuild(sym_tensors)
        with tracing(tracer):
            out = self.fn(*sym_args, **sym_kwargs)
        input_positions = {id(s): i for i, s in enumerate(sym_tensors)}
        tracer.finish()
        out_leaves, out_rebuild = _flatten(out)
        graph.outputs = [tracer.value_of(t) for t in out_leaves]
        # gradients of the arguments themselves are assigned to the caller's tensors
        graph.grads = [(input_positions.get(id(t), t), v, had) for t, v, had in graph.grads]
        return graph, tracer.guards, out_rebuild

    def _compile(self, args, kwargs, reason, batch=None):
        t0 = time.perf_counter()
        graph, guards, out_rebuild = self.trace(*args, **kwargs)
        self.traces += 1
        debug = _debug_enabled(self.debug)
        one_size = False
        if batch is not None and any(reader() != value for _, reader, value in guards.values()):
            # the trace created state (optimizer moments, SGD's first momentum buffer): its graph is
            # right for this call only (and this batch size); the next call sees the state, fails
            # a guard and traces the batch template, whose traces all see the same state
            batch, one_size = None, True
        if batch is not None:
            template = self._batch_template(graph, args, kwargs, batch)
            if template is not None:
                entry = DynamicBatch(template, guards, out_rebuild, debug, batch)
                self.compile_seconds.append(time.perf_counter() - t0)
                log.debug("em.jit(%s): one graph for every batch size (traced at %d and %d) in %.3f s",
                          self.__name__, batch, batch + 1, self.compile_seconds[-1])
                return entry
            log.debug("em.jit(%s): the graph's structure depends on the batch size; compiling one graph "
                      "per batch size instead", self.__name__)
        if debug:
            print(f"em.jit({self.__name__}): tracing because of {reason}\n--- traced graph "
                  f"({len(graph.nodes)} nodes)\n{graph}")
        graph = passes.optimize(graph, debug=debug)
        compiled = Compiled(graph, guards, out_rebuild, None, debug)
        compiled.one_size = one_size
        dt = time.perf_counter() - t0
        self.compile_seconds.append(dt)
        log.debug("em.jit(%s): traced and compiled %d nodes in %.3f s (%s)", self.__name__, len(graph.nodes), dt,
                  reason)
        return compiled

    def _batch_template(self, graph, args, kwargs, batch):
        """Trace again at batch sizes + 1 and + 2 and describe how every shape and size in the
        graph depends on the batch size; None if more than sizes change."""
        tensors, rebuild = _flatten((args, kwargs))
        others = []
        for extra in (1, 2):
            stand_ins = []
            for t in tensors:  # shape-only stand-ins (tracing reads shapes and dtypes, not values)
                shape = (batch + extra,) + t.shape[1:] if t.ndim and t.shape[0] == batch else t.shape
                s = Tensor._make(np.broadcast_to(np.zeros((), t.data.dtype), shape))
                s.requires_grad = t.requires_grad
                stand_ins.append(s)
            a2, k2 = rebuild(stand_ins)
            try:
                others.append(self.trace(*a2, **k2)[0])
            except Exception as exc:  # noqa: BLE001 - any failure means: not batch-generic
                log.debug("em.jit: tracing at batch size %d failed: %s", batch + extra, exc)
                return None
        template = batch_template(graph, others[0], others[1], batch)
        if template is None:
            log.debug("em.jit(%s): not batch-generic: %s", self.__name__, batch_template.last_reason)
        return template

    def graph(self, *args, **kwargs):
        """The optimized graph for these example arguments (printable; ``.to_dot()`` for Graphviz)."""
        graph, _, _ = self.trace(*args, **kwargs)
        return passes.optimize(graph)

    def __get__(self, obj, objtype=None):  # decorating a method
        if obj is None:
            return self
        bound = self.__dict__.setdefault("_bound", {})
        fn = bound.get(id(obj))
        if fn is None:
            fn = bound[id(obj)] = JitFunction(self.fn.__get__(obj, objtype), self.dynamic_batch, self.debug)
        return fn


class DynamicBatch:
    """One traced graph for every batch size: shapes and size attributes are affine functions
    of the batch size; each new size only re-runs the passes and code generation (the fused
    kernels are shared through the kernel cache)."""

    def __init__(self, template, guards, out_tree, debug, batch):
        self.template, self.guards, self.out_tree, self.debug = template, guards, out_tree, debug
        self.guards_hold = _guards_check(guards)
        self.by_size = {}
        self.calls = 0

    failed_guard = Compiled.failed_guard

    def for_batch(self, b):
        compiled = self.by_size.get(b)
        if compiled is None:
            graph = self.template.instantiate(b)
            compiled = self.by_size[b] = Compiled(passes.optimize(graph), self.guards, self.out_tree, None,
                                                  self.debug)
        self.calls += 1
        return compiled


def jit(fn=None, *, dynamic_batch=False, debug=False):
    """Compile ``fn`` (a function of tensors, or an ``nn.Module``) into a graph.

    The first call with a given input signature traces ``fn`` with symbolic tensors (Python
    control flow is resolved then), optimizes the graph and compiles it; later calls with the
    same signature run the compiled graph. ``fn`` may call ``loss.backward()`` and
    ``optimizer.step()``: the whole training step is compiled, parameters and optimizer state
    are updated in place. Use as ``@em.jit`` or ``em.jit(model)``.
    """
    if fn is None:
        return lambda f: jit(f, dynamic_batch=dynamic_batch, debug=debug)
    from ..nn.module import Module

    if isinstance(fn, Module):
        return JitModule(fn, dynamic_batch, debug)
    return JitFunction(fn, dynamic_batch, debug)


class JitModule:
    """``em.jit(model)``: calls run the module's forward compiled; attributes pass through."""

    def __init__(self, module, dynamic_batch=False, debug=False):
        object.__setattr__(self, "module", module)
        forward = JitFunction(module.__call__, dynamic_batch, debug)
        forward.__name__ = type(module).__name__  # em.jit(GPT) in debug messages
        forward.module_names = {id(m): name or type(m).__name__ for name, m in module.named_modules()}
        object.__setattr__(self, "forward", forward)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def graph(self, *args, **kwargs):
        return self.forward.graph(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


__all__ = ["jit", "JitFunction", "TraceError", "Value"]
