"""The Keras-style loops behind ``Model.compile/fit/evaluate/predict``.

The per-batch path is kept as close as possible to a hand-written PyTorch loop: slicing
arrays, forward, loss, backward, optimizer step, and metric counts on NumPy arrays. Logs for
the progress bar are formatted at most ten times a second.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np

from ..autograd.engine import no_grad
from ..tensor import Tensor
from . import losses as losses_mod
from . import metrics as metrics_mod
from .callbacks import BackupAndRestore, CallbackList, History, ProgbarLogger

_OPTIMIZERS = {  # Keras's default hyperparameters for optimizers given by name
    "adam": ("Adam", {"lr": 1e-3, "eps": 1e-7}),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 0.004, "eps": 1e-7}),
    "sgd": ("SGD", {"lr": 0.01}),
    "rmsprop": ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
    "adagrad": ("Adagrad", {"lr": 1e-3, "initial_accumulator_value": 0.1, "eps": 1e-7}),
}


# ---- compile ------------------------------------------------------------------------------

def compile(model, optimizer, loss, metrics, jit_compile):
    from .. import optim

    if loss is None:
        raise ValueError("compile: a loss is required, e.g. loss='sparse_categorical_crossentropy' "
                         "(probabilities) or loss='cross_entropy' (logits, PyTorch style)")
    if isinstance(optimizer, str):
        if optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"compile: unknown optimizer {optimizer!r}; expected one of "
                             f"{sorted(_OPTIMIZERS)} or an ember Optimizer instance")
        opt_spec, opt = optimizer.lower(), None
    elif isinstance(optimizer, optim.Optimizer):
        opt_spec, opt = None, optimizer
    else:
        raise TypeError(f"compile: optimizer must be a name or an ember Optimizer, got "
                        f"{type(optimizer).__name__}")
    loss_obj = losses_mod.get(loss)
    metric_objs = [metrics_mod.get(m, loss_obj) for m in (metrics or [])]
    names = [m.name for m in metric_objs]
    if len(set(names)) != len(names):
        raise ValueError(f"compile: metric names must be unique, got {names}")
    steps = None
    if jit_compile:
        from ..compiler.jit import jit

        # one compiled graph per input signature for forward + loss + backward + update, and
        # one for evaluation (traced without gradients); model.train_step may be overridden
        steps = SimpleNamespace(train=jit(lambda x, y: model.train_step(x, y)),
                                test=jit(lambda x, y: model.test_step(x, y)),
                                predict=jit(lambda x: _call(model, x)))
    object.__setattr__(model, "compiled", SimpleNamespace(loss=loss_obj, metrics=metric_objs, optimizer_spec=opt_spec,
                                                          jit=steps))
    object.__setattr__(model, "optimizer", opt)
    model._ensure_built()
    if opt is None and not model._unbuilt_layers():
        _optimizer(model)


def _optimizer(model):
    """The model's optimizer, created on first use for a name (after lazy layers are built)."""
    opt = model.optimizer
    if opt is None:
        from .. import optim

        cls_name, kw = _OPTIMIZERS[model.compiled.optimizer_spec]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = getattr(optim, cls_name)(params, **kw)
        object.__setattr__(model, "optimizer", opt)
    return opt


def _require_compiled(model, what):
    if getattr(model, "compiled", None) is None:
        raise RuntimeError(f"{what}: call model.compile(optimizer=..., loss=...) first")


# ---- data ---------------------------------------------------------------------------------

def _float_dtype(model):
    p = next(iter(model.parameters()), None)
    return p.data.dtype if p is not None and p.data.dtype.kind == "f" else np.dtype(np.float32)


def _as_array(a, float_dtype):
    if a is None:
        return None
    if isinstance(a, (tuple, list)) and a and not np.isscalar(a[0]) and hasattr(a[0], "__len__") and \
            isinstance(a[0], (Tensor, np.ndarray)):
        return tuple(_as_array(v, float_dtype) for v in a)
    arr = a.data if isinstance(a, Tensor) else np.asarray(a)
    if arr.dtype.kind == "f" and arr.dtype != float_dtype:
        arr = arr.astype(float_dtype)
    return arr


