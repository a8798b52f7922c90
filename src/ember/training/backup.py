"""Resumable ``fit``: the state of a training run, written to and restored from one checkpoint.

A backup is one ``save_checkpoint`` file (safetensors + JSON, written atomically, never
unpickled) holding everything that decides what the rest of the run computes:

* the weights and the optimizer state (moments, step counts, learning rates);
* where the run is: the epoch, the batches done in it, the batches done in all;
* ember's RNG state now and at the start of the epoch (the epoch's shuffle order is drawn from
  it), and the same for the training data's own shuffling (a DataLoader's ``seed``/epoch counter
  or its ``generator``, a sampler's ``generator``);
* mid-epoch: the running loss sum and the metrics' counts, so the epoch's logs come out the same;
* each callback's ``get_state()`` (EarlyStopping and ReduceLROnPlateau counters, best values and
  best weights) and the History so far.

Resuming mid-epoch replays the epoch's batch order from the epoch-start RNG state, skips the
batches already trained on (loading them, not training on them), then puts the RNG where it was
after the last backed-up batch.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np

BACKUP_FILE = "training-backup.ember"


# ---- JSON + arrays encoding of callback and metric state ----------------------------------------

def encode(value, arrays: dict, key: str):
    """``value`` as JSON, with NumPy arrays moved into ``arrays`` (under names from ``key``)."""
    from ..tensor import Tensor

    if isinstance(value, Tensor):
        value = value.data
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, arrays, f"{key}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, arrays, f"{key}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode(v, arrays, f"{key}/{k}") for k, v in value.items()}}
    raise TypeError(f"BackupAndRestore: cannot store {key} (a {type(value).__name__}); training state must be "
                    "numbers, strings, arrays, and lists/tuples/dicts of them")


def decode(value, arrays: dict):
    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if "__array__" in value:
            return np.array(arrays[value["__array__"]])
        if "__tuple__" in value:
            return tuple(decode(v, arrays) for v in value["__tuple__"])
        return {k: decode(v, arrays) for k, v in value["__dict__"].items()}
    return value


# ---- metrics and data -------------------------------------------------------------------------------

def _metric_fields(metric):
    """The attributes ``reset_state`` sets: a metric's streaming state."""
    probe = copy.copy(metric)
    probe.__dict__ = {}
    type(metric).reset_state(probe)
    return sorted(probe.__dict__)


def metric_state(metric) -> dict:
    return {k: getattr(metric, k) for k in _metric_fields(metric)}


def _generators(data):
    """(name, ember Generator) pairs that shuffle ``data`` besides the global generator."""
    from ..random import Generator

    found = []
    for name, owner in (("generator", data), ("sampler.generator", getattr(data, "sampler", None))):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, Generator):
            found.append((name, gen))
    return found


def data_state(data) -> dict:
    """What decides the next shuffle order of ``data`` apart from ember's global RNG."""
    from ..data.loader import DataLoader

    state = {name: gen.get_state() for name, gen in _generators(data)}
    if isinstance(data, DataLoader):
        state["epoch"] = data.epoch  # DataLoader(seed=s) shuffles epoch e with the seed (s, e)
    return state


def set_data_state(data, state: dict) -> None:
    for name, gen in _generators(data):
        if name in state:
            gen.set_state(state[name])
    if "epoch" in state:
        data.epoch = state["epoch"]


# ---- a run's position and state --------------------------------------------------------------------

class FitRun:
    """The mutable position of one ``fit`` call, as the backup sees it."""

    def __init__(self, model, data, callbacks, history, metrics, epoch):
        self.model, self.data, self.callbacks, self.history, self.metrics = model, data, callbacks, history, metrics
        self.epoch, self.step, self.total, self.count, self.batches_done = epoch, 0, 0.0, 0, 0
        self.epoch_rng = self.epoch_data = None

    def mark_epoch_start(self):
        """Called just before the epoch's first batch is drawn."""
        from ..random import get_rng_state

        self.epoch_rng, self.epoch_data = get_rng_state(), data_state(self.data)


def _callback_names(callbacks):
    return [f"{type(c).__module__}.{type(c).__qualname__}" for c in callbacks]


