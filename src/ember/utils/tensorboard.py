"""TensorBoard event files: ``SummaryWriter`` with ``torch.utils.tensorboard.SummaryWriter``'s API.

Events are written by tensorboardX (its event-file writer and protobuf classes); this module
turns ember tensors into NumPy values, checks them, and converts ember's traced graph IR into
TensorBoard's ``GraphDef`` for ``add_graph``. tensorboardX is imported when a writer is created.
"""

from __future__ import annotations

import functools
import itertools
import os
import time

import numpy as np

_EXTRA_HINT = "pip install 'ember[tensorboard]'  (or pip install tensorboardX)"


def _tensorboardx(who):
    try:
        import tensorboardX
    except ImportError:
        raise ImportError(f"{who} needs the tensorboardX package: {_EXTRA_HINT}") from None
    return tensorboardX


def _as_array(values, who, tag):
    """``values`` (ember tensor, NumPy array, list or number) as a NumPy array."""
    from ..tensor import Tensor

    data = values.data if isinstance(values, Tensor) else values
    try:
        arr = np.asarray(data)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot read is the caller's mistake
        raise TypeError(f"{who}: {tag!r} expects an ember tensor, a NumPy array or numbers, got "
                        f"{type(values).__name__} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{who}: {tag!r} expects numbers, got values of dtype {arr.dtype}")
    return arr


def _as_number(value, who, tag):
    arr = _as_array(value, who, tag)
    if arr.size != 1:
        raise ValueError(f"{who}: {tag!r} expects one number, got an array of shape {arr.shape}; "
                         "log arrays with add_histogram, or reduce them first (e.g. .mean())")
    return float(arr.reshape(()))


# ---- hparams ------------------------------------------------------------------------------

def _hparam_value(key, value):
    """A value the HParams plugin can show: bool, number or string (ember/NumPy scalars too)."""
    from ..tensor import Tensor

    if isinstance(value, (Tensor, np.ndarray, np.generic)):
        value = _as_number(value, "add_hparams", key)
    if isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"add_hparams: hyperparameter {key!r} must be a bool, a number or a string, got "
                    f"{type(value).__name__} {value!r}; convert it, e.g. str(value)")


def hparams_summaries(hparam_dict, metrics):
    """The three summaries of one HParams session: (experiment, session start, session end).

    ``metrics``: (group, tag) pairs naming the scalars the HParams dashboard shows for the
    session; ``group`` is the sub-run directory holding the scalar ("" for the session's own
    directory), e.g. ("validation", "epoch_loss") as Keras writes it.
    """
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboardX.proto.types_pb2 import DataType as TensorType

    start = SessionStartInfo(start_time_secs=time.time())
    infos = []
    for key, raw in hparam_dict.items():
        if raw is None:
            continue
        value = _hparam_value(key, raw)
        if isinstance(value, str):
            start.hparams[key].string_value, kind = value, "DATA_TYPE_STRING"
        elif isinstance(value, bool):
            start.hparams[key].bool_value, kind = value, "DATA_TYPE_BOOL"
        else:
            start.hparams[key].number_value, kind = float(value), "DATA_TYPE_FLOAT64"
        infos.append(HParamInfo(name=key, type=DataType.Value(kind)))
    experiment = Experiment(hparam_infos=infos,
                            metric_infos=[MetricInfo(name=MetricName(group=g, tag=t)) for g, t in metrics])
    end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS"), end_time_secs=time.time())

    def summary(tag, **content):
        data = HParamsPluginData(version=0, **content).SerializeToString()
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=data))
        # an empty tensor, as TensorBoard's own hparams summaries carry: its readers index plugin
        # data by tensor values
        empty = TensorProto(dtype=TensorType.Value("DT_FLOAT"), tensor_shape=TensorShapeProto(
            dim=[TensorShapeProto.Dim(size=0)]))
        return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=empty)])

    return (summary("_hparams_/experiment", experiment=experiment),
            summary("_hparams_/session_start_info", session_start_info=start),
            summary("_hparams_/session_end_info", session_end_info=end))


