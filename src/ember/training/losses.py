"""Keras-named losses. Each is a callable ``loss(y_true, y_pred) -> scalar tensor``.

Keras semantics: the categorical cross-entropies take probabilities unless
``from_logits=True``; ``"cross_entropy"`` is PyTorch's (logits and class indices).
"""

from __future__ import annotations

from ..nn import functional as F
from ..ops import elementwise as ew
from ..ops import reduce as rd
from ..ops.helpers import as_tensor

_EPS = 1e-7


class Loss:
    name = "loss"
    #: what "accuracy" means for this loss: "sparse", "categorical" or "binary"
    accuracy_kind = None
    from_logits = False

    def __call__(self, y_true, y_pred):
        return self.call(as_tensor(y_true), y_pred)

    def call(self, y_true, y_pred):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


def _clipped_log(p):
    return ew.log(ew.clamp(p, _EPS, 1 - _EPS))


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"
    accuracy_kind = "sparse"

    def __init__(self, from_logits=False):
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        y_true = y_true.reshape(y_pred.shape[:-1]).long() if y_true.ndim == y_pred.ndim else y_true.long()
        logp = F.log_softmax(y_pred, -1) if self.from_logits else _clipped_log(y_pred)
        if y_pred.ndim > 2:
            logp = logp.movedim(-1, 1)
        return F.nll_loss(logp, y_true)


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"
    accuracy_kind = "categorical"

    def __init__(self, from_logits=False, label_smoothing=0.0):
        self.from_logits, self.label_smoothing = from_logits, label_smoothing

    def call(self, y_true, y_pred):
        y_true = y_true.astype(y_pred.dtype)
        if self.label_smoothing:
            y_true = y_true * (1 - self.label_smoothing) + self.label_smoothing / y_pred.shape[-1]
        if self.from_logits:
            logp = F.log_softmax(y_pred, -1)
        else:
            logp = _clipped_log(y_pred / rd.sum(y_pred, -1, keepdim=True))
        return rd.mean(-rd.sum(y_true * logp, -1))


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    accuracy_kind = "binary"

    def __init__(self, from_logits=False):
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        y_true = y_true.astype(y_pred.dtype).reshape(y_pred.shape)
        if self.from_logits:
            return F.binary_cross_entropy_with_logits(y_pred, y_true)
        p = ew.clamp(y_pred, _EPS, 1 - _EPS)
        return rd.mean(-(y_true * ew.log(p) + (1 - y_true) * ew.log(1 - p)))


class MeanSquaredError(Loss):
    name = "mse"

    def call(self, y_true, y_pred):
        return F.mse_loss(y_pred, y_true.astype(y_pred.dtype).reshape(y_pred.shape))


class MeanAbsoluteError(Loss):
    name = "mae"

    def call(self, y_true, y_pred):
        return F.l1_loss(y_pred, y_true.astype(y_pred.dtype).reshape(y_pred.shape))


class Huber(Loss):
    name = "huber"

    def __init__(self, delta=1.0):
        self.delta = delta

    def call(self, y_true, y_pred):
        return F.huber_loss(y_pred, y_true.astype(y_pred.dtype).reshape(y_pred.shape), delta=self.delta)


class TorchCrossEntropy(Loss):
    """PyTorch's cross-entropy: logits (N, C[, ...]) and class indices or probabilities."""

    name = "cross_entropy"
    from_logits = True

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing

    @property
    def accuracy_kind(self):
        return "sparse"

    def call(self, y_true, y_pred):
        return F.cross_entropy(y_pred, y_true, label_smoothing=self.label_smoothing)


class FunctionLoss(Loss):
    """Wraps a user callable ``fn(y_true, y_pred)`` (Keras order)."""

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", "loss")

    def call(self, y_true, y_pred):
        out = self.fn(y_true, y_pred)
        return rd.mean(out) if out.ndim else out


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "huber": Huber,
    "cross_entropy": TorchCrossEntropy,
}


def get(identifier) -> Loss:
    """A Loss from a name, a Loss instance, a module (e.g. nn.CrossEntropyLoss) or a callable."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            raise ValueError(f"unknown loss {identifier!r}; expected one of {sorted(_BY_NAME)} "
                             "or a callable loss(y_true, y_pred)")
        return cls()
    if callable(identifier):
        from ..nn.module import Module

        if isinstance(identifier, Module):  # PyTorch-style loss module: (input, target) order
            loss = FunctionLoss(lambda y_true, y_pred: identifier(y_pred, y_true))
            loss.name = type(identifier).__name__
            if type(identifier).__name__ in ("CrossEntropyLoss", "NLLLoss"):
                loss.accuracy_kind = "sparse"
            return loss
        return FunctionLoss(identifier)
    raise TypeError(f"loss must be a name, a Loss or a callable, got {type(identifier).__name__}")