def _length(x):
    return len(x[0]) if isinstance(x, tuple) else len(x)


def _take(x, idx):
    if isinstance(x, tuple):
        return tuple(Tensor._make(v[idx]) for v in x)
    return Tensor._make(x[idx])


class ArrayBatches:
    """Batches of in-memory arrays; shuffled per epoch with ember's global generator."""

    def __init__(self, x, y, batch_size, shuffle):
        self.x, self.y, self.batch_size, self.shuffle = x, y, int(batch_size), shuffle
        self.n = _length(x)
        if y is not None and len(y) != self.n:
            raise ValueError(f"x has {self.n} samples but y has {len(y)}; they must match")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        from ..random import default_generator

        order = default_generator.np.permutation(self.n) if self.shuffle else None
        for start in range(0, self.n, self.batch_size):
            idx = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            yield _take(self.x, idx), (None if self.y is None else Tensor._make(self.y[idx]))


def _is_batch_list(x):
    """A list of batches, [(x, y), ...] or [{"x": ..}, ...], rather than array data or a list
    of arrays (one per model input)."""
    if not isinstance(x, list) or not x:
        return False
    first = x[0]
    return isinstance(first, dict) or (isinstance(first, (tuple, list)) and len(first) > 0 and
                                       all(isinstance(v, (Tensor, np.ndarray)) for v in first))


def _is_arrays(x, y):
    return isinstance(x, (np.ndarray, Tensor)) or (isinstance(x, list) and not _is_batch_list(x)) or \
        (isinstance(x, tuple) and y is not None)


def _adapt(x, y, batch_size, shuffle, float_dtype):
    """Batches for arrays/tensors (with y) or any iterable of (x, y) batches."""
    if _is_arrays(x, y):
        xs, ys = _as_array(x, float_dtype), _as_array(y, float_dtype)
        return ArrayBatches(xs, ys, batch_size, shuffle)
    if y is not None:
        raise ValueError("y must not be given when x is a DataLoader or an iterable of (x, y) batches")
    if hasattr(x, "__iter__"):
        return x
    raise TypeError(f"x must be an array, a tensor, or an iterable of batches, got {type(x).__name__}")


def _split_batch(batch):
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"], batch.get("y")
    return batch, None


def _as_tensor(v):
    if v is None or isinstance(v, Tensor):
        return v
    if isinstance(v, tuple):
        return tuple(_as_tensor(t) for t in v)
    return Tensor._make(np.asarray(v))


def _call(model, x):
    return model(*x) if isinstance(x, tuple) else model(x)


def _batch_size(x):
    return len(x[0]) if isinstance(x, tuple) else len(x)


# ---- steps ------------------------------------------------------------------------------------

def default_train_step(model, x, y):
    y_pred = _call(model, x)
    loss = model.compiled.loss(y, y_pred)
    opt = _optimizer(model)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss, y_pred


def default_test_step(model, x, y):
    y_pred = _call(model, x)
    return model.compiled.loss(y, y_pred), y_pred


def _update_metrics(metrics, y, y_pred):
    if not metrics or y is None:
        return
    yt = y.data
    yp = y_pred.data
    for m in metrics:
        m.update_state(yt, yp)


# ---- fit / evaluate / predict -----------------------------------------------------------------

def _backup_of(callbacks, resume_from):
    """The fit's BackupAndRestore callback (``resume_from=dir`` adds one), or None."""
    if resume_from is not None:
        if any(isinstance(c, BackupAndRestore) for c in callbacks):
            raise ValueError("fit: pass resume_from= or a BackupAndRestore callback, not both")
        callbacks.append(BackupAndRestore(resume_from))
    found = [c for c in callbacks if isinstance(c, BackupAndRestore)]
    if len(found) > 1:
        raise ValueError(f"fit: at most one BackupAndRestore callback, got {len(found)}")
    return found[0] if found else None