# ---- graphs -------------------------------------------------------------------------------

def _unwrap(model):
    """The module or function behind ``em.jit(model)`` / ``em.jit(fn)``."""
    from ..compiler.jit import JitFunction, JitModule

    if isinstance(model, JitModule):
        return model.module
    if isinstance(model, JitFunction):
        return model.fn
    return model


def _example_inputs(model, example_input, who):
    from ..tensor import Tensor

    if example_input is None:
        shape = getattr(model, "_built_input_shape", None)
        if shape is None:
            raise ValueError(f"{who}: pass an example input (a tensor with a batch dimension, or a tuple of "
                             "tensors): ember draws the graph by tracing the model on it")
        dtype = getattr(model, "_built_input_dtype", None) or "float32"
        example_input = Tensor._make(np.zeros([1 if d is None else d for d in shape], dtype=dtype))
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    return tuple(e if isinstance(e, Tensor) else Tensor._make(np.asarray(e)) for e in examples)


def trace_forward(model, example_input=None):
    """ember's graph IR of ``model(example_input)`` (eval mode, no gradients, dead code removed),
    traced as ``em.jit``/``em.onnx.export`` trace it; node scopes are module paths."""
    from ..autograd.engine import no_grad
    from ..compiler import passes
    from ..compiler.jit import JitFunction
    from ..nn.module import Module

    model = _unwrap(model)
    examples = _example_inputs(model, example_input, "add_graph")
    is_module = isinstance(model, Module)
    fn = JitFunction(model.__call__ if is_module else model)
    # "" for the root module: its own nodes are scoped to the model, not to a layer
    fn.module_names = {id(m): name for name, m in model.named_modules()} if is_module else {}
    was_training = is_module and model.training
    if is_module:
        model.eval()  # as PyTorch's add_graph: the inference graph, without dropout
    try:
        with no_grad():
            graph, _, _ = fn.trace(*examples)
    finally:
        if was_training:
            model.train()
    return passes.dce(graph)


_TF_DTYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "int8": "DT_INT8",
              "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8",
              "uint16": "DT_UINT16", "bool": "DT_BOOL", "complex64": "DT_COMPLEX64", "complex128": "DT_COMPLEX128"}


def _attr(value):
    """An AttrValue for one primitive attribute (ints, floats, bools, strings, int tuples; any
    other value as its text, as ember prints graphs)."""
    from tensorboardX.proto.attr_value_pb2 import AttrValue

    from ..compiler.ir import _fmt_attr

    if isinstance(value, (bool, np.bool_)):
        return AttrValue(b=bool(value))
    if isinstance(value, (int, np.integer)):
        return AttrValue(i=int(value))
    if isinstance(value, (float, np.floating)):
        return AttrValue(f=float(value))
    if isinstance(value, str):
        return AttrValue(s=value.encode())
    if isinstance(value, np.dtype) and value.name in _TF_DTYPES:
        from tensorboardX.proto.types_pb2 import DataType

        return AttrValue(type=DataType.Value(_TF_DTYPES[value.name]))
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, np.integer)) and
                                                          not isinstance(v, bool) for v in value):
        return AttrValue(list=AttrValue.ListValue(i=[int(v) for v in value]))
    return AttrValue(s=_fmt_attr(value).encode())


def _value_attrs(value):
    """``_output_shapes`` (shown on the graph's edges) and ``dtype`` of one IR value."""
    from tensorboardX.proto.attr_value_pb2 import AttrValue
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=int(d)) for d in value.shape])
    attrs = {"_output_shapes": AttrValue(list=AttrValue.ListValue(shape=[shape]))}
    if value.dtype.name in _TF_DTYPES:
        attrs["dtype"] = _attr(value.dtype)
    return attrs


