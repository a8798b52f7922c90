"""The op registry: every primitive is defined here once and read by every layer.

A ``Primitive`` bundles
  * ``forward(*arrays, **attrs) -> ndarray``   the NumPy kernel used by eager mode,
  * ``grads``: one rule per input, ``rule(g, out, *inputs, **attrs) -> Tensor``, written with
    ember ops so that gradients are themselves differentiable (``create_graph=True``) and
    traceable by the compiler; or ``vjp(g, out, needs, *inputs, **attrs) -> tuple`` for ops
    whose input count varies (``cat``),
  * ``infer(*specs, **attrs) -> (shape, numpy dtype)``  the shape/dtype rule the tracer and
    the error messages use (``specs`` have ``.shape`` and ``.dtype``),
  * ``saves``: which input values the gradient rules need (the rest are dropped after the
    forward pass and passed to the rules as ``Meta`` with only shape and dtype),
  * ``onnx``: the ONNX mapping, filled in by ``ember.onnx``,
  * ``simplify``: an optional op-specific graph rewrite for the compiler's simplify pass.

``apply`` is the single gateway through which every op runs, so grad recording, the
compiler's tracer and error reporting each live in exactly one place.
"""

from __future__ import annotations

import numpy as np

from ..autograd.engine import GradMode, Node
from ..compiler.trace import ACTIVE as TRACING
from ..errors import OpError, ShapeError

PRIMITIVES: dict[str, Primitive] = {}


class Meta:
    """Shape and dtype of an input whose values the gradient does not need; ``transposed``: it
    was a transposed matrix (F-ordered, like Linear's ``weight.T``), so a gradient rule can
    produce its gradient in that layout (see ``linalg._grad_b``)."""

    __slots__ = ("shape", "np_dtype", "transposed")

    def __init__(self, shape, np_dtype, transposed=False):
        self.shape = shape
        self.np_dtype = np_dtype
        self.transposed = transposed

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def dtype(self):
        from ..dtypes import from_numpy_dtype

        return from_numpy_dtype(self.np_dtype)


class Primitive:
    __slots__ = ("name", "forward", "grads", "vjp", "infer", "saves", "uses_out", "broadcasts",
                 "is_view", "onnx", "differentiable", "scatter_grad", "scalar", "scalar_dtypes", "simplify")

    def __init__(self, name, forward, grads=None, *, vjp=None, infer=None, saves=None,
                 uses_out=False, broadcasts=False, is_view=False, scatter_grad=None):
        self.name = name
        self.forward = forward
        self.grads = grads
        self.vjp = vjp
        self.infer = infer
        self.saves = saves
        self.uses_out = uses_out
        self.broadcasts = broadcasts
        self.is_view = is_view
        self.onnx = None
        self.differentiable = grads is not None or vjp is not None
        # For ops whose input gradient is "zeros with g written at an index" (slicing): returns
        # (index, values, accumulate) so that backward can add slices into one buffer in place
        # instead of summing a full-size array per slice. Only used when not recording.
        self.scatter_grad = scatter_grad
        # Elementwise ops: ``scalar(*arg_exprs, **attrs) -> expr`` gives the op on one element as
        # numba-compatible Python; the compiler fuses chains of such ops into one kernel.
        self.scalar = None
        # the output dtypes (names) the compiler may fuse it for; None: every dtype
        self.scalar_dtypes = None
        # ``simplify(node, graph)``: a rewrite of one of its graph nodes, in place, that the
        # compiler's simplify pass applies (e.g. lstm_sequence_grad reading a gradient without its
        # zeros); it may insert nodes into ``graph`` after ``node``'s inputs
        self.simplify = None

    def __repr__(self):
        return f"<primitive {self.name}>"


def primitive(name, forward, grads=None, **kw) -> Primitive:
    """Register a primitive. ``saves``: None (all inputs), a tuple of input indices, or a
    dict {input index: indices its gradient rule needs}."""
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name!r} is defined twice")
    op = Primitive(name, forward, grads, **kw)
    PRIMITIVES[name] = op
    return op


