"""Tracing: running a Python function on symbolic tensors to record a graph.

While a ``Tracer`` is active, ``registry.apply`` (the one gateway of every op) records a node
instead of computing: tensor data is a ``Sym`` holding only shape and dtype. Autograd works
unchanged on top (its rules are ember ops), so ``loss.backward()`` and the optimizer update are
traced like the forward pass. Arrays that already existed (parameters, buffers, optimizer
state) are *captured* by reference and read at every run; in-place updates of them become
graph *writes*. Reading a value in Python (``.item()``, ``if x.sum() > 0``) raises a
``TraceError`` naming the line, instead of silently baking one outcome into the graph.
"""

from __future__ import annotations

import os
import threading
import traceback

import numpy as np

from ..errors import OpError
from .ir import Graph


def _another_array(holders):
    """The data guard's reading: None while every captured tensor holds the array it held when
    traced (a plain loop: checked at every call, where a generator costs ~0.3 us more)."""
    for t, d in holders:
        if t.data is not d:
            return f"a tensor of shape {t.shape} holds another array"
    return None


class _ActiveTracer(threading.local):
    """The thread's active tracer, or None; read by registry.apply and the engine as
    ``ACTIVE[0]`` (``ACTIVE.value`` on hot paths). Per thread, so a DataLoader worker thread's
    ops never land in the graph the main thread is tracing."""

    value = None

    def __getitem__(self, i):
        return self.value

    def __setitem__(self, i, tracer):
        self.value = tracer


ACTIVE = _ActiveTracer()

_EMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: frames in these packages are never "the user's line" (e.g. NumPy's printing code)
_LIBRARY_DIRS = (_EMBER_DIR, os.path.dirname(np.__file__))


class TraceError(OpError):
    """A traced function needed a tensor's value in Python."""


def _user_frame():
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_LIBRARY_DIRS):
            return f"{frame.filename}:{frame.lineno}: {frame.line}"
    return "<unknown>"


def value_error(what):
    return TraceError(
        f"em.jit: {what} needs a tensor's value, which is not known while tracing "
        f"(at {_user_frame()}). Python control flow on tensor values cannot be compiled: use "
        "em.where(cond, a, b) for data-dependent choices, or move this part out of the jitted "
        "function.")


class Sym:
    """Stands in for an ndarray while tracing: shape and dtype, and the graph value it is."""

    __slots__ = ("shape", "dtype", "value")
    __array_priority__ = 1000

    def __init__(self, value):
        self.shape, self.dtype, self.value = value.shape, value.dtype, value

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self):
        return self.dtype.itemsize

    def __repr__(self):
        return f"Sym({self.dtype}{list(self.shape)})"

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def _value_needed(self, *args, **kwargs):
        raise value_error("this operation")

    item = tolist = tobytes = copy = astype = reshape = __array__ = _value_needed
    __bool__ = __float__ = __int__ = __index__ = __iter__ = __getitem__ = _value_needed
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = __add__ = __mul__ = _value_needed
    __hash__ = object.__hash__

    def __getattr__(self, name):
        raise value_error(f"reading .{name} of a traced array")


def is_sym(a) -> bool:
    return type(a) is Sym