def fit(model, x, y, epochs, batch_size, validation_data, validation_split, shuffle, callbacks, verbose,
        initial_epoch, steps_per_epoch, resume_from=None, distributed=False):
    _require_compiled(model, "fit")
    callbacks = list(callbacks or [])
    backup = _backup_of(callbacks, resume_from)
    fdt = _float_dtype(model)
    val = None
    if validation_split and validation_data is None:
        if not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
        if not _is_arrays(x, y):
            raise ValueError("validation_split works with array inputs; pass validation_data for loaders")
        xs, ys = _as_array(x, fdt), _as_array(y, fdt)
        n = _length(xs)
        cut = int(n * (1 - validation_split))
        sl = lambda a, s: tuple(v[s] for v in a) if isinstance(a, tuple) else a[s]  # noqa: E731
        x, y = sl(xs, slice(0, cut)), ys[:cut]
        val = ArrayBatches(sl(xs, slice(cut, None)), ys[cut:], batch_size, False)
    elif validation_data is not None:
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2 and \
                not _is_batch_list(validation_data):
            val = _adapt(validation_data[0], validation_data[1], batch_size, False, fdt)
        else:  # a loader / iterable of (x, y) batches
            val = _adapt(validation_data, None, batch_size, False, fdt)
    train = _adapt(x, y, batch_size, shuffle, fdt)
    if model.optimizer is None and isinstance(train, ArrayBatches) and not isinstance(train.x, tuple) \
            and model._unbuilt_layers():
        # build lazy layers from the data's shape now, so callbacks see the optimizer from the start
        model.build((None,) + train.x.shape[1:], train.x.dtype.name)
    if model.optimizer is None and not model._unbuilt_layers():
        _optimizer(model)
    dist = None
    if distributed:  # data-parallel over MPI ranks: ember/distributed/fit.py
        if backup is not None:
            # every rank would write (and race on) one backup file holding only its own RNG state
            raise ValueError("fit: BackupAndRestore / resume_from cannot be combined with distributed=True yet; "
                             "save checkpoints with ModelCheckpoint (rank 0 writes them) instead")
        from ..distributed.fit import DistributedFit

        dist = DistributedFit(model)
        train, callbacks, verbose = dist.setup(train, callbacks, verbose)
    try:
        steps = len(train)
    except TypeError:
        steps = None
    if steps_per_epoch is not None:
        steps = steps_per_epoch if steps is None else min(steps, steps_per_epoch)

    history = History()
    cbs = ([ProgbarLogger(verbose)] if verbose else []) + callbacks + [history]
    object.__setattr__(model, "history", history)
    # batch_size: what callbacks report (a loader's own batch size; fit's argument applies to arrays only)
    object.__setattr__(model, "_fit_state", {"epochs": epochs, "steps": steps,
                                             "batch_size": getattr(train, "batch_size", None)})
    object.__setattr__(model, "stop_training", False)
    cb = CallbackList(cbs, model)
    metrics = model.compiled.metrics
    show_metrics = verbose == 1
    jitted = model.compiled.jit
    train_step = jitted.train if jitted is not None else model.train_step
    cb.on_train_begin()
    run = resume = None
    if backup is not None:
        from .backup import FitRun

        run = FitRun(model, train, callbacks, history, metrics, initial_epoch)
        resume = backup._read(run)
        if resume is not None:
            initial_epoch = resume.epoch
            if not resume.mid_epoch:  # at an epoch boundary: restore now; mid-epoch: after on_epoch_begin
                resume.apply(run)
                resume = None
    for epoch in range(initial_epoch, epochs):
        if model.stop_training:  # only after resuming a run that had stopped
            break
        model.train()
        for m in metrics:
            m.reset_state()
        cb.on_epoch_begin(epoch)
        total, count, last_shown, shown, first = 0.0, 0, 0.0, {}, 0
        if resume is not None:
            batches = resume.apply(run)
            total, count, first, resume = run.total, run.count, run.step, None
            if model.stop_training:  # the backed-up batch had stopped training (e.g. TerminateOnNaN)
                batches = iter(())
            for c in cbs:
                if isinstance(c, ProgbarLogger) and c.bar is not None:
                    c.bar.update(first)
        else:
            if run is not None:
                run.mark_epoch_start()
            batches = train
        for step, batch in enumerate(batches, start=first):
            if steps is not None and step >= steps:
                break
            xb, yb = _split_batch(batch)
            xb, yb = _as_tensor(xb), _as_tensor(yb)
            cb.on_train_batch_begin(step)
            loss, y_pred = train_step(xb, yb)
            n = _batch_size(xb)
            total += float(loss.data) * n
            count += n
            _update_metrics(metrics, yb, y_pred)
            logs = {"loss": total / count}
            if show_metrics and metrics:
                now = time.perf_counter()
                if now - last_shown > 0.1:  # metric results cost a reduction: refresh them at most 10x/s
                    last_shown = now
                    shown = {m.name: m.result() for m in metrics}
                logs.update(shown)
            cb.on_train_batch_end(step, logs)
            if run is not None:
                run.epoch, run.step, run.total, run.count = epoch, step + 1, total, count
                run.batches_done += 1
                backup._after_batch(run)
            if model.stop_training:
                break
        if count == 0:
            raise ValueError("fit: the training data produced no batches")
        epoch_logs = {"loss": total / count}
        epoch_logs.update((m.name, m.result()) for m in metrics)
        if val is not None:
            val_logs = _evaluate_batches(model, val)
            epoch_logs.update(("val_" + k, v) for k, v in val_logs.items())
        if dist is not None:
            epoch_logs = dist.average_logs(epoch_logs, count)
        cb.on_epoch_end(epoch, epoch_logs)
        if run is not None:
            run.epoch, run.step = epoch + 1, 0
            backup._after_epoch(run)
        if model.stop_training:
            break
    cb.on_train_end()
    return history