class _Scopes:
    """Module paths ("blocks.0.attn") as TensorBoard name scopes in PyTorch's style
    ("GPT/ModuleList[blocks]/Block[0]/Attention[attn]"), so each layer is one box."""

    def __init__(self, model, root):
        from ..nn.module import Module

        self.root = root
        self.modules = dict(model.named_modules()) if isinstance(model, Module) else {}
        self.cache = {"": root}

    def path(self, scope):
        hit = self.cache.get(scope)
        if hit is None:
            parts, prefix = [self.root], ""
            for part in scope.split("."):
                prefix = f"{prefix}.{part}" if prefix else part
                module = self.modules.get(prefix)
                parts.append(f"{type(module).__name__}[{part}]" if module is not None else part)
            hit = self.cache[scope] = "/".join(parts)
        return hit


def graph_def(model, example_input=None):
    """TensorBoard's ``GraphDef`` for ``model(example_input)``: one node per traced primitive
    (op = the primitive's name, named ``<layer scope>/<op>_<id>``, with ``_output_shapes``,
    ``dtype`` and the primitive's attributes), plus nodes for the inputs (op ``Input``),
    parameters and buffers (``Parameter``/``Buffer``, named by their ``state_dict`` names),
    constants (``Const``) and outputs (``Output``); a node's inputs are the graph's edges."""
    _tensorboardx("add_graph")
    from tensorboardX.proto.graph_pb2 import GraphDef
    from tensorboardX.proto.node_def_pb2 import NodeDef
    from tensorboardX.proto.versions_pb2 import VersionDef

    from ..nn.module import Module

    graph = trace_forward(model, example_input)
    model = _unwrap(model)
    root = type(model).__name__ if isinstance(model, Module) else getattr(model, "__name__", "function")
    scopes = _Scopes(model, root)
    state, params = {}, set()
    if isinstance(model, Module):
        state = {id(t.data): name for name, t in model.state_dict(keep_vars=True).items()}
        params = {id(p.data) for p in model.parameters()}
    nodes, names = [], {}

    def add(name, op, value, inputs=(), attrs=None):
        node = NodeDef(name=name, op=op, input=list(inputs))
        for k, v in _value_attrs(value).items():
            node.attr[k].CopyFrom(v)
        for k, v in (attrs or {}).items():
            node.attr[k].CopyFrom(_attr(v))
        nodes.append(node)
        names[value.id] = name

    for k, v in enumerate(graph.inputs):
        add("input" if len(graph.inputs) == 1 else f"input_{k}", "Input", v)
    for v in graph.captures:
        key = state.get(id(v.ref))
        if key is None:  # an array the function closed over
            add(f"{root}/capture_{v.id}", "Capture", v)
            continue
        module_path, _, leaf = key.rpartition(".")
        add(f"{scopes.path(module_path)}/{leaf}", "Parameter" if id(v.ref) in params else "Buffer", v)
    for v in graph.scalars:
        add(f"{root}/scalar_{v.id}", "Scalar", v)
    for node in graph.nodes:
        path = scopes.path(node.scope)
        for v in node.inputs:
            if v.id not in names:  # a constant: drawn inside the layer that first uses it
                literal = {"value": v.literal.reshape(()).item()} if v.kind == "literal" and v.literal.size == 1 \
                    else {}
                add(f"{path}/const_{v.id}", "Const" if v.kind == "literal" else v.kind, v, attrs=literal)
        add(f"{path}/{node.op.name}_{node.output.id}", node.op.name, node.output,
            [names[v.id] for v in node.inputs], node.attrs)
    outputs = [v for v in graph.outputs if hasattr(v, "id")]
    for k, v in enumerate(outputs):
        add("output" if len(outputs) == 1 else f"output_{k}", "Output", v, [names[v.id]])
    return GraphDef(node=nodes, versions=VersionDef(producer=22))


# ---- the writer ---------------------------------------------------------------------------

