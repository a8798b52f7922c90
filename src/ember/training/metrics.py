"""Metrics computed over a whole epoch (streaming state), not averaged per batch.

Each metric keeps counts in ``update_state(y_true, y_pred)`` (NumPy arrays) and reports
``result()``; ``fit`` resets them each epoch.
"""

from __future__ import annotations

import numpy as np


class Metric:
    name = "metric"

    def reset_state(self):
        raise NotImplementedError

    def update_state(self, y_true: np.ndarray, y_pred: np.ndarray):
        raise NotImplementedError

    def result(self) -> float:
        raise NotImplementedError

    def __init__(self):
        self.reset_state()


def _labels(y_true, y_pred, axis):
    """Class indices from y_true, whether sparse (one dim fewer, or a trailing 1) or one-hot."""
    if y_true.ndim == y_pred.ndim and y_true.shape == y_pred.shape and y_pred.shape[axis] > 1:
        return y_true.argmax(axis)
    if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
        return np.squeeze(y_true, axis)
    return y_true


class Accuracy(Metric):
    """Fraction of correct predictions. ``kind``: 'sparse' (class indices), 'categorical'
    (one-hot), 'binary' (thresholded), or None to decide from the shapes of the first batch."""

    name = "accuracy"

    def __init__(self, kind=None, axis=-1, threshold=0.5, name="accuracy"):
        self.kind, self.axis, self.threshold, self.name = kind, axis, threshold, name
        super().__init__()

    def reset_state(self):
        self.correct = 0
        self.count = 0

    def _kind(self, y_true, y_pred):
        if self.kind in ("sparse", "categorical"):
            return "classes"
        if self.kind == "binary" or y_pred.ndim <= 1 or y_pred.shape[self.axis] == 1:
            return "binary"
        return "classes"

    def update_state(self, y_true, y_pred):
        if self._kind(y_true, y_pred) == "classes":
            pred = y_pred.argmax(self.axis)
            true = _labels(y_true, y_pred, self.axis).reshape(pred.shape)
        else:
            pred = (y_pred > self.threshold)
            true = (y_true.reshape(pred.shape) > 0.5)
        self.correct += int((pred == true).sum())
        self.count += pred.size

    def result(self):
        return self.correct / self.count if self.count else 0.0


class TopKCategoricalAccuracy(Metric):
    name = "top_k_accuracy"

    def __init__(self, k=5, axis=-1, name=None):
        self.k, self.axis = k, axis
        self.name = name or f"top_{k}_accuracy"
        super().__init__()

    def reset_state(self):
        self.correct = 0
        self.count = 0

    def update_state(self, y_true, y_pred):
        pred = np.moveaxis(y_pred, self.axis, -1)
        true = _labels(y_true, y_pred, self.axis).reshape(pred.shape[:-1])
        k = min(self.k, pred.shape[-1])
        top = np.argpartition(-pred, k - 1, axis=-1)[..., :k]
        self.correct += int((top == true[..., None]).any(-1).sum())
        self.count += true.size

    def result(self):
        return self.correct / self.count if self.count else 0.0


class _Confusion(Metric):
    """True/false positives/negatives: binary (thresholded) or multi-class (argmax, macro
    average over classes). ``kind`` as for Accuracy: 'sparse'/'categorical' make (N, C)
    predictions multi-class whether labels are indices or one-hot; 'binary' thresholds every
    output (multi-label); None decides from the shapes (labels shaped like the predictions
    are multi-label)."""

    def __init__(self, threshold=0.5, axis=-1, average="macro", kind=None, name=None):
        self.threshold, self.axis, self.average, self.kind = threshold, axis, average, kind
        if name:
            self.name = name
        super().__init__()

    def reset_state(self):
        self.tp = self.fp = self.fn = None

    def update_state(self, y_true, y_pred):
        if y_pred.ndim >= 2 and y_pred.shape[self.axis] > 1 and self.kind != "binary" and \
                (self.kind in ("sparse", "categorical") or y_true.shape != y_pred.shape):
            c = y_pred.shape[self.axis]
            pred = y_pred.argmax(self.axis).reshape(-1)
            true = _labels(y_true, y_pred, self.axis).reshape(-1).astype(np.int64)
            classes = np.arange(c)
            p, t = pred[:, None] == classes, true[:, None] == classes
        else:
            p = (y_pred.reshape(-1) > self.threshold)[:, None]
            t = (y_true.reshape(-1) > 0.5)[:, None]
        tp, fp, fn = (p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0)
        if self.tp is None:
            self.tp, self.fp, self.fn = tp, fp, fn
        else:
            self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn

    def _ratio(self, num, den):
        if self.tp is None:
            return 0.0
        if self.average == "micro":
            num, den = num.sum(), den.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 0, num / np.maximum(den, 1), 0.0)
        return float(np.mean(r))


