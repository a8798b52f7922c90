"""em.utils.SummaryWriter: every event is read back with TensorBoard's own reader and compared
with the values written (scalars, histogram statistics, text, the graph against ember's traced
IR, hparams sessions)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import ember as em
import ember.nn as nn
from ember.utils import SummaryWriter, graph_def
from ember.utils.tensorboard import trace_forward


def read(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_import_ember_does_not_load_tensorboardx_or_matplotlib():
    code = ("import sys, ember as em; em.utils; em.callbacks; "
            "print(sorted(m for m in ('tensorboardX', 'tensorboard', 'matplotlib') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(em.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_scalars_from_tensors_arrays_and_numbers(tmp_path):
    values = [em.tensor(0.5), np.float64(1.25), np.array([2.0], np.float32), 3, em.tensor([[4.5]])]
    with SummaryWriter(tmp_path) as w:
        for step, v in enumerate(values):
            w.add_scalar("loss", v, step)
    events = read(tmp_path).Scalars("loss")
    assert [e.step for e in events] == [0, 1, 2, 3, 4]
    assert [e.value for e in events] == [0.5, 1.25, 2.0, 3.0, 4.5]


def test_scalar_with_many_values_is_refused_with_its_shape(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(ValueError, match=r"add_scalar: 'loss' expects one number.*\(3,\)"):
            w.add_scalar("loss", em.ones(3), 0)
        with pytest.raises(TypeError, match="add_scalar: 'loss' expects numbers"):
            w.add_scalar("loss", "high", 0)


def test_add_scalars_writes_one_subrun_per_key(tmp_path):
    with SummaryWriter(tmp_path) as w:
        for step in range(3):
            w.add_scalars("curves", {"sin": np.sin(step), "cos": em.tensor(np.cos(step))}, step)
    for key, fn in (("sin", np.sin), ("cos", np.cos)):
        events = read(tmp_path / "curves" / key).Scalars("curves")
        np.testing.assert_allclose([e.value for e in events], fn(np.arange(3)).astype(np.float32), rtol=1e-7)


@pytest.mark.parametrize("wrap", [em.tensor, np.asarray], ids=["ember", "numpy"])
def test_histogram_statistics_equal_numpys(tmp_path, wrap):
    values = np.random.default_rng(1).normal(0.3, 2.0, (40, 25)).astype(np.float32)
    with SummaryWriter(tmp_path) as w:
        w.add_histogram("w", wrap(values), 7)
    (event,) = read(tmp_path).Histograms("w")
    h = event.histogram_value
    v64 = values.astype(np.float64).ravel()
    assert event.step == 7
    assert h.num == values.size and sum(h.bucket) == values.size
    assert h.min == v64.min() and h.max == v64.max()
    assert h.sum == pytest.approx(v64.sum(), rel=1e-12)
    assert h.sum_squares == pytest.approx(v64 @ v64, rel=1e-12)
    assert h.bucket_limit[-1] >= v64.max()


def test_histogram_refuses_nan_and_empty(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="add_histogram: 'w' has 1 NaN or infinite values among 3"):
            w.add_histogram("w", np.array([1.0, np.nan, 2.0]), 0)
        with pytest.raises(ValueError, match="add_histogram: 'w' got no values"):
            w.add_histogram("w", np.zeros(0), 0)


def test_text(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_text("notes", "lr **0.1**", 3)
        with pytest.raises(TypeError, match="add_text: 'notes' expects a string"):
            w.add_text("notes", 0.1)
    (event,) = read(tmp_path).Tensors("notes/text_summary")
    assert event.step == 3 and event.tensor_proto.string_val == [b"lr **0.1**"]


def test_flush_makes_events_readable_before_close(tmp_path):
    w = SummaryWriter(tmp_path, flush_secs=3600)
    w.add_scalar("x", 1.0, 0)
    w.flush()
    assert [e.value for e in read(tmp_path).Scalars("x")] == [1.0]
    w.close()


def test_default_log_dir_is_runs_with_comment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with SummaryWriter(comment="_lr0.1") as w:
        w.add_scalar("x", 1.0, 0)
    assert w.log_dir.startswith("runs") and w.log_dir.endswith("_lr0.1")
    assert os.listdir(tmp_path / w.log_dir)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(em.relu(self.fc(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return em.softmax(self.out(x), dim=-1)


def test_graph_nodes_and_edges_match_the_traced_ir(tmp_path):
    model, x = Net(), em.randn(5, 4)
    with SummaryWriter(tmp_path) as w:
        w.add_graph(model, x)
    written = read(tmp_path).Graph()
    # what TensorBoard reads is what was converted (messages of tensorboard's and tensorboardX's classes)
    assert written.SerializeToString(deterministic=True) == graph_def(model, x).SerializeToString(deterministic=True)
    nodes = {n.name: n for n in written.node}
    ir = trace_forward(model, x)
    assert model.training  # traced in eval mode, put back

    by_value = {}  # IR value id -> the GraphDef node standing for it
    for n in written.node:
        if n.op not in ("Input", "Parameter", "Buffer", "Const", "Output"):
            by_value[int(n.name.rsplit("_", 1)[1])] = n
    assert sorted(by_value) == sorted(node.output.id for node in ir.nodes)
    params = {id(p.data): name for name, p in model.named_parameters()}
    for node in ir.nodes:
        tb = by_value[node.output.id]
        assert tb.op == node.op.name
        assert [d.size for d in tb.attr["_output_shapes"].list.shape[0].dim] == list(node.output.shape)
        assert tb.attr["dtype"].type == 1  # DT_FLOAT
        assert len(tb.input) == len(node.inputs)
        for edge, value in zip(tb.input, node.inputs):
            src = nodes[edge]
            if value.kind == "node":
                assert src is by_value[value.id]
            elif value.kind == "input":
                assert src.op == "Input"
            elif value.kind == "capture":  # a parameter: named by its state_dict name under its layer
                name = params[id(value.ref)]
                assert src.op == "Parameter" and edge.endswith("/" + name.rsplit(".", 1)[1])
                assert [d.size for d in src.attr["_output_shapes"].list.shape[0].dim] == list(value.shape)
            else:
                assert value.kind == "literal" and src.op == "Const"
    (out,) = [n for n in written.node if n.op == "Output"]
    assert out.input == [by_value[ir.outputs[0].id].name]
    assert nodes["input"].attr["_output_shapes"].list.shape[0].dim[0].size == 5


def test_graph_names_are_scoped_by_layer(tmp_path):
    model = Net()
    g = graph_def(model, em.randn(2, 4))
    names = [n.name for n in g.node]
    assert "Net/Linear[inp]/weight" in names and "Net/ModuleList[blocks]/Block[1]/LayerNorm[norm]/weight" in names
    ops_in = lambda scope: {n.op for n in g.node if n.name.startswith(scope + "/")}  # noqa: E731
    assert "matmul" in ops_in("Net/ModuleList[blocks]/Block[0]/Linear[fc]")
    assert "relu" in ops_in("Net/ModuleList[blocks]/Block[0]")
    assert "softmax" in {n.op for n in g.node if n.name.count("/") == 1}  # the model's own op
    weight = next(n for n in g.node if n.name == "Net/Linear[out]/weight")
    assert [d.size for d in weight.attr["_output_shapes"].list.shape[0].dim] == [3, 8]
    assert g.versions.producer > 0


def test_graph_of_a_built_model_needs_no_example_and_an_unbuilt_one_says_what_to_pass(tmp_path):
    model = em.Sequential([em.layers.Input(shape=(6,)), em.layers.Dense(3)])
    g = graph_def(model)
    assert [d.size for d in next(n for n in g.node if n.op == "Input").attr["_output_shapes"].list.shape[0].dim] \
        == [1, 6]
    assert any(n.op == "matmul" for n in g.node)
    with pytest.raises(ValueError, match="add_graph: pass an example input"):
        graph_def(em.Sequential([em.layers.Dense(3)]))


def test_graph_of_a_jitted_model_and_a_function():
    model = Net()
    x = em.randn(2, 4)
    assert graph_def(em.jit(model), x).SerializeToString(deterministic=True) == \
        graph_def(model, x).SerializeToString(deterministic=True)
    g = graph_def(lambda a, b: em.tanh(a @ b), (em.randn(2, 3), em.randn(3, 4)))
    assert [n.op for n in g.node] == ["Input", "Input", "matmul", "tanh", "Output"]
    assert list(g.node[2].input) == ["input_0", "input_1"]


def hparams_content(run_dir):
    content = read(run_dir).PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}


def test_add_hparams_writes_a_session_with_its_metrics(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_hparams({"lr": 0.1, "optimizer": "sgd", "nesterov": True, "layers": np.int64(3)},
                      {"hparam/accuracy": em.tensor(0.75)}, run_name="trial-1")
    run = tmp_path / "trial-1"
    data = hparams_content(run)
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["lr"].number_value == 0.1 and start["optimizer"].string_value == "sgd"
    assert start["nesterov"].bool_value is True and start["layers"].number_value == 3
    metrics = data["_hparams_/experiment"].experiment.metric_infos
    assert [(m.name.group, m.name.tag) for m in metrics] == [("", "hparam/accuracy")]
    assert data["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
    assert [e.value for e in read(run).Scalars("hparam/accuracy")] == [0.75]


def test_add_hparams_refuses_values_it_cannot_show(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(TypeError, match="add_hparams: hyperparameter 'sizes' must be a bool, a number or a "
                                            "string, got list"):
            w.add_hparams({"sizes": [1, 2]}, {"acc": 1.0})


def test_missing_tensorboardx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'ember\[tensorboard\]'"):
        SummaryWriter(tmp_path)
