"""Keras-style callbacks for ``Model.fit``: hooks at train/epoch/batch boundaries."""

from __future__ import annotations

import csv
import math
import os
import time

import numpy as np


class Callback:
    """Override any of the ``on_*`` hooks; ``self.model`` is set by ``fit``."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...

    def get_state(self) -> dict:
        """State that affects the rest of training (counters, best values), for BackupAndRestore:
        numbers, strings, NumPy arrays, and lists/tuples/dicts of them. Restored after
        ``on_train_begin`` with ``set_state``."""
        return {}

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _overrides(callback, hook):
    return getattr(getattr(callback, hook), "__func__", None) is not getattr(Callback, hook)


class CallbackList:
    """Dispatches each hook to every callback (skipping batch hooks nobody overrides, so an
    empty callback list costs nothing per batch)."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for c in self.callbacks:
            c.set_model(model)
        self._batch_end = [c for c in self.callbacks if _overrides(c, "on_train_batch_end")]
        self._batch_begin = [c for c in self.callbacks if _overrides(c, "on_train_batch_begin")]

    def __getattr__(self, hook):
        def call(*args, **kwargs):
            for c in self.callbacks:
                getattr(c, hook)(*args, **kwargs)
        return call

    def on_train_batch_begin(self, batch, logs=None):
        for c in self._batch_begin:
            c.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        for c in self._batch_end:
            c.on_train_batch_end(batch, logs)


class History(Callback):
    """Records each epoch's logs: ``history.history['loss'][epoch]``."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = [] if not self.epoch else self.epoch

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def get_state(self):
        return {"history": self.history, "epoch": self.epoch}

    def plot(self, path=None, metrics=None):
        """Draw loss/metric curves (train and validation) to ``path`` (PNG) with matplotlib."""
        from ..utils.plotting import plot_history

        return plot_history(self, path, metrics)

    def __repr__(self):
        return f"History({self.history})"


def _fmt(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float)))


class ProgbarLogger(Callback):
    """A tqdm progress bar per epoch with the running loss and metrics, and the ETA."""

    def __init__(self, verbose=1):
        self.verbose = verbose
        self.bar = None
        self._last = 0.0

    def on_train_begin(self, logs=None):
        self.epochs = self.model._fit_state["epochs"]
        self.steps = self.model._fit_state["steps"]

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}", unit="step",
                            leave=True, dynamic_ncols=True, mininterval=0.1)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last > 0.1:  # formatting the postfix every batch would cost more than the step
            self._last = now
            self.bar.set_postfix_str(_fmt(logs or {}), refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt(logs or {}), refresh=False)
            self.bar.close()
            self.bar = None
        elif self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.epochs} - {time.perf_counter() - self._t0:.1f}s - {_fmt(logs or {})}")


def _optimizer_of(model, who):
    opt = model.optimizer
    if opt is None:
        raise RuntimeError(f"{who}: the model has no optimizer yet because its layers are built lazily "
                           "from the first batch of a loader; start the model with em.layers.Input(shape=...) "
                           "or call model.build(input_shape) before fit")
    return opt


def _monitor_mode(monitor, mode):
    if mode == "auto":
        return "max" if any(k in monitor for k in ("acc", "auc", "precision", "recall", "f1")) else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` stops improving for ``patience`` epochs; optionally restore the
    best weights seen."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0, verbose=0):
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.mode = _monitor_mode(monitor, mode)
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch, self.verbose = start_from_epoch, verbose
        self.stopped_epoch = 0

    def _improved(self, value, ref):
        return value < ref - self.min_delta if self.mode == "min" else value > ref + self.min_delta

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None
        self.best_epoch = 0
        self.stopped_epoch = 0

    def get_state(self):
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"EarlyStopping: monitor '{self.monitor}' is not among the logged values "
                           f"{sorted(logs or {})}; pass validation data or choose another monitor")
        if epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = {k: v.data.copy() for k, v in self.model.state_dict().items()}
            if self.baseline is None or self._improved(value, self.baseline):
                self.wait = 0  # only an improvement over the baseline too restarts the count
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"Epoch {epoch + 1}: early stopping (best {self.monitor}={self.best:.4f} at "
                      f"epoch {self.best_epoch + 1})")

    def on_train_end(self, logs=None):
        # as in Keras 3: the best weights come back whether or not training stopped early
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (or its weights) after each epoch; ``{epoch}`` and log keys may appear in
    the path, e.g. ``'ckpt-{epoch:02d}-{val_loss:.3f}.ember'``. Writes are atomic."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, save_weights_only=False,
                 mode="auto", verbose=0):
        self.filepath, self.monitor = os.fspath(filepath), monitor
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.mode = _monitor_mode(monitor, mode)
        self.verbose = verbose
        self.best = math.inf if self.mode == "min" else -math.inf

    def get_state(self):
        return {"best": self.best}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                raise KeyError(f"ModelCheckpoint: monitor '{self.monitor}' is not among the logged "
                               f"values {sorted(logs)}")
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved model to {path}")


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start: ``schedule(epoch, lr) -> new lr``."""

    def __init__(self, schedule, verbose=0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = _optimizer_of(self.model, "LearningRateScheduler")
        lr = float(self.schedule(epoch, opt.param_groups[0]["lr"]))
        for g in opt.param_groups:
            g["lr"] = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.6g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.optimizer.param_groups[0]["lr"]


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, verbose=0):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1, got {factor}")
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.mode = _monitor_mode(monitor, mode)
        self.min_delta, self.cooldown, self.min_lr, self.verbose = min_delta, cooldown, min_lr, verbose

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"ReduceLROnPlateau: monitor '{self.monitor}' is not among the logged "
                           f"values {sorted(logs)}")
        groups = _optimizer_of(self.model, "ReduceLROnPlateau").param_groups
        logs["learning_rate"] = groups[0]["lr"]  # the rate this epoch trained with, as in Keras
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best, self.wait = value, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience and groups[0]["lr"] > self.min_lr:
                for g in groups:
                    g["lr"] = max(g["lr"] * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"Epoch {epoch + 1}: reducing learning rate to {groups[0]['lr']:.6g}")