class Precision(_Confusion):
    name = "precision"

    def result(self):
        return self._ratio(self.tp, self.tp + self.fp) if self.tp is not None else 0.0


class Recall(_Confusion):
    name = "recall"

    def result(self):
        return self._ratio(self.tp, self.tp + self.fn) if self.tp is not None else 0.0


class F1Score(_Confusion):
    name = "f1"

    def result(self):
        if self.tp is None:
            return 0.0
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


class _MeanOver(Metric):
    """Mean of a per-element quantity over every element seen this epoch."""

    def reset_state(self):
        self.total = 0.0
        self.count = 0

    def update_state(self, y_true, y_pred):
        v = self.elementwise(y_true.reshape(y_pred.shape).astype(np.float64), y_pred.astype(np.float64))
        self.total += float(v.sum())
        self.count += v.size

    def result(self):
        return self.total / self.count if self.count else 0.0


class MeanAbsoluteError(_MeanOver):
    name = "mae"

    @staticmethod
    def elementwise(t, p):
        return np.abs(t - p)


class MeanSquaredError(_MeanOver):
    name = "mse"

    @staticmethod
    def elementwise(t, p):
        return (t - p) ** 2


class AUC(Metric):
    """Area under the ROC curve over all scores of the epoch (exact, ties averaged)."""

    name = "auc"

    def reset_state(self):
        self.scores, self.labels = [], []

    def update_state(self, y_true, y_pred):
        if y_pred.ndim >= 2 and y_pred.shape[-1] > 1 and y_true.shape != y_pred.shape:
            y_true = np.eye(y_pred.shape[-1])[y_true.reshape(-1).astype(np.int64)]  # one-vs-rest
        self.scores.append(y_pred.reshape(-1).astype(np.float64))
        self.labels.append(y_true.reshape(-1) > 0.5)

    def result(self):
        if not self.scores:
            return 0.0
        s, y = np.concatenate(self.scores), np.concatenate(self.labels)
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos == 0 or n_neg == 0:
            return 0.0
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s))
        sorted_s = s[order]
        # average ranks over ties
        _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
        avg = first + (counts + 1) / 2.0
        ranks[order] = np.repeat(avg, counts)
        return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class MeanMetricWrapper(Metric):
    """A user function ``fn(y_true, y_pred) -> per-sample or scalar values``, averaged over
    samples across the epoch."""

    def __init__(self, fn, name=None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "metric")
        super().__init__()

    def reset_state(self):
        self.total = 0.0
        self.count = 0

    def update_state(self, y_true, y_pred):
        v = self.fn(y_true, y_pred)
        v = np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, dtype=np.float64)
        n = len(y_pred) if v.ndim == 0 else v.size
        self.total += float(v.mean()) * n
        self.count += n

    def result(self):
        return self.total / self.count if self.count else 0.0


def get(identifier, loss=None) -> Metric:
    """A Metric from a name (resolved against the loss, as Keras does), a Metric or a callable."""
    if isinstance(identifier, Metric):
        return identifier
    axis = 1 if getattr(loss, "name", "") in ("cross_entropy", "CrossEntropyLoss") else -1
    binary_threshold = 0.0 if getattr(loss, "accuracy_kind", None) == "binary" and \
        getattr(loss, "from_logits", False) else 0.5
    if identifier in ("accuracy", "acc"):
        return Accuracy(kind=getattr(loss, "accuracy_kind", None), axis=axis, threshold=binary_threshold,
                        name="accuracy")
    if identifier in ("top_k_accuracy", "top_5_accuracy", "sparse_top_k_categorical_accuracy"):
        return TopKCategoricalAccuracy(5, axis=axis, name=identifier)
    table = {"precision": Precision, "recall": Recall, "f1": F1Score, "f1_score": F1Score}
    if identifier in table:
        return table[identifier](threshold=binary_threshold, axis=axis,
                                 kind=getattr(loss, "accuracy_kind", None))
    simple = {"mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
              "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError, "auc": AUC}
    if identifier in simple:
        return simple[identifier]()
    if callable(identifier):
        return MeanMetricWrapper(identifier)
    raise ValueError(f"unknown metric {identifier!r}; expected one of accuracy, top_k_accuracy, "
                     "precision, recall, f1, mae, mse, auc, a Metric or a callable")