def is_transposed(a) -> bool:
    """Whether ``a`` is a concrete F-ordered (transposed) matrix."""
    return type(a) is np.ndarray and a.ndim == 2 and not a.flags.c_contiguous and a.flags.f_contiguous


def _saved_indices(op, inputs):
    saves = op.saves
    if saves is None:
        return range(len(inputs))
    if type(saves) is tuple:
        return saves
    keep = set()
    for i, t in enumerate(inputs):
        if t.requires_grad:
            keep.update(saves.get(i, ()))
    return keep


def apply(op: Primitive, inputs: tuple, attrs: dict):
    """Run ``op`` on Tensors ``inputs`` and record it for autograd when needed."""
    tracer = TRACING.value
    if tracer is not None:
        return _apply_traced(tracer, op, inputs, attrs)
    try:
        out = op.forward(*[t.data for t in inputs], **attrs)
    except Exception as exc:  # turn NumPy's message into one that names the op and shapes
        raise explain_failure(op, inputs, attrs, exc) from None
    if type(out) is not np.ndarray:  # NumPy returns scalars for 0-d results; keep arrays
        out = np.asarray(out)
    result = Tensor._make(out)
    # only float results carry gradients (PyTorch's rule): x.long() or x.argmax() is a constant
    if GradMode.enabled and op.differentiable and out.dtype.kind == "f":
        for t in inputs:
            if t.requires_grad:
                _record(op, inputs, attrs, result)
                break
    if op.is_view:
        result._version = inputs[0]._version
        result._base = inputs[0] if inputs[0]._base is None else inputs[0]._base
    return result


def _apply_traced(tracer, op, inputs, attrs):
    """Inside ``em.jit`` tracing: add a graph node; autograd records as in eager mode."""
    result = Tensor._make(tracer.record(op, inputs, attrs))
    if GradMode.enabled and op.differentiable and result.data.dtype.kind == "f":
        for t in inputs:
            if t.requires_grad:
                _record(op, inputs, attrs, result)
                break
    if op.is_view:
        result._version = inputs[0]._version
        result._base = inputs[0] if inputs[0]._base is None else inputs[0]._base
    return result


def _record(op, inputs, attrs, result):
    keep = _saved_indices(op, inputs)
    saved = []
    versions = []
    edges = []
    for i, t in enumerate(inputs):
        if i in keep:
            saved.append(t)
            versions.append((t._version, t._version[0]))
        else:
            d = t.data
            saved.append(Meta(d.shape, d.dtype, is_transposed(d)))
        edges.append((t._node or t) if t.requires_grad else None)
    node = Node(op, attrs, tuple(edges), tuple(saved), versions)
    if op.uses_out:
        node.out_data = result.data
        versions.append((result._version, 0))
    result._node = node
    result.requires_grad = True


def explain_failure(op, inputs, attrs, exc) -> Exception:
    """Build a clear error for a failed forward: the shape rule's message if it rejects the
    inputs, else the op, its input shapes/dtypes and NumPy's own reason."""
    if isinstance(exc, (OpError, ShapeError)):
        return exc
    if op.infer is not None:
        try:
            op.infer(*[Meta(t.data.shape, t.data.dtype) for t in inputs], **attrs)
        except (OpError, ShapeError) as nice:
            return nice
        except Exception:
            pass
    desc = ", ".join(f"{tuple(t.data.shape)} {t.data.dtype}" for t in inputs)
    shown = {k: v for k, v in attrs.items() if not isinstance(v, np.ndarray)}
    extra = f" with {shown}" if shown else ""
    return OpError(f"{op.name}: failed on inputs [{desc}]{extra}: {exc}")


from ..tensor import Tensor  # noqa: E402  (Tensor imports the registry lazily)
