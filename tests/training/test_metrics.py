"""Metrics against scikit-learn, computed over the whole epoch (streamed in uneven batches),
not as an average of per-batch values."""

import numpy as np
import pytest
from sklearn import metrics as skm

import ember as em
from ember import layers as L
from ember.training import losses
from ember.training import metrics as M

rng = np.random.default_rng(0)
N, C = 53, 4
SCORES = rng.random((N, C)).astype(np.float32)
PROBS = SCORES / SCORES.sum(1, keepdims=True)
LABELS = rng.integers(0, C, N)
ONEHOT = np.eye(C, dtype=np.float32)[LABELS]
BIN_Y = rng.integers(0, 2, N)
BIN_P = rng.random(N).astype(np.float32)
# ties between scores, which the rank-based AUC must average
TIED_P = np.round(rng.random(N), 1).astype(np.float32)
REG_Y = rng.standard_normal(N).astype(np.float32)
REG_P = (REG_Y + rng.standard_normal(N)).astype(np.float32)
TEN = rng.standard_normal((N, 10)).astype(np.float32)
TEN_Y = rng.integers(0, 10, N)
BATCHES = [1, 30, 2, 13, 7]  # uneven, sums to N
assert sum(BATCHES) == N


def _stream(metric, y_true, y_pred, sizes=BATCHES):
    metric.reset_state()
    start = 0
    for n in sizes:
        metric.update_state(y_true[start:start + n], y_pred[start:start + n])
        start += n
    return metric.result()


def _per_batch_mean(make, y_true, y_pred, sizes=BATCHES):
    vals, start = [], 0
    for n in sizes:
        vals.append(_stream(make(), y_true[start:start + n], y_pred[start:start + n], [n]))
        start += n
    return float(np.mean(vals))


# (id, metric factory, y_true, y_pred, scikit-learn reference on the whole data)
CASES = [
    ("accuracy-sparse", lambda: M.get("accuracy"), LABELS, PROBS,
     lambda: skm.accuracy_score(LABELS, PROBS.argmax(1))),
    ("accuracy-sparse-column", lambda: M.get("accuracy"), LABELS[:, None], PROBS,
     lambda: skm.accuracy_score(LABELS, PROBS.argmax(1))),
    ("accuracy-onehot", lambda: M.get("accuracy"), ONEHOT, PROBS,
     lambda: skm.accuracy_score(LABELS, PROBS.argmax(1))),
    ("accuracy-onehot-categorical-loss", lambda: M.get("accuracy", losses.get("categorical_crossentropy")),
     ONEHOT, PROBS, lambda: skm.accuracy_score(LABELS, PROBS.argmax(1))),
    ("accuracy-binary-column", lambda: M.get("accuracy"), BIN_Y, BIN_P[:, None],
     lambda: skm.accuracy_score(BIN_Y, BIN_P > 0.5)),
    ("accuracy-binary-flat", lambda: M.get("accuracy"), BIN_Y, BIN_P,
     lambda: skm.accuracy_score(BIN_Y, BIN_P > 0.5)),
    ("accuracy-binary-logits", lambda: M.get("accuracy", losses.BinaryCrossentropy(from_logits=True)),
     BIN_Y, BIN_P - 0.3, lambda: skm.accuracy_score(BIN_Y, BIN_P - 0.3 > 0)),
    ("top_k_accuracy", lambda: M.get("top_k_accuracy"), TEN_Y, TEN,
     lambda: skm.top_k_accuracy_score(TEN_Y, TEN, k=5, labels=np.arange(10))),
    ("top_3_accuracy-onehot", lambda: M.TopKCategoricalAccuracy(3), np.eye(10)[TEN_Y], TEN,
     lambda: skm.top_k_accuracy_score(TEN_Y, TEN, k=3, labels=np.arange(10))),
    ("precision-binary", lambda: M.get("precision"), BIN_Y, BIN_P,
     lambda: skm.precision_score(BIN_Y, BIN_P > 0.5)),
    ("recall-binary", lambda: M.get("recall"), BIN_Y, BIN_P[:, None],
     lambda: skm.recall_score(BIN_Y, BIN_P > 0.5)),
    ("f1-binary", lambda: M.get("f1"), BIN_Y, BIN_P,
     lambda: skm.f1_score(BIN_Y, BIN_P > 0.5)),
    ("precision-macro", lambda: M.get("precision"), LABELS, PROBS,
     lambda: skm.precision_score(LABELS, PROBS.argmax(1), average="macro")),
    ("recall-macro", lambda: M.get("recall"), LABELS, PROBS,
     lambda: skm.recall_score(LABELS, PROBS.argmax(1), average="macro")),
    ("f1-macro", lambda: M.get("f1"), LABELS, PROBS,
     lambda: skm.f1_score(LABELS, PROBS.argmax(1), average="macro")),
    # one-hot labels with a categorical loss: the same macro averages as for class indices
    ("precision-macro-onehot", lambda: M.get("precision", losses.get("categorical_crossentropy")),
     ONEHOT, PROBS, lambda: skm.precision_score(LABELS, PROBS.argmax(1), average="macro")),
    ("f1-macro-onehot", lambda: M.get("f1", losses.get("categorical_crossentropy")),
     ONEHOT, PROBS, lambda: skm.f1_score(LABELS, PROBS.argmax(1), average="macro")),
    ("mae", lambda: M.get("mae"), REG_Y, REG_P[:, None],
     lambda: skm.mean_absolute_error(REG_Y, REG_P)),
    ("mse", lambda: M.get("mse"), REG_Y, REG_P,
     lambda: skm.mean_squared_error(REG_Y, REG_P)),
    ("auc-binary", lambda: M.get("auc"), BIN_Y, BIN_P,
     lambda: skm.roc_auc_score(BIN_Y, BIN_P)),
    ("auc-binary-ties", lambda: M.get("auc"), BIN_Y, TIED_P[:, None],
     lambda: skm.roc_auc_score(BIN_Y, TIED_P)),
    ("auc-multiclass-micro", lambda: M.get("auc"), LABELS, PROBS,  # one-vs-rest, pooled
     lambda: skm.roc_auc_score(ONEHOT, PROBS, average="micro")),
]


