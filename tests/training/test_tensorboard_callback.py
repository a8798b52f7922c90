"""em.callbacks.TensorBoard through fit(): the events read back with TensorBoard's reader equal
what training produced (History per epoch, batch logs, weights and gradients recorded by a
callback placed before it, the learning rate the optimizer used), plus the graph and hparams."""

import glob

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

import ember as em
import ember.nn as nn
from ember.training import callbacks as C

rng = np.random.default_rng(0)
N, D, K = 48, 5, 3
X = rng.standard_normal((N, D)).astype(np.float32)
Y = rng.integers(0, K, N)
XV, YV = X[:16] + 0.1, Y[:16]


def read(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def model_(lr=0.05):
    m = em.Sequential([nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, K)])
    m.compile(em.optim.SGD(m.parameters(), lr=lr, momentum=0.9), "cross_entropy", metrics=["accuracy"])
    return m


class Recorder(C.Callback):
    """Copies what the TensorBoard callback should log: batch logs, the gradients after each
    step, and the weights at each epoch end."""

    def __init__(self):
        self.batch_logs, self.grads, self.weights = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs))
        self.grads.append({n: p.grad.data.copy() for n, p in self.model.named_parameters()})

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append({n: p.data.copy() for n, p in self.model.named_parameters()})


def test_epoch_scalars_equal_history_in_train_and_validation_runs(tmp_path):
    m = model_()
    schedule = C.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    h = m.fit(X, Y, epochs=3, batch_size=16, validation_data=(XV, YV), verbose=0,
              callbacks=[schedule, C.TensorBoard(tmp_path)])
    train, val = read(tmp_path / "train"), read(tmp_path / "validation")
    for name in ("loss", "accuracy"):
        events = train.Scalars("epoch_" + name)
        assert [e.step for e in events] == [0, 1, 2]
        np.testing.assert_allclose([e.value for e in events], h.history[name], rtol=1e-6)
        np.testing.assert_allclose([e.value for e in val.Scalars("epoch_" + name)], h.history["val_" + name],
                                   rtol=1e-6)
    np.testing.assert_allclose([e.value for e in train.Scalars("epoch_learning_rate")], [0.1, 0.05, 0.1 / 3],
                               rtol=1e-6)
    assert "epoch_learning_rate" not in val.Tags()["scalars"]
    assert h.history["learning_rate"] == [0.1, 0.05, 0.1 / 3]  # the scheduler's own log is what was written
    assert not any(t.startswith("batch_") for t in train.Tags()["scalars"])  # update_freq="epoch"


@pytest.mark.parametrize("update_freq, every", [("batch", 1), (2, 2)])
def test_batch_scalars_at_the_global_batch_number(tmp_path, update_freq, every):
    rec = Recorder()
    m = model_()
    m.fit(X, Y, epochs=2, batch_size=16, verbose=0, callbacks=[rec, C.TensorBoard(tmp_path, update_freq=update_freq)])
    events = read(tmp_path / "train").Scalars("batch_loss")
    steps = list(range(every, 2 * 3 + 1, every))  # 3 batches an epoch, counted across epochs
    assert [e.step for e in events] == steps
    np.testing.assert_allclose([e.value for e in events], [rec.batch_logs[s - 1]["loss"] for s in steps], rtol=1e-6)


def test_weight_and_gradient_histograms_every_histogram_freq_epochs(tmp_path):
    rec = Recorder()
    m = model_()
    m.fit(X, Y, epochs=3, batch_size=16, validation_data=(XV, YV), verbose=0,
          callbacks=[rec, C.TensorBoard(tmp_path, histogram_freq=2)])
    train = read(tmp_path / "train")
    steps_per_epoch = 3
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        for kind, recorded in (("histogram", rec.weights), ("gradient", None)):
            events = train.Histograms(f"{name}/{kind}")
            assert [e.step for e in events] == [0, 2]
            for e in events:
                if recorded is not None:
                    values = recorded[e.step][name]
                else:  # the gradients of the epoch's last batch
                    values = rec.grads[(e.step + 1) * steps_per_epoch - 1][name]
                v = values.astype(np.float64).ravel()
                h = e.histogram_value
                assert (h.num, h.min, h.max) == (v.size, v.min(), v.max())
                assert h.sum == pytest.approx(v.sum(), rel=1e-9, abs=1e-12)
    # the gradient histograms are not the weights' (fit leaves the last step's grads in place)
    g = train.Histograms("2.weight/gradient")[0].histogram_value
    w = train.Histograms("2.weight/histogram")[0].histogram_value
    assert (g.min, g.max) != (w.min, w.max)
    assert not read(tmp_path / "validation").Tags()["histograms"]


