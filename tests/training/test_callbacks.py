"""Callbacks driven through fit(): EarlyStopping, ModelCheckpoint, LearningRateScheduler,
ReduceLROnPlateau, CSVLogger, TerminateOnNaN, and the progress bar (silenced by verbose=0).

Where a callback reacts to a monitored value, a scripted value is injected into the epoch logs
by a callback placed before it, so the expected epochs can be worked out by hand."""

import csv
import re

import numpy as np
import pytest

import ember as em
import ember.nn as nn
from ember import layers as L
from ember.training import callbacks as C

rng = np.random.default_rng(0)
N, D, K = 40, 5, 3
X = rng.standard_normal((N, D)).astype(np.float32)
Y = rng.integers(0, K, N)


def model_(lr=0.05, opt="sgd"):
    m = em.Sequential([nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, K)])
    m.compile(em.optim.SGD(m.parameters(), lr=lr) if opt == "sgd" else opt, "cross_entropy",
              metrics=["accuracy"])
    return m


class Script(C.Callback):
    """Puts ``values[epoch]`` into the logs as ``key`` and snapshots the weights each epoch."""

    def __init__(self, values, key="score"):
        self.values, self.key, self.snapshots = values, key, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        self.snapshots.append({k: v.data.copy() for k, v in self.model.state_dict().items()})


def _same(model, snapshot):
    return all(np.array_equal(v.data, snapshot[k]) for k, v in model.state_dict().items())


# ---- EarlyStopping -----------------------------------------------------------------------------

# (values, mode, patience, epochs run, best epoch)
EARLY = [
    ([3.0, 2.0, 2.5, 2.6, 1.0, 0.5], "min", 2, 4, 1),  # stops after 2 epochs without improvement
    ([3.0, 2.0, 2.5, 1.9, 2.6, 2.7, 2.8], "min", 2, 6, 3),  # an improvement restarts the count
    ([0.1, 0.5, 0.4, 0.45, 0.3, 0.9], "max", 3, 5, 1),
    ([3.0, 2.0, 1.0, 0.5], "min", 1, 4, 3),  # never stops: runs every epoch
    ([1.0, 1.0, 1.0], "min", 0, 2, 0),  # patience 0: stops at the first non-improvement (after epoch 0)
]


@pytest.mark.parametrize("values,mode,patience,ran,best", EARLY)
def test_early_stopping_stops_after_patience_and_restores_best_weights(values, mode, patience, ran, best):
    model = model_()
    script = Script(values)
    stop = C.EarlyStopping(monitor="score", mode=mode, patience=patience, restore_best_weights=True)
    hist = model.fit(X, Y, epochs=len(values), batch_size=8, verbose=0, callbacks=[script, stop])
    assert len(hist.history["loss"]) == ran
    assert hist.history["score"] == values[:ran]
    assert stop.best_epoch == best
    assert stop.stopped_epoch == (ran - 1 if ran < len(values) else 0)
    # restored to the best epoch's weights even when training ran to the end (as Keras 3)
    assert _same(model, script.snapshots[best])
    assert best == ran - 1 or not _same(model, script.snapshots[-1])


def test_early_stopping_baseline_must_be_beaten_to_restart_the_count():
    values = [0.9, 0.8, 0.85, 0.3, 0.2]
    runs = {}
    for baseline in (None, 0.5):
        stop = C.EarlyStopping(monitor="score", patience=2, baseline=baseline)
        runs[baseline] = model_().fit(X, Y, epochs=5, verbose=0, callbacks=[Script(values), stop]).epoch
    assert runs[None] == [0, 1, 2, 3, 4]
    assert runs[0.5] == [0, 1, 2]  # improvements above the baseline do not restart the count


def test_early_stopping_without_restore_keeps_the_last_weights_and_auto_mode():
    model = model_()
    script = Script([0.5, 0.6, 0.7, 0.8], key="val_accuracy")  # auto: accuracy is maximised
    stop = C.EarlyStopping(monitor="val_accuracy", patience=2)
    hist = model.fit(X, Y, epochs=4, batch_size=8, verbose=0, callbacks=[script, stop])
    assert len(hist.epoch) == 4 and stop.mode == "max"
    assert _same(model, script.snapshots[-1])
    with pytest.raises(KeyError, match="monitor 'val_loss' is not among the logged values.*pass validation data"):
        model_().fit(X, Y, epochs=1, verbose=0, callbacks=[C.EarlyStopping()])