@pytest.mark.parametrize("make,y_true,y_pred,ref", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_metric_over_uneven_batches_matches_sklearn_on_whole_epoch(make, y_true, y_pred, ref):
    expected = ref()
    got = _stream(make(), y_true, y_pred)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    # the data is chosen so that averaging per-batch values would give a different answer
    assert abs(_per_batch_mean(make, y_true, y_pred) - expected) > 1e-4
    # reset_state really starts over
    m = make()
    m.update_state(y_true[:5], y_pred[:5])
    np.testing.assert_allclose(_stream(m, y_true, y_pred), expected, rtol=1e-6, atol=1e-9)


def test_macro_average_counts_every_class_of_the_output():
    """A class that never occurs in an epoch counts as 0 in the macro average, as in
    scikit-learn with ``labels=range(C)`` (the model's classes)."""
    y = np.array([0, 1, 1, 2, 0, 2])
    p = np.eye(C)[[0, 1, 2, 2, 1, 2]] + 0.01
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        expected = fn(y, p.argmax(1), average="macro", labels=np.arange(C), zero_division=0)
        np.testing.assert_allclose(_stream(M.get(name), y, p, [4, 2]), expected, rtol=1e-9)


def test_metrics_from_evaluate_and_fit_are_over_the_whole_epoch():
    """With batch size 16 on 53 samples the last batch has 5; evaluate() and fit()'s history
    must still report the metric and the loss over all 53 samples."""
    x = rng.standard_normal((N, 6)).astype(np.float32)
    y = rng.integers(0, 3, N)
    em.manual_seed(1)
    model = em.Sequential([L.Dense(3, activation="softmax")])
    model.compile(em.optim.SGD(model.build((None, 6)).parameters(), lr=0.0),
                  "sparse_categorical_crossentropy", metrics=["accuracy", "f1"])
    p = model.predict(x, batch_size=7)
    expected_loss = float(np.mean(-np.log(np.clip(p[np.arange(N), y], 1e-7, 1 - 1e-7))))
    expected = {"accuracy": skm.accuracy_score(y, p.argmax(1)),
                "f1": skm.f1_score(y, p.argmax(1), average="macro", labels=np.arange(3), zero_division=0)}
    logs = model.evaluate(x, y, batch_size=16)
    np.testing.assert_allclose(logs["loss"], expected_loss, rtol=1e-5)
    for k, v in expected.items():
        np.testing.assert_allclose(logs[k], v, rtol=1e-9)
    hist = model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0).history  # lr 0: no change
    np.testing.assert_allclose(hist["loss"][0], expected_loss, rtol=1e-5)
    for k, v in expected.items():
        np.testing.assert_allclose(hist[k][0], v, rtol=1e-9)


def test_callable_metric_is_averaged_over_samples():
    def neg_err(y_true, y_pred):
        return -np.abs(y_true - y_pred.reshape(y_true.shape))

    m = M.get(neg_err)
    assert m.name == "neg_err"
    np.testing.assert_allclose(_stream(m, REG_Y, REG_P[:, None]), -skm.mean_absolute_error(REG_Y, REG_P),
                               rtol=1e-6)


def test_unknown_metric_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown metric 'acuracy'.*accuracy, top_k_accuracy"):
        M.get("acuracy")