def test_graph_written_once_from_a_model_built_on_the_first_batch(tmp_path):
    m = em.Sequential([em.layers.Dense(8, activation="relu"), em.layers.Dense(K)])  # sizes from the data
    m.compile("adam", "cross_entropy")
    loader = em.data.DataLoader(em.data.TensorDataset(em.tensor(X), em.tensor(Y)), batch_size=12)
    m.fit(loader, epochs=2, verbose=0, callbacks=[C.TensorBoard(tmp_path)])
    (path,) = glob.glob(str(tmp_path / "train" / "events.*"))
    graphs = [e for e in EventFileLoader(path).Load() if e.HasField("graph_def")]
    assert len(graphs) == 1
    graph = read(tmp_path / "train").Graph()
    ops = [n.op for n in graph.node]
    assert ops.count("matmul") == 2 and "relu" in ops and ops[0] == "Input"
    weights = {n.name: [d.size for d in n.attr["_output_shapes"].list.shape[0].dim]
               for n in graph.node if n.op == "Parameter"}
    assert weights["Sequential/Dense[0]/weight"] == [8, D] and weights["Sequential/Dense[1]/weight"] == [K, 8]
    # hparams: the loader's batch size, Keras's default Adam
    start = hparams(tmp_path)["_hparams_/session_start_info"].session_start_info.hparams
    assert start["batch_size"].number_value == 12 and start["optimizer"].string_value == "Adam"
    assert start["learning_rate"].number_value == pytest.approx(1e-3)


def hparams(run_dir):
    content = read(run_dir).PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}


def test_hparams_session_with_the_epoch_scalars_as_metrics(tmp_path):
    m = model_(lr=0.02)
    h = m.fit(X, Y, epochs=2, batch_size=8, validation_data=(XV, YV), verbose=0,
          callbacks=[C.TensorBoard(tmp_path, hparams={"units": 8, "note": "tanh"})])
    data = hparams(tmp_path)
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert {k: v.WhichOneof("kind") for k, v in start.items()} == {
        "optimizer": "string_value", "learning_rate": "number_value", "batch_size": "number_value",
        "epochs": "number_value", "units": "number_value", "note": "string_value"}
    assert (start["optimizer"].string_value, start["learning_rate"].number_value, start["batch_size"].number_value,
            start["epochs"].number_value, start["note"].string_value) == ("SGD", 0.02, 8, 2, "tanh")
    experiment = data["_hparams_/experiment"].experiment
    assert sorted((m.name.group, m.name.tag) for m in experiment.metric_infos) == sorted(
        [("train", "epoch_loss"), ("train", "epoch_accuracy"), ("train", "epoch_learning_rate"),
         ("validation", "epoch_loss"), ("validation", "epoch_accuracy")])
    assert data["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
    assert "learning_rate" not in h.history  # the callback's additions stay out of the History
    # every metric the session names is a scalar in that group's run
    for info in experiment.metric_infos:
        assert info.name.tag in read(tmp_path / info.name.group).Tags()["scalars"]


def test_two_fits_into_one_log_dir_keep_both_event_files(tmp_path):
    m = model_()
    tb = C.TensorBoard(tmp_path)
    m.fit(X, Y, epochs=1, verbose=0, callbacks=[tb])
    m.fit(X, Y, epochs=2, initial_epoch=1, verbose=0, callbacks=[tb])
    assert len(glob.glob(str(tmp_path / "train" / "events.*"))) == 2
    assert [e.step for e in read(tmp_path / "train").Scalars("epoch_loss")] == [0, 1]


def test_gradient_histograms_under_jit_compile(tmp_path):
    rec = Recorder()
    m = em.Sequential([nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, K)])
    m.compile(em.optim.SGD(m.parameters(), lr=0.1), "cross_entropy", jit_compile=True)
    m.fit(X, Y, epochs=1, batch_size=16, shuffle=False, verbose=0,
          callbacks=[rec, C.TensorBoard(tmp_path, histogram_freq=1)])
    h = read(tmp_path / "train").Histograms("0.weight/gradient")[0].histogram_value
    last = rec.grads[-1]["0.weight"].astype(np.float64)
    assert (h.num, h.min, h.max) == (last.size, last.min(), last.max())


@pytest.mark.parametrize("kwargs, match", [
    ({"histogram_freq": -1}, "histogram_freq must be an int >= 0"),
    ({"update_freq": "step"}, "update_freq must be 'epoch', 'batch' or an int >= 1, got 'step'"),
    ({"update_freq": 0}, "update_freq must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.TensorBoard("logs", **kwargs)


def test_exported_as_em_callbacks_tensorboard():
    assert em.callbacks.TensorBoard is C.TensorBoard