def save(path, run: FitRun) -> None:
    """Write ``run``'s state to ``path`` atomically (position: ``run.epoch``, ``run.step`` batches done)."""
    from .. import saving

    arrays = {}
    extra = {
        "step": run.step, "batches_done": run.batches_done, "total": run.total, "count": run.count,
        "stop_training": bool(run.model.stop_training),
        "data": data_state(run.data),
        "epoch_rng": run.epoch_rng if run.step else None,
        "epoch_data": run.epoch_data if run.step else None,
        "metrics": [encode(metric_state(m), arrays, f"metric/{i}") for i, m in enumerate(run.metrics)]
        if run.step else None,
        "callback_classes": _callback_names(run.callbacks),
        "callbacks": [encode(c.get_state(), arrays, f"callback/{i}") for i, c in enumerate(run.callbacks)],
        "history": encode(run.history.get_state(), arrays, "history"),
    }
    saving.save_checkpoint(path, run.model, run.model.optimizer, epoch=run.epoch, arrays=arrays, **extra)


class Backup:
    """A backup read from disk (checked), applied to a run with ``apply``."""

    def __init__(self, path, run: FitRun):
        from .. import saving

        self.path = path
        try:
            self.arrays, self.meta = saving.read_safetensors(path, saving.CHECKPOINT_FORMAT)
            self.extra = json.loads(self.meta.get("extra", "{}"))
            self.epoch = json.loads(self.meta.get("epoch", "null"))
            self.step = int(self.extra["step"])
        except (saving.ModelFileError, KeyError, TypeError, ValueError) as e:
            raise saving.ModelFileError(
                f"BackupAndRestore: cannot resume from the backup {path!r}: {e}. Delete it to train from the "
                "start") from None
        saved, now = self.extra.get("callback_classes", []), _callback_names(run.callbacks)
        if saved != now:
            raise ValueError(f"BackupAndRestore: the backup {path!r} was written by a fit with the callbacks "
                             f"{saved}, but this fit has {now}; pass the same callbacks to resume, or delete the "
                             "backup to train from the start")
        if run.model.optimizer is None:
            raise ValueError("BackupAndRestore: the model has no optimizer yet (its layers are built lazily from "
                             "the first batch), so there is nothing to restore into; start the model with "
                             "em.layers.Input(shape=...) or call model.build(input_shape) before fit")

    @property
    def mid_epoch(self) -> bool:
        return self.step > 0

    def apply(self, run: FitRun):
        """Restore everything; mid-epoch, also replay the epoch's order and return the iterator over
        its remaining batches (else None)."""
        from .. import saving
        from ..random import set_rng_state

        extra, arrays = self.extra, {k[len("extra/"):]: v for k, v in self.arrays.items() if k.startswith("extra/")}
        try:
            saving.apply_checkpoint(self.path, self.arrays, self.meta, run.model, run.model.optimizer,
                                    restore_rng=False)
        except (KeyError, ValueError) as e:
            raise ValueError(f"BackupAndRestore: the backup {self.path!r} does not fit this model or optimizer "
                             f"({e}); delete it to train from the start") from None
        for c, state in zip(run.callbacks, extra["callbacks"]):
            c.set_state(decode(state, arrays))
        run.history.set_state(decode(extra["history"], arrays))
        run.epoch, run.step, run.batches_done = self.epoch, self.step, int(extra["batches_done"])
        run.total, run.count = float(extra["total"]), int(extra["count"])
        run.model.stop_training = bool(extra["stop_training"])
        rng = json.loads(self.meta["rng"])
        if not self.mid_epoch:
            set_rng_state(rng)
            set_data_state(run.data, extra["data"])
            return None
        for m, state in zip(run.metrics, extra["metrics"]):
            m.__dict__.update(decode(state, arrays))
        run.epoch_rng, run.epoch_data = extra["epoch_rng"], extra["epoch_data"]
        set_rng_state(run.epoch_rng)  # the epoch's shuffle order, drawn again
        set_data_state(run.data, run.epoch_data)
        batches = iter(run.data)
        for skipped in range(self.step):
            if next(batches, None) is None:
                raise ValueError(f"BackupAndRestore: the backup {self.path!r} was taken after batch {self.step} of "
                                 f"epoch {self.epoch + 1}, but this epoch's data has only {skipped} batches; resume "
                                 "with the same data, or delete the backup")
        set_rng_state(rng)
        set_data_state(run.data, extra["data"])
        return batches


def remove(path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