class Tracer:
    def __init__(self):
        self.graph = Graph()
        self.captured: dict = {}      # id(array) -> (array, Value)
        self.rebound: list = []       # (tensor, original data) restored after tracing
        self.origin: dict = {}        # id(tensor) -> the outside array it stood for
        self.writes: dict = {}        # id(array) -> (array, latest value)
        self.grad_set: dict = {}      # id(tensor) -> (tensor, grad before tracing)
        self.guards: dict = {}        # key -> (description, reader, value at trace time)
        self.scopes: list = []        # module paths, innermost last
        self.module_names: dict = {}  # id(module) -> its name in the traced model
        self.holders: dict = {}       # id(tensor) -> (tensor, the array it held when captured)

    # ---- values ---------------------------------------------------------------------------
    def value_of(self, t):
        data = t.data
        if type(data) is Sym:
            return data.value
        if not isinstance(data, np.ndarray):
            raise TypeError(f"em.jit: unsupported tensor data {type(data).__name__}")
        # the graph reads this array at every run: if the tensor is given another array later
        # (``p.data = ...``), the graph is stale and must be traced again (one guard checks all)
        if id(t) not in self.holders:
            self.holders[id(t)] = (t, data)
            self.guard(("data",), "the arrays held by captured tensors (parameters, buffers, state)",
                       lambda holders=self.holders.values(): _another_array(holders))
        hit = self.captured.get(id(data))
        if hit is None:
            v = self.graph.new_value(data.shape, data.dtype, "capture", ref=data)
            self.graph.captures.append(v)
            self.captured[id(data)] = hit = (data, v)
        return hit[1]

    def literal(self, array):
        """A constant embedded in the graph (scalars made by ember's own code). Every constant
        gets its own value (CSE merges equal ones later), so graphs traced at different batch
        sizes number their values alike even when constants coincide."""
        a = np.asarray(array)
        return self.graph.new_value(a.shape, a.dtype, "literal", literal=a)

    def scalar(self, reader, dtype=np.float32):
        """A 0-d value read from Python at every run by calling ``reader()``."""
        v = self.graph.new_value((), dtype, "scalar", ref=reader)
        self.graph.scalars.append(v)
        return v

    # ---- ops ----------------------------------------------------------------------------------
    def record(self, op, inputs, attrs):
        from ..ops.registry import Meta

        if op.infer is None:
            raise TraceError(f"em.jit: primitive {op.name} has no shape rule and cannot be traced")
        shape, dtype = op.infer(*[Meta(t.data.shape, t.data.dtype) for t in inputs], **attrs)
        node = self.graph.add_node(op, [self.value_of(t) for t in inputs], attrs, shape, dtype)
        node.scope = self.scopes[-1] if self.scopes else ""
        return Sym(node.output)

    def enter_module(self, module):
        """Called by Module.__call__: nodes made inside get the module's path as their scope."""
        name = self.module_names.get(id(module))
        if name is None:
            name = type(module).__name__
        self.scopes.append(name)

    def exit_module(self):
        self.scopes.pop()

    # ---- state updates -----------------------------------------------------------------------
    def write(self, tensor, result):
        """``tensor`` now holds ``result`` (a traced in-place update). Updates of outside arrays
        become graph writes; later reads in the trace see the new value."""
        data = tensor.data
        if type(data) is Sym and tensor._base is not None:
            # eager mode writes through the view into its base; the graph cannot express that
            raise TraceError(f"em.jit: an in-place update of a slice or view (shape {tensor.shape}) cannot be "
                             f"compiled (at {_user_frame()}); compute the result out of place (em.where, em.cat), "
                             "or do it outside the jitted function")
        if type(data) is not Sym:
            if data.base is not None:
                raise TraceError(f"em.jit: an in-place update of a slice or view of an outside tensor "
                                 f"(shape {data.shape}) cannot be compiled (at {_user_frame()}); update the "
                                 "whole tensor, or do it outside the jitted function")
            self.origin[id(tensor)] = data
            self.rebound.append((tensor, data))
        value = self.value_of(result)
        target = self.origin.get(id(tensor))
        if target is not None:
            self.writes[id(target)] = (target, value)
        tensor.data = Sym(value)

    def set_grad(self, tensor, grad):
        if id(tensor) not in self.grad_set:
            self.grad_set[id(tensor)] = (tensor, tensor.grad)
        tensor.grad = grad

    def current_grad(self, tensor):
        """``tensor.grad`` as backward sees it. If the trace has not set it yet, the graph depends
        on whether it existed at entry (assign vs accumulate): that becomes a guard."""
        if id(tensor) not in self.grad_set:
            self.guard(("grad", id(tensor)), f"whether a tensor of shape {tensor.shape} has a .grad",
                       lambda t=tensor: t.grad is None)
        return tensor.grad

    def read_grad(self, tensor):
        """An existing concrete ``.grad`` read at run time (gradient accumulation)."""
        from ..tensor import Tensor

        g = tensor.grad
        if type(g.data) is Sym:
            return g
        v = self.graph.new_value(g.data.shape, g.data.dtype, "grad_in", ref=tensor)
        self.graph.grad_reads.append((tensor, v))
        return Tensor._make(Sym(v))

    def guard(self, key, description, reader):
        """Python state the trace depends on: a change at call time means retracing."""
        if key not in self.guards:
            self.guards[key] = (description, reader, reader())

    # ---- finishing ---------------------------------------------------------------------------
    def finish(self):
        """Record .grad effects and put every outside tensor back as it was."""
        for tensor, before in self.grad_set.values():
            g = tensor.grad
            self.graph.grads.append((tensor, None if g is None else self.value_of(g),
                                     before is not None))
        self.restore()
        self.graph.writes = list(self.writes.values())

    def restore(self):
        """Put every outside tensor's data and ``.grad`` back as it was before tracing (also
        when tracing failed, so a TraceError leaves parameters and state usable)."""
        for tensor, before in self.grad_set.values():
            tensor.grad = before
        for tensor, original in reversed(self.rebound):
            tensor.data = original
        self.grad_set, self.rebound = {}, []


class tracing:
    """Context manager activating a tracer."""

    def __init__(self, tracer):
        self.tracer = tracer

    def __enter__(self):
        if ACTIVE[0] is not None:
            raise TraceError("em.jit: nested tracing is not supported (a jitted function called another "
                             "jitted function while it was being traced); jit the outer function only")
        ACTIVE[0] = self.tracer
        return self.tracer

    def __exit__(self, exc_type, exc, tb):
        ACTIVE[0] = None
        if exc_type is not None:  # a failed trace must not leave symbolic data behind
            self.tracer.restore()
        return False