def test_early_stopping_on_real_validation_loss():
    """Memorising 8 random labels with a big learning rate overfits: val_loss rises and
    training stops well before 200 epochs, with the weights of the best val_loss epoch."""
    model = model_(lr=0.5)
    val = (X[8:], Y[8:])
    snap = Script([0.0] * 200, key="_")
    stop = C.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    hist = model.fit(X[:8], Y[:8], epochs=200, batch_size=8, validation_data=val, verbose=0,
                     callbacks=[snap, stop])
    vl = hist.history["val_loss"]
    assert len(vl) < 200
    assert stop.best_epoch == int(np.argmin(vl)) == len(vl) - 4
    assert _same(model, snap.snapshots[stop.best_epoch])
    np.testing.assert_allclose(model.evaluate(*val)["loss"], min(vl), rtol=1e-6)


# ---- ModelCheckpoint ---------------------------------------------------------------------------

def test_model_checkpoint_save_best_only(tmp_path):
    values = [3.0, 2.0, 2.5, 1.0, 1.5]
    model = model_()
    script = Script(values, key="val_loss")
    templ = C.ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.1f}.ember", save_best_only=True)
    single = C.ModelCheckpoint(tmp_path / "best.ember", monitor="val_loss", save_best_only=True)
    every = C.ModelCheckpoint(tmp_path / "w-{epoch}.safetensors", save_weights_only=True)
    model.fit(X, Y, epochs=5, batch_size=8, verbose=0, callbacks=[script, templ, single, every])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.ember", "m-01-3.0.ember", "m-02-2.0.ember", "m-04-1.0.ember",
                     "w-1.safetensors", "w-2.safetensors", "w-3.safetensors", "w-4.safetensors",
                     "w-5.safetensors"]
    best = em.load(tmp_path / "best.ember")
    assert _same(best, script.snapshots[3])
    np.testing.assert_array_equal(best.predict(X), em.load(tmp_path / "m-04-1.0.ember").predict(X))
    fresh = model_()
    fresh.load_weights(tmp_path / "w-3.safetensors")
    assert _same(fresh, script.snapshots[2])


# ---- learning rate -----------------------------------------------------------------------------

def test_learning_rate_scheduler_sets_the_rate_used_by_each_epoch():
    model = model_(lr=0.1)
    seen = []
    spy = C.LambdaCallback(on_train_batch_begin=lambda b, logs: seen.append(model.optimizer.param_groups[0]["lr"]))
    sched = C.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)
    hist = model.fit(X, Y, epochs=3, batch_size=20, verbose=0, callbacks=[sched, spy])
    assert seen == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert hist.history["learning_rate"] == [0.1, 0.05, 0.025]


def test_learning_rate_scheduler_with_a_lazily_built_model():
    model = em.Sequential([L.Dense(8, activation="relu"), L.Dense(K)])
    model.compile("sgd", "cross_entropy")  # no sizes yet: the optimizer comes with the data
    sched = C.LearningRateScheduler(lambda epoch, lr: lr / 2)
    hist = model.fit(X, Y, epochs=2, verbose=0, callbacks=[sched])
    assert hist.history["learning_rate"] == [0.005, 0.0025]


def test_the_learning_rate_changes_the_update():
    """A scheduled rate is the one the optimizer applies: SGD with rate 0 leaves weights alone."""
    model = model_(lr=0.1)
    before = {k: v.data.copy() for k, v in model.state_dict().items()}
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[C.LearningRateScheduler(lambda e, lr: 0.0)])
    assert _same(model, before)


# (values, patience, cooldown, min_lr, lr per epoch)
PLATEAU = [
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, 0, 0.0, [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]),
    ([1.0, 0.5, 0.6, 0.4, 0.45, 0.5, 0.5], 2, 0, 0.0, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]),
    # cooldown 2 (Keras's counting): the epoch after a reduction does not count, the next one does
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1, 2, 0.0, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]),
    ([1.0, 1.0, 1.0, 1.0, 1.0], 1, 0, 0.3, [1.0, 1.0, 0.5, 0.3, 0.3]),
]