_FILE_IDS = itertools.count()


class _EventsFile:
    """One run's events file, written synchronously with tensorboardX's ``EventsWriter`` (TFRecord
    framing and CRCs), so ``flush()`` means the events are on disk. (tensorboardX's own
    ``SummaryWriter`` writes from a background thread whose ``flush`` does not wait for the queue.)"""

    def __init__(self, log_dir, max_queue, flush_secs, filename_suffix, purge_step=None):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        os.makedirs(log_dir, exist_ok=True)
        # tensorboardX names files by the second and host; pid and a counter keep two writers
        # opened in the same second (sub-runs, repeated fits) from overwriting each other
        suffix = f".{os.getpid()}.{next(_FILE_IDS)}{filename_suffix}"
        self.events = EventsWriter(os.path.join(log_dir, "events"), suffix)
        self.max_queue, self.flush_secs = max_queue, flush_secs
        self.pending, self.last_flush = 0, time.monotonic()
        if purge_step is not None:  # TensorBoard drops events of earlier files with step >= purge_step
            self.write(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def write(self, event):
        self.events.write_event(event)
        self.pending += 1
        if self.pending >= self.max_queue or time.monotonic() - self.last_flush >= self.flush_secs:
            self.flush()

    def flush(self):
        self.events.flush()
        self.pending, self.last_flush = 0, time.monotonic()

    def close(self):
        self.events.close()


class SummaryWriter:
    """Writes TensorBoard event files to ``log_dir`` (default ``runs/<date>_<host><comment>``),
    with ``torch.utils.tensorboard.SummaryWriter``'s methods; values may be ember tensors,
    NumPy arrays or numbers. View with ``tensorboard --logdir runs``.

    Events are buffered and written to disk after ``max_queue`` events or ``flush_secs`` seconds
    (checked when an event is added), on ``flush()`` and on ``close()`` (also at the end of a
    ``with`` block).
    """

    def __init__(self, log_dir=None, comment="", purge_step=None, max_queue=10, flush_secs=120,
                 filename_suffix=""):
        _tensorboardx("em.utils.SummaryWriter")
        if log_dir is None:  # PyTorch's default
            import socket
            from datetime import datetime

            log_dir = os.path.join("runs", datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname()
                                   + comment)
        self.log_dir = os.fspath(log_dir)
        self._options = {"max_queue": max_queue, "flush_secs": flush_secs, "filename_suffix": filename_suffix}
        self._files = {}  # directory -> _EventsFile: this run's, and add_scalars' sub-runs
        self._file(self.log_dir, purge_step)

    def get_logdir(self):
        return self.log_dir

    def _file(self, directory=None, purge_step=None):
        directory = directory or self.log_dir
        f = self._files.get(directory)
        if f is None:
            f = self._files[directory] = _EventsFile(directory, purge_step=purge_step, **self._options)
        return f

    def _event(self, directory=None, walltime=None, **fields):
        from tensorboardX.proto.event_pb2 import Event

        self._file(directory).write(Event(wall_time=time.time() if walltime is None else walltime, **fields))

    def add_summary(self, summary, global_step=None, walltime=None):
        """A ready-made ``Summary`` protobuf (tensorboardX's classes)."""
        self._event(walltime=walltime, summary=summary, **({} if global_step is None else {"step": int(global_step)}))

    def add_scalar(self, tag, scalar_value, global_step=None, walltime=None):
        """One number (a Python number, or a one-element tensor/array) at ``global_step``."""
        from tensorboardX.summary import scalar

        self.add_summary(scalar(tag, _as_number(scalar_value, "add_scalar", tag)), global_step, walltime)

    def add_scalars(self, main_tag, tag_scalar_dict, global_step=None, walltime=None):
        """Several numbers drawn in one chart: ``<key>`` goes to the sub-run ``<log_dir>/<main_tag>/<key>``
        under the tag ``main_tag``."""
        from tensorboardX.summary import scalar

        walltime = time.time() if walltime is None else walltime
        for key, value in tag_scalar_dict.items():
            summary = scalar(main_tag, _as_number(value, "add_scalars", f"{main_tag}/{key}"))
            step = {} if global_step is None else {"step": int(global_step)}
            self._event(os.path.join(self.log_dir, main_tag, key), walltime, summary=summary, **step)

    def add_histogram(self, tag, values, global_step=None, bins="tensorflow", walltime=None, max_bins=None):
        """The distribution of ``values`` (any shape; flattened). ``bins``: "tensorflow" (TensorBoard's
        exponential buckets) or anything ``np.histogram`` accepts."""
        from tensorboardX.summary import histogram

        arr = _as_array(values, "add_histogram", tag).astype(np.float64).reshape(-1)
        if arr.size == 0:
            raise ValueError(f"add_histogram: {tag!r} got no values (an array of size 0)")
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"add_histogram: {tag!r} has {bad} NaN or infinite values among {arr.size}; "
                             "histograms need finite values (check for diverged training)")
        if isinstance(bins, str) and bins == "tensorflow":
            bins = _tensorflow_bins()
        self.add_summary(histogram(tag, arr, bins, max_bins=max_bins), global_step, walltime)

    def add_text(self, tag, text_string, global_step=None, walltime=None):
        """Text (Markdown) shown in TensorBoard's Text tab."""
        from tensorboardX.summary import text

        if not isinstance(text_string, str):
            raise TypeError(f"add_text: {tag!r} expects a string, got {type(text_string).__name__}")
        self.add_summary(text(tag, text_string), global_step, walltime)

    def add_graph(self, model, input_to_model=None, verbose=False):
        """The graph of ``model(input_to_model)`` traced by ember's compiler (see ``graph_def``),
        shown in TensorBoard's Graphs tab. ``input_to_model`` may be omitted for a Model that has
        already been called or built. ``verbose`` prints ember's graph IR."""
        definition = graph_def(model, input_to_model)
        if verbose:
            print(trace_forward(model, input_to_model))
        self._event(graph_def=definition.SerializeToString())

    def add_hparams(self, hparam_dict, metric_dict, run_name=None, global_step=None):
        """A session of the HParams dashboard, as PyTorch writes it: in the sub-run ``run_name``
        (default: the current time), the hyperparameters and each metric as a scalar.

        ``hparam_dict``: name -> bool, number or string; ``metric_dict``: tag -> number.
        """
        if not isinstance(hparam_dict, dict) or not isinstance(metric_dict, dict):
            raise TypeError(f"add_hparams: hparam_dict and metric_dict must be dicts, got "
                            f"{type(hparam_dict).__name__} and {type(metric_dict).__name__}")
        metrics = {k: _as_number(v, "add_hparams", k) for k, v in metric_dict.items()}
        summaries = hparams_summaries(hparam_dict, [("", k) for k in metrics])
        with SummaryWriter(os.path.join(self.log_dir, run_name or str(time.time())), **self._options) as run:
            for summary in summaries:
                run.add_summary(summary, global_step)
            for k, v in metrics.items():
                run.add_scalar(k, v, global_step)

    def flush(self):
        """Write buffered events to disk now."""
        for f in self._files.values():
            f.flush()

    def close(self):
        """Flush and close the events files; adding more events afterwards opens new ones."""
        for f in self._files.values():
            f.close()
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"SummaryWriter(log_dir={self.log_dir!r})"


@functools.cache
def _tensorflow_bins():
    """TensorBoard's default bucket limits: 0 and +-1e-12 growing by 10% up to 1e20 (as tensorboardX's
    and TensorFlow's writers make them)."""
    limits = [1e-12]
    while limits[-1] * 1.1 < 1e20:
        limits.append(limits[-1] * 1.1)
    return [-v for v in reversed(limits)] + [0.0] + limits