class BackupAndRestore(Callback):
    """Make ``fit`` resumable after an interruption (Keras's ``BackupAndRestore``).

    The run's whole state is written atomically to ``backup_dir/training-backup.ember`` at the
    end of every epoch (``save_freq="epoch"``) or every ``save_freq`` batches (an int). A ``fit``
    that finds a backup there continues from it: same weights, optimizer state, epoch and batch,
    RNG and shuffle order, callback counters and History, so it ends with the same weights as a
    run that was never interrupted. The backup is deleted when training finishes (unless
    ``delete_checkpoint=False``). ``model.fit(..., resume_from=backup_dir)`` is a shorthand.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive number of batches, got "
                             f"{save_freq!r}")
        if not backup_dir:
            raise ValueError("BackupAndRestore: backup_dir is required (a directory for the backup file)")
        from .backup import BACKUP_FILE

        self.backup_dir = os.fspath(backup_dir)
        self.path = os.path.join(self.backup_dir, BACKUP_FILE)
        self.save_freq, self.delete_checkpoint = save_freq, delete_checkpoint

    # fit calls these three (at points no hook order could give: after every callback has seen
    # the epoch or batch, and, mid-epoch, after on_epoch_begin)
    def _read(self, run):
        from .backup import Backup

        return Backup(self.path, run) if os.path.exists(self.path) else None

    def _after_batch(self, run):
        if self.save_freq != "epoch" and run.batches_done % self.save_freq == 0:
            from . import backup

            backup.save(self.path, run)

    def _after_epoch(self, run):
        if self.save_freq == "epoch":
            from . import backup

            backup.save(self.path, run)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            from .backup import remove

            remove(self.path)


class CSVLogger(Callback):
    """Append each epoch's logs as a row of a CSV file."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self.keys = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.writer = None
        if exists:
            with open(self.filename) as f:
                header = f.readline().strip()
            self.keys = header.split(self.separator)[1:] if header else None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if self.writer is None:
            self.writer = csv.writer(self.file, delimiter=self.separator)
            if self.file.tell() == 0:
                self.writer.writerow(["epoch"] + self.keys)
        self.writer.writerow([epoch] + [logs.get(k, "") for k in self.keys])
        self.file.flush()

    def on_train_end(self, logs=None):
        self.file.close()