@pytest.mark.parametrize("values,patience,cooldown,min_lr,lrs", PLATEAU)
def test_reduce_lr_on_plateau(values, patience, cooldown, min_lr, lrs):
    model = model_(lr=1.0)
    seen = []
    spy = C.LambdaCallback(on_train_batch_begin=lambda b, logs: seen.append(model.optimizer.param_groups[0]["lr"]))
    plateau = C.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=patience, cooldown=cooldown,
                                  min_lr=min_lr)
    hist = model.fit(X, Y, epochs=len(values), batch_size=N, verbose=0,
                     callbacks=[Script(values, key="val_loss"), plateau, spy])
    assert seen == lrs  # one batch per epoch: the rate each epoch trained with
    assert hist.history["learning_rate"] == lrs
    with pytest.raises(ValueError, match="factor must be < 1"):
        C.ReduceLROnPlateau(factor=1.5)


# ---- CSVLogger, TerminateOnNaN -----------------------------------------------------------------

def test_csv_logger_writes_one_row_per_epoch_and_appends(tmp_path):
    path = tmp_path / "log.csv"
    model = model_()
    hist = model.fit(X, Y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                     callbacks=[C.CSVLogger(path)])
    hist2 = model.fit(X, Y, epochs=2, batch_size=8, validation_split=0.25, verbose=0,
                      callbacks=[C.CSVLogger(path, append=True)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "0", "1"]
    for i, key in enumerate(rows[0][1:], start=1):
        got = [float(r[i]) for r in rows[1:]]
        np.testing.assert_allclose(got, hist.history[key] + hist2.history[key], rtol=1e-12)
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[C.CSVLogger(path)])  # not appending: rewritten
    with open(path) as f:
        assert len(f.read().splitlines()) == 2


def test_terminate_on_nan_stops_at_the_bad_batch(capsys):
    x = X.copy()
    x[17] = np.nan  # in the third batch of 8
    model = model_()
    batches = []
    spy = C.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    hist = model.fit(x, Y, epochs=5, batch_size=8, shuffle=False, verbose=0, callbacks=[spy, C.TerminateOnNaN()])
    assert batches == [0, 1, 2]
    assert len(hist.epoch) == 1 and np.isnan(hist.history["loss"][0])
    assert "Batch 2: invalid loss nan, terminating training" in capsys.readouterr().out


# ---- progress output ---------------------------------------------------------------------------

def test_verbose_0_prints_nothing(capsys):
    model = model_()
    model.fit(X, Y, epochs=2, batch_size=8, validation_split=0.2, verbose=0)
    model.evaluate(X, Y)
    model.predict(X)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_verbose_1_shows_a_progress_bar_with_loss_metrics_and_eta(capsys):
    model = model_()
    hist = model.fit(X, Y, epochs=2, batch_size=8, verbose=1)
    err = capsys.readouterr().err  # tqdm writes to stderr
    for epoch in (1, 2):
        assert f"Epoch {epoch}/2" in err
        assert re.search(rf"Epoch {epoch}/2: 100%.*5/5 \[\d\d:\d\d<\d\d:\d\d", err), err  # elapsed<ETA
        assert f"loss: {hist.history['loss'][epoch - 1]:.4f}" in err
        assert f"accuracy: {hist.history['accuracy'][epoch - 1]:.4f}" in err


def test_verbose_2_prints_one_line_per_epoch(capsys):
    model = model_()
    hist = model.fit(X, Y, epochs=3, batch_size=8, verbose=2)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 3 and out.err == ""
    for e, line in enumerate(lines):
        assert re.fullmatch(rf"Epoch {e + 1}/3 - \d+\.\ds - loss: {hist.history['loss'][e]:.4f} - "
                            rf"accuracy: {hist.history['accuracy'][e]:.4f}", line), line


def test_progress_bar_shows_the_running_loss_of_each_batch(monkeypatch):
    """Per-batch postfix updates are throttled by time; with a clock that moves 1 s per read,
    every batch's running loss reaches the bar."""
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(C.time, "perf_counter", lambda: float(next(clock)))
    model = model_()
    bar = C.ProgbarLogger(1)
    postfixes = []

    class Spy(C.Callback):
        def on_train_batch_end(self, batch, logs=None):
            postfixes.append((bar.bar.postfix, dict(logs)))

    model.fit(X, Y, epochs=1, batch_size=8, verbose=0, callbacks=[bar, Spy()])
    assert len(postfixes) == 5
    for postfix, logs in postfixes:
        assert f"loss: {logs['loss']:.4f}" in postfix
