"""``em.onnx.export``: model -> ONNX file, through the tracer and the op registry.

The model's forward pass (eval mode, no gradients) is traced into ember's graph IR, cleaned
up by the compiler's passes (no fusion), and each node is written by its primitive's ONNX
mapping (``Primitive.onnx``, declared next to the primitive). With ``dynamic_batch`` the
model is traced at three batch sizes (``compiler.generalize``) so every size that depends on
the batch becomes a runtime value in the ONNX graph and one file serves any batch size.
"""

from __future__ import annotations

import os

import numpy as np

from ..autograd.engine import no_grad
from ..compiler import passes
from ..compiler.generalize import Affine, batch_template
from ..compiler.jit import JitFunction
from ..errors import OpError
from ..saving import atomic_write_bytes

DEFAULT_OPSET = 17


class NotExportable(OpError):
    """A graph node has no ONNX mapping (the message names the primitive)."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("em.onnx needs the onnx package: pip install onnx  (or pip install 'ember[onnx]')") \
            from None
    return onnx


class ExportContext:
    """What a primitive's ONNX mapping uses to emit nodes: names of its inputs, constants,
    shape tensors (dynamic in the batch size where needed) and new nodes."""

    def __init__(self, graph, opset, patterns, batch_source):
        self.onnx = _onnx()
        self.graph = graph
        self.opset = opset
        self.patterns = patterns          # id(node) -> attrs with Affine where batch-dependent
        self.batch_source = batch_source  # (input name, dim) where the batch size can be read
        self.nodes = []
        self.initializers = []
        self.names = {}
        self.used = set()
        self._batch = None
        self.scope = ""

    # ---- names -------------------------------------------------------------------------
    def fresh(self, hint):
        base = (self.scope + "/" + hint) if self.scope else hint
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def name(self, value):
        return self.names[value.id]

    def input(self, node, k):
        return self.name(node.inputs[k])

    # ---- emitting -----------------------------------------------------------------------
    def emit(self, op_type, inputs, outputs=1, **attrs):
        outs = [self.fresh(op_type) for _ in range(outputs)]
        node = self.onnx.helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type + "_node"),
                                          **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def const(self, array, hint="const", dtype=None):
        a = np.asarray(array, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def ints(self, values, hint="ints"):
        return self.const(np.asarray(list(values), dtype=np.int64), hint)

    def attrs(self, node):
        """The node's attributes, with sizes that depend on the batch as ``Affine`` objects."""
        return self.patterns.get(id(node), node.attrs)

    def batch_size(self):
        """A 1-element int64 tensor holding the batch size at run time."""
        if self._batch is None:
            name, dim = self.batch_source
            shape = self.emit("Shape", [name])
            self._batch = self.emit("Gather", [shape, self.ints([dim], "batch_dim")], axis=0)
        return self._batch

    def shape_tensor(self, dims, hint="shape"):
        """An int64 shape tensor for ``dims`` (ints or Affine of the batch size)."""
        dims = list(dims)
        if not any(isinstance(d, Affine) for d in dims):
            return self.ints(dims, hint)
        parts = []
        for d in dims:
            if isinstance(d, Affine):
                v = self.batch_size()
                if d.a != 1:
                    v = self.emit("Mul", [v, self.ints([d.a])])
                if d.c:
                    v = self.emit("Add", [v, self.ints([d.c])])
                parts.append(v)
            else:
                parts.append(self.ints([d]))
        return self.emit("Concat", parts, axis=0)

    def dtype(self, np_dtype):
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))


def _scope_names(model):
    from ..nn.module import Module

    if not isinstance(model, Module):
        return {}
    return {id(m): name or type(m).__name__ for name, m in model.named_modules()}


def _param_names(model):
    from ..nn.module import Module

    if not isinstance(model, Module):
        return {}
    return {id(t.data): name for name, t in model.state_dict(keep_vars=True).items()}


def _attr_patterns(graph, template):
    if template is None:
        return {}
    out = {}
    for node, pattern in zip(graph.nodes, template.node_attrs):
        if hasattr(pattern, "at"):
            out[id(node)] = _symbolic(pattern)
    return out


def _symbolic(pattern):
    """A pattern's value with Affine objects left where sizes depend on the batch."""
    from ..compiler.generalize import _Full, _Pair, _Pattern

    if isinstance(pattern, Affine):
        return pattern
    if isinstance(pattern, _Pattern):
        items = [_symbolic(p) for p in pattern.parts]
        if pattern.kind == "dict":
            return dict(items)
        if pattern.kind == "slice":
            return slice(*items)
        return tuple(items) if pattern.kind == "tuple" else items
    if isinstance(pattern, _Pair):
        return (pattern.key, _symbolic(pattern.value))
    if isinstance(pattern, _Full):
        raise NotExportable("a constant array whose size depends on the batch size cannot be exported "
                            "with dynamic_batch=True")
    if hasattr(pattern, "at"):
        raise NotExportable("an index array that depends on the batch size cannot be exported with "
                            "dynamic_batch=True")
    return pattern


def _trace(model, example_inputs):
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    fn = JitFunction(model.__call__ if hasattr(model, "forward") else model)
    fn.module_names = _scope_names(model)
    try:
        with no_grad():
            graph, _, out_tree = fn.trace(*example_inputs)
    finally:
        if was_training:
            model.train()
    return fn, graph