class TerminateOnNaN(Callback):
    """Stop training as soon as the loss becomes NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training")
            self.model.stop_training = True


class TensorBoard(Callback):
    """Write TensorBoard logs during ``fit``, as Keras's ``TensorBoard`` callback does.

    ``log_dir/train`` gets ``epoch_<name>`` scalars per epoch (loss, metrics and
    ``epoch_learning_rate``), ``log_dir/validation`` the validation ones (``val_loss`` is
    ``epoch_loss`` there). ``update_freq="batch"`` (or an int N: every N batches) also writes
    ``batch_<name>`` scalars at the global batch number. Every ``histogram_freq`` epochs (0: never)
    the weights (``<name>/histogram``) and the gradients of the epoch's last training batch
    (``<name>/gradient``) become histograms. ``write_graph`` draws the model traced by ember's
    compiler once; the optimizer, learning rate, batch size and epochs (plus ``hparams``, a dict
    of your own) go to the HParams dashboard, with the epoch scalars as its metrics.
    Run ``tensorboard --logdir logs`` to view.
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, update_freq="epoch", hparams=None):
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ValueError(f"TensorBoard: histogram_freq must be an int >= 0 (0: no histograms), got "
                             f"{histogram_freq!r}")
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int)
                                       or update_freq < 1):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch', 'batch' or an int >= 1, got {update_freq!r}")
        if hparams is not None and not isinstance(hparams, dict):
            raise TypeError(f"TensorBoard: hparams must be a dict of name -> value, got {type(hparams).__name__}")
        self.log_dir, self.histogram_freq = os.fspath(log_dir), histogram_freq
        self.write_graph, self.update_freq, self.hparams = write_graph, update_freq, dict(hparams or {})
        self._writers = {}

    def _writer(self, run):
        writer = self._writers.get(run)
        if writer is None:
            from ..utils.tensorboard import SummaryWriter

            writer = self._writers[run] = SummaryWriter(os.path.join(self.log_dir, run) if run else self.log_dir)
        return writer

    def on_train_begin(self, logs=None):
        self._writers = {}
        self._writer("train")  # fails here, before any training, if tensorboardX is missing
        self._global_batch = 0
        self._epoch_tags = {}  # (run, tag) written per epoch: the HParams session's metrics
        self._graph_pending, self._hparams_pending = self.write_graph, True
        self._warned = set()
        self._write_once()

    def _warn(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            import warnings

            warnings.warn(f"TensorBoard: {message}", RuntimeWarning, stacklevel=3)

    def _write_once(self, last_chance=False):
        """The graph and the hyperparameters, as soon as the model's input shape and optimizer
        are known (at train begin, or after the first batch for lazily built models)."""
        model = self.model
        if self._graph_pending and (model._built_input_shape is not None and not model._unbuilt_layers()
                                    or last_chance):
            self._graph_pending = False
            try:
                self._writer("train").add_graph(model)
            except Exception as exc:  # noqa: BLE001 - a graph the tracer cannot draw must not stop training
                self._warn("graph", f"the model graph was not written: {exc}")
        if self._hparams_pending and model.optimizer is not None:
            self._hparams_pending = False
            from ..utils.tensorboard import hparams_summaries

            opt = model.optimizer
            state = getattr(model, "_fit_state", {})
            values = {"optimizer": type(opt).__name__, "learning_rate": opt.param_groups[0]["lr"],
                      "batch_size": state.get("batch_size"), "epochs": state.get("epochs"), **self.hparams}
            self._hparam_values = values
            self._writer("").add_summary(hparams_summaries(values, [])[1])

    def on_train_batch_end(self, batch, logs=None):
        self._global_batch += 1
        if self._graph_pending or self._hparams_pending:
            self._write_once(last_chance=True)
        if self.update_freq != "epoch" and self._global_batch % self.update_freq == 0:
            writer = self._writer("train")
            for name, value in (logs or {}).items():
                if isinstance(value, (int, float)):
                    writer.add_scalar("batch_" + name, value, self._global_batch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        opt = self.model.optimizer
        if "learning_rate" not in train and opt is not None:
            train["learning_rate"] = opt.param_groups[0]["lr"]
        for run, values in (("train", train), ("validation", {k[4:]: v for k, v in logs.items()
                                                              if k.startswith("val_")})):
            for name, value in values.items():
                if isinstance(value, (int, float, np.floating, np.integer)):
                    self._writer(run).add_scalar("epoch_" + name, value, epoch)
                    self._epoch_tags[(run, "epoch_" + name)] = None
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._histograms(epoch)

    def _histograms(self, epoch):
        writer = self._writer("train")
        missing = []
        named = list(self.model.named_parameters()) + [(n, b) for n, b in self.model.named_buffers()
                                                       if b.dtype.name.startswith("float")]
        for name, tensor in named:
            self._histogram(writer, f"{name}/histogram", tensor, epoch)
            if getattr(tensor, "requires_grad", False):
                # fit's step zeroes gradients before backward, so after the epoch's last step they
                # still hold that batch's gradients
                if tensor.grad is None:
                    missing.append(name)
                else:
                    self._histogram(writer, f"{name}/gradient", tensor.grad, epoch)
        if missing:
            self._warn("grads", f"no gradients at the end of epoch {epoch + 1} for {missing} (train_step "
                                "cleared them, or they were not used); their gradient histograms are skipped")

    def _histogram(self, writer, tag, tensor, epoch):
        try:
            writer.add_histogram(tag, tensor, epoch)
        except ValueError as exc:  # NaN weights: keep training (TerminateOnNaN decides), say so once
            self._warn(("nan", tag), str(exc))

    def on_train_end(self, logs=None):
        if not self._hparams_pending:
            from ..utils.tensorboard import hparams_summaries

            experiment, _, end = hparams_summaries(self._hparam_values, list(self._epoch_tags))
            self._writer("").add_summary(experiment)
            self._writer("").add_summary(end)
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class LambdaCallback(Callback):
    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None):
        for name, fn in list(locals().items()):
            if name != "self" and fn is not None:
                setattr(self, name, fn)