def _evaluate_batches(model, batches, verbose=0):
    model.eval()
    metrics = model.compiled.metrics
    jitted = getattr(model.compiled, "jit", None)
    test_step = jitted.test if jitted is not None else model.test_step
    for m in metrics:
        m.reset_state()
    total, count = 0.0, 0
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        try:
            total_steps = len(batches)
        except TypeError:
            total_steps = None
        bar = tqdm(total=total_steps, desc="evaluate", unit="step", leave=True, dynamic_ncols=True)
    with no_grad():
        for batch in batches:
            xb, yb = _split_batch(batch)
            xb, yb = _as_tensor(xb), _as_tensor(yb)
            loss, y_pred = test_step(xb, yb)
            n = _batch_size(xb)
            total += float(loss.data) * n
            count += n
            _update_metrics(metrics, yb, y_pred)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if count == 0:
        raise ValueError("evaluate: the data produced no batches")
    logs = {"loss": total / count}
    logs.update((m.name, m.result()) for m in metrics)
    return logs


def evaluate(model, x, y, batch_size, verbose, return_dict):
    _require_compiled(model, "evaluate")
    logs = _evaluate_batches(model, _adapt(x, y, batch_size, False, _float_dtype(model)), verbose)
    return logs if return_dict else list(logs.values())


def predict(model, x, batch_size, verbose):
    model.eval()
    fdt = _float_dtype(model)
    if _is_arrays(x, None) or isinstance(x, tuple):
        batches = ArrayBatches(_as_array(x, fdt), None, batch_size, False)
    else:
        batches = x
    outs = []
    compiled = getattr(model, "compiled", None)
    forward = compiled.jit.predict if compiled is not None and compiled.jit is not None else \
        (lambda xb: _call(model, xb))
    with no_grad():
        for batch in batches:
            xb, _ = _split_batch(batch)
            out = forward(_as_tensor(xb))
            outs.append(out.data if isinstance(out, Tensor) else np.asarray(out))
    if not outs:
        raise ValueError("predict: no input batches")
    return np.concatenate(outs, axis=0)