def export(model, example_input, path, dynamic_batch=True, opset=DEFAULT_OPSET, input_names=None,
           output_names=None, doc_string=None):
    """Write ``model`` (an nn.Module or a function of tensors) to an ONNX file at ``path``.

    ``example_input``: one tensor or a tuple of tensors (the batch dim first). With
    ``dynamic_batch`` the file accepts any batch size. Returns the path.
    """
    onnx = _onnx()
    from ..tensor import Tensor

    if opset < 17:
        raise ValueError(f"em.onnx.export: opset must be 17 or newer, got {opset}")
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    examples = tuple(e if isinstance(e, Tensor) else Tensor._make(np.asarray(e)) for e in examples)
    fn, graph = _trace(model, examples)
    template = None
    batch = examples[0].shape[0] if examples[0].ndim else None
    if dynamic_batch and batch is not None:
        tensors = list(examples)
        others = []
        for extra in (1, 2):
            stand_ins = tuple(Tensor._make(np.broadcast_to(np.zeros((), t.data.dtype),
                                                           (batch + extra,) + t.shape[1:]))
                              if t.ndim and t.shape[0] == batch else t for t in tensors)
            others.append(_trace(model, stand_ins)[1])
        template = batch_template(graph, others[0], others[1], batch)
        if template is None:
            from ..compiler.generalize import batch_template as bt

            raise NotExportable(f"em.onnx.export: the model's graph depends on the batch size in a way "
                                f"that cannot be made dynamic ({getattr(bt, 'last_reason', '?')}); "
                                "export with dynamic_batch=False")
    patterns = _attr_patterns(graph, template)
    graph = passes.dce(graph)
    input_names = list(input_names or (["input"] if len(graph.inputs) == 1 else
                                       [f"input_{k}" for k in range(len(graph.inputs))]))
    ctx = ExportContext(graph, opset, patterns, (input_names[0], 0))
    ctx.used.update(input_names)
    scope_names = _scope_names(model)
    param_names = _param_names(model)
    inputs = []
    for v, name in zip(graph.inputs, input_names):
        ctx.names[v.id] = name
        dims = ["batch" if (dynamic_batch and k == 0 and template is not None) else d for k, d in enumerate(v.shape)]
        inputs.append(onnx.helper.make_tensor_value_info(name, ctx.dtype(v.dtype), dims))
    sized = template.literals if template is not None else {}
    for v in graph.captures + [v for v in graph.values if v.kind == "literal"]:
        if v.id in ctx.names:
            continue
        if v.id in sized:  # a constant whose size depends on the batch (e.g. an RNN's zero state)
            ctx.names[v.id] = _sized_constant(ctx, sized[v.id], v)
        else:
            ctx.names[v.id] = ctx.const(v.ref if v.kind == "capture" else v.literal,
                                        param_names.get(id(v.ref), "constant") if v.kind == "capture" else "literal")
    for node in graph.nodes:
        mapping = node.op.onnx
        if mapping is None:
            raise NotExportable(f"em.onnx.export: primitive '{node.op.name}' (in {node.scope or 'the model'}) has "
                                "no ONNX mapping; it cannot be exported")
        ctx.scope = _pretty_scope(node.scope, scope_names)
        ctx.names[node.output.id] = mapping(ctx, node)
    ctx.scope = ""
    outs = [v for v in graph.outputs if hasattr(v, "id")]
    output_names = list(output_names or (["output"] if len(outs) == 1 else [f"output_{k}" for k in range(len(outs))]))
    outputs = []
    for v, name in zip(outs, output_names):
        src = ctx.names[v.id]
        ctx.nodes.append(onnx.helper.make_node("Identity", [src], [name], name=f"{name}_identity"))
        dims = [("batch" if isinstance(d, Affine) else d) for d in (template.value_shapes[v.id] if template
                                                                     else v.shape)]
        outputs.append(onnx.helper.make_tensor_value_info(name, ctx.dtype(v.dtype), dims))
    from .. import __version__

    onnx_graph = onnx.helper.make_graph(ctx.nodes, type(model).__name__, inputs, outputs, ctx.initializers)
    model_proto = onnx.helper.make_model(onnx_graph, producer_name="ember", producer_version=__version__,
                                         opset_imports=[onnx.helper.make_opsetid("", opset)])
    model_proto.doc_string = doc_string or (f"{type(model).__name__} exported by ember {__version__}; inputs "
                                            f"{input_names}, outputs {output_names}")
    def sig(name, v):
        shape = template.value_shapes[v.id] if template is not None else v.shape
        return {"name": name, "shape": [None if isinstance(d, Affine) else d for d in shape], "dtype": str(v.dtype)}

    import json

    meta = {"ember.model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "ember.inputs": json.dumps([sig(n, v) for n, v in zip(input_names, graph.inputs)]),
            "ember.outputs": json.dumps([sig(n, v) for n, v in zip(output_names, outs)]),
            "ember.dynamic_batch": str(bool(template is not None))}
    onnx.helper.set_model_props(model_proto, meta)
    onnx.checker.check_model(model_proto, full_check=True)
    atomic_write_bytes(path, model_proto.SerializeToString())
    return os.fspath(path)


def _sized_constant(ctx, pattern, value):
    from ..compiler.generalize import _Const, _Full

    if isinstance(pattern, _Const):
        return ctx.const(pattern.value, "constant")
    if isinstance(pattern, _Full):
        fill = ctx.onnx.numpy_helper.from_array(np.asarray([pattern.value], dtype=pattern.dtype), "value")
        return ctx.emit("ConstantOfShape", [ctx.shape_tensor(pattern.shape)], value=fill)
    raise NotExportable("a constant that depends on the batch size in a way other than its shape (e.g. a "
                        "mean over the batch) cannot be exported with dynamic_batch=True")


def _pretty_scope(scope, names):
    return scope.replace(".", "/") if scope else ""
