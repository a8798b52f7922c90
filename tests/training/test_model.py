"""em.Model / em.Sequential: compile, fit, evaluate, predict, summary; every accepted input
form; errors that name the fix; Keras-style and hand-written PyTorch-style training giving
the same weights; real accuracy on scikit-learn's digits."""

import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

import ember as em
import ember.nn as nn
import ember.nn.functional as F
from ember import layers as L
from ember.training import trainer

rng = np.random.default_rng(0)
N, D, K = 70, 6, 3
X = rng.standard_normal((N, D)).astype(np.float32)
Y = (X[:, :K] @ rng.standard_normal((K, K))).argmax(1)  # learnable labels in [0, K)


def mlp(hidden=16):
    return em.Sequential([nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, K)])


def _weights(model):
    return {k: v.data.copy() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


class Net(em.Model):
    """A user's subclass: constructor arguments, forward, and fit for free."""

    def __init__(self, hidden=16, p=0.0):
        super().__init__()
        self.fc1 = nn.Linear(D, hidden)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, K)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


# ---- compile / fit / evaluate / predict ---------------------------------------------------

def test_fit_returns_history_of_per_epoch_lists_and_learns():
    model = Net()
    model.compile(em.optim.Adam(model.parameters(), lr=0.01), "cross_entropy", metrics=["accuracy"])
    before = model.evaluate(X, Y)
    hist = model.fit(X, Y, epochs=30, batch_size=16, verbose=0)
    assert hist is model.history
    assert set(hist.history) == {"loss", "accuracy"}
    assert all(len(v) == 30 for v in hist.history.values())
    assert hist.epoch == list(range(30))
    assert hist.history["loss"][-1] < 0.6 * hist.history["loss"][0]
    after = model.evaluate(X, Y)
    assert set(after) == {"loss", "accuracy"}
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8


def test_evaluate_and_predict_match_a_direct_forward_pass():
    em.manual_seed(3)
    model = Net(p=0.5)  # dropout: predict/evaluate must run in eval mode
    model.compile("sgd", "cross_entropy", metrics=["accuracy"])
    model.eval()
    with em.no_grad():
        logits = model(em.tensor(X)).numpy()
    model.train()
    pred = model.predict(X, batch_size=9)
    assert isinstance(pred, np.ndarray) and pred.shape == (N, K)
    np.testing.assert_allclose(pred, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.predict(em.tensor(X)), pred)
    logs = model.evaluate(X, Y, batch_size=9)
    z = logits - logits.max(1, keepdims=True)
    ce = -(z[np.arange(N), Y] - np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(logs["loss"], ce.mean(), rtol=1e-5)
    assert logs["accuracy"] == accuracy_score(Y, logits.argmax(1))
    assert model.evaluate(X, Y, return_dict=False) == list(model.evaluate(X, Y).values())


class Loader:
    """What a DataLoader looks like to fit: re-iterable, with a length, yielding (x, y)."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        for s in range(0, len(self.x), self.batch_size):
            yield em.tensor(self.x[s:s + self.batch_size]), em.tensor(self.y[s:s + self.batch_size])


INPUTS = {
    "numpy": lambda: ((X, Y), {"batch_size": 16}),
    "tensors": lambda: ((em.tensor(X), em.tensor(Y)), {"batch_size": 16}),
    "list-of-batches": lambda: (([(X[s:s + 16], Y[s:s + 16]) for s in range(0, N, 16)],), {}),
    "loader": lambda: ((Loader(X, Y, 16),), {}),
}


@pytest.mark.parametrize("kind", INPUTS)
def test_every_input_form_trains_identically(kind):
    """Arrays, tensors, a list of (x, y) batches and a loader: the same batches, the same
    weights after training."""
    args, kw = INPUTS[kind]()
    em.manual_seed(0)
    ref = mlp()
    ref.compile("adam", "cross_entropy", metrics=["accuracy"])
    ref_hist = ref.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    em.manual_seed(0)
    model = mlp()
    model.compile("adam", "cross_entropy", metrics=["accuracy"])
    hist = model.fit(*args, epochs=2, shuffle=False, verbose=0, **kw).history
    _assert_same_weights(model, ref)
    assert hist == ref_hist
    assert model.evaluate(*args, **kw) == ref.evaluate(X, Y, batch_size=16)
    pred_in = args[0] if kind in ("numpy", "tensors") else [(b[0],) for b in Loader(X, Y, 16)]
    np.testing.assert_array_equal(model.predict(pred_in), ref.predict(X))


def test_validation_split_holds_out_the_last_samples_and_validation_data_is_reported():
    model = Net()
    model.compile("adam", "cross_entropy", metrics=["accuracy"])
    hist = model.fit(X, Y, epochs=3, batch_size=16, validation_split=0.2, verbose=0).history
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    cut = int(N * 0.8)
    assert model.evaluate(X[cut:], Y[cut:]) == {"loss": hist["val_loss"][-1], "accuracy": hist["val_accuracy"][-1]}
    # the training part is the first 80%: with lr 0 the training loss is the loss over them
    frozen = Net()
    frozen.compile(em.optim.SGD(frozen.parameters(), lr=0.0), "cross_entropy")
    h = frozen.fit(X, Y, epochs=1, validation_split=0.2, verbose=0).history
    np.testing.assert_allclose(h["loss"][0], frozen.evaluate(X[:cut], Y[:cut])["loss"], rtol=1e-6)

    hist = model.fit(X[:50], Y[:50], epochs=2, validation_data=(X[50:], Y[50:]), verbose=0).history
    assert model.evaluate(X[50:], Y[50:])["loss"] == hist["val_loss"][-1]
    for val in (Loader(X[50:], Y[50:], 7), [(X[50:60], Y[50:60]), (X[60:], Y[60:])]):
        hist = model.fit(X[:50], Y[:50], epochs=1, validation_data=val, verbose=0).history
        assert model.evaluate(X[50:], Y[50:])["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-6)


# loss name -> (model, y) for a one-step training check
LOSSES = {
    "sparse_categorical_crossentropy": (lambda: em.Sequential([L.Dense(K, activation="softmax")]), Y),
    "categorical_crossentropy": (lambda: em.Sequential([L.Dense(K, activation="softmax")]),
                                 np.eye(K, dtype=np.float32)[Y]),
    "binary_crossentropy": (lambda: em.Sequential([L.Dense(1, activation="sigmoid")]), (Y == 0) * 1.0),
    "mse": (lambda: em.Sequential([L.Dense(1)]), X[:, 0] * 2.0),
    "mae": (lambda: em.Sequential([L.Dense(1)]), X[:, 0] * 2.0),
    "cross_entropy": (lambda: em.Sequential([L.Dense(K)]), Y),
    "callable": (lambda: em.Sequential([L.Dense(1)]), X[:, 0] * 2.0),
    "nn.CrossEntropyLoss": (lambda: em.Sequential([L.Dense(K)]), Y),
}


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains(loss):
    make, y = LOSSES[loss]
    model = make()
    spec = {"callable": lambda t, p: ((p.reshape(-1) - t) ** 2), "nn.CrossEntropyLoss": nn.CrossEntropyLoss()}
    model.compile("adam", spec.get(loss, loss))
    model.build((None, D))
    before = model.evaluate(X, y)["loss"]
    w0 = _weights(model)
    model.fit(X, y, epochs=5, batch_size=N, verbose=0)
    assert any(not np.array_equal(w0[k], v) for k, v in _weights(model).items())
    assert np.isfinite(before) and model.evaluate(X, y)["loss"] < before


@pytest.mark.parametrize("name,cls,defaults", [
    ("adam", "Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7, "weight_decay": 0.0}),
    ("adamw", "AdamW", {"lr": 1e-3, "eps": 1e-7, "weight_decay": 0.004}),
    ("sgd", "SGD", {"lr": 0.01, "momentum": 0.0}),
    ("rmsprop", "RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
    ("adagrad", "Adagrad", {"lr": 1e-3, "initial_accumulator_value": 0.1, "eps": 1e-7}),
])
def test_optimizer_names_use_keras_defaults(name, cls, defaults):
    model = mlp()
    model.compile(name.upper() if name == "sgd" else name, "cross_entropy")
    assert type(model.optimizer) is getattr(em.optim, cls)
    group = model.optimizer.param_groups[0]
    for k, v in defaults.items():
        assert group[k] == v, k
    model.fit(X, Y, epochs=1, verbose=0)


def test_lazy_model_gets_its_optimizer_after_the_first_batch():
    model = em.Sequential([L.Dense(8, activation="relu"), L.Dense(K)])
    model.compile("adam", "cross_entropy")
    assert model.optimizer is None  # sizes unknown until data arrives
    model.fit(X, Y, epochs=1, verbose=0)
    assert isinstance(model.optimizer, em.optim.Adam)
    assert len(model.optimizer.param_groups[0]["params"]) == 4


def test_custom_train_step_is_used_by_fit():
    class Clipped(Net):
        def train_step(self, x, y):
            self.steps = getattr(self, "steps", 0) + 1
            loss, y_pred = super().train_step(x, y)
            with em.no_grad():
                for p in self.parameters():
                    p.clamp_(-0.05, 0.05)
            return loss, y_pred

    model = Clipped()
    model.compile("adam", "cross_entropy")
    model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    assert model.steps == 2 * 3
    assert max(float(np.abs(p.data).max()) for p in model.parameters()) <= np.float32(0.05)


def test_steps_per_epoch_and_initial_epoch():
    model = mlp()
    model.compile("sgd", "cross_entropy")
    seen = []
    cb = em.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
    hist = model.fit(X, Y, epochs=4, initial_epoch=2, steps_per_epoch=2, batch_size=8, verbose=0,
                     callbacks=[cb])
    assert hist.epoch == [2, 3]
    assert seen == [0, 1, 0, 1]


# ---- summary -------------------------------------------------------------------------------

def test_summary_prints_layers_output_shapes_and_parameter_counts():
    model = em.Sequential([L.Input((1, 8, 8)), L.Conv2D(4, 3, padding="same", activation="relu"),
                           L.BatchNormalization(), L.MaxPooling2D(), L.Flatten(), L.Dense(10)])
    lines = []
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    rows = {line.split()[0]: line for line in text.splitlines() if "(" in line and ")" in line}
    conv, bn, pool, flat, dense = (model[i].name for i in range(1, 6))
    expected = {  # (output shape, parameters), worked out by hand
        conv: ("(None, 4, 8, 8)", 4 * 1 * 3 * 3 + 4),
        bn: ("(None, 4, 8, 8)", 4 + 4),
        pool: ("(None, 4, 4, 4)", 0),
        flat: ("(None, 64)", 0),
        dense: ("(None, 10)", 64 * 10 + 10),
    }
    for name, (shape, params) in expected.items():
        assert shape in rows[name], rows[name]
        assert rows[name].rstrip().endswith(f"{params:,}"), rows[name]
    total = sum(p for _, p in expected.values())
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total:,}" in text
    assert "Non-trainable params: 0" in text
    assert text.startswith('Model: "sequential"')


def test_summary_of_a_subclassed_model_and_with_input_shape(capsys):
    model = Net(hidden=5)
    model.summary(input_shape=(None, D))
    out = capsys.readouterr().out
    assert "fc1 (Linear)" in out and "(None, 5)" in out and "(None, 3)" in out
    assert f"Total params: {D * 5 + 5 + 5 * K + K:,}" in out
    frozen = mlp()
    frozen[0].requires_grad_(False)
    text = frozen.summary(input_shape=(None, D), print_fn=lambda s: None)
    assert f"Non-trainable params: {D * 16 + 16:,}" in text


# ---- errors that name the fix ---------------------------------------------------------------

def _compiled():
    m = mlp()
    m.compile("adam", "cross_entropy")
    return m


ERRORS = [
    ("fit before compile", lambda: mlp().fit(X, Y, verbose=0), RuntimeError, r"call model\.compile\("),
    ("evaluate before compile", lambda: mlp().evaluate(X, Y), RuntimeError, r"call model\.compile\("),
    ("unknown loss", lambda: mlp().compile("adam", "crossentropy"), ValueError,
     r"unknown loss 'crossentropy'.*'sparse_categorical_crossentropy'"),
    ("no loss", lambda: mlp().compile("adam"), ValueError, r"a loss is required, e\.g\. loss="),
    ("unknown optimizer", lambda: mlp().compile("adan", "mse"), ValueError,
     r"unknown optimizer 'adan'.*'adam'.*Optimizer instance"),
    ("optimizer of the wrong type", lambda: mlp().compile(0.1, "mse"), TypeError, "an ember Optimizer"),
    ("unknown metric", lambda: mlp().compile("adam", "mse", metrics=["acurracy"]), ValueError,
     r"unknown metric 'acurracy'.*accuracy"),
    ("duplicate metrics", lambda: mlp().compile("adam", "mse", metrics=["mae", "mae"]), ValueError, "unique"),
    ("x/y length mismatch", lambda: _compiled().fit(X, Y[:-1], verbose=0), ValueError,
     r"x has 70 samples but y has 69"),
    ("x/y length mismatch in evaluate", lambda: _compiled().evaluate(X[:5], Y), ValueError,
     r"x has 5 samples but y has 70"),
    ("summary of an unbuilt model", lambda: em.Sequential([L.Dense(3)]).summary(), ValueError,
     r"has not been built.*Input\(shape=.*summary\(input_shape="),
    ("functional Model(inputs, outputs)", lambda: em.Model("in", "out"), TypeError, "em.Sequential"),
    ("y with a loader", lambda: _compiled().fit(Loader(X, Y, 8), Y, verbose=0), ValueError,
     "y must not be given"),
    ("bad validation_split", lambda: _compiled().fit(X, Y, validation_split=1.5, verbose=0), ValueError,
     r"validation_split must be in \(0, 1\)"),
    ("validation_split with a loader", lambda: _compiled().fit(Loader(X, Y, 8), validation_split=0.2, verbose=0),
     ValueError, "pass validation_data"),
    ("load_state_dict into an unbuilt model",
     lambda: em.Sequential([L.Dense(3)]).load_state_dict({"0.weight": np.zeros((3, 2)), "0.bias": np.zeros(3)}),
     ValueError, r"sizes are not known yet.*call model\.build\(input_shape\)"),
    ("an exhausted generator", lambda: _compiled().fit(iter([(X, Y)]), epochs=2, verbose=0), ValueError,
     "produced no batches"),
]


@pytest.mark.parametrize("fn,exc,match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_clear_errors(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


# ---- Keras-style == PyTorch-style ---------------------------------------------------------------

def _keras_vs_torch_models():
    return {
        # nn modules only, no randomness during training
        "nn-modules": lambda: em.Sequential([nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K)]),
        # lazily built em.layers (built at compile from Input) and dropout drawing random masks
        "layers-dropout": lambda: em.Sequential([L.Input((D,)), L.Dense(16, activation="relu"), L.Dropout(0.3),
                                                 nn.Linear(16, K)]),
    }


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("arch", ["nn-modules", "layers-dropout"])
def test_keras_style_and_pytorch_style_training_give_the_same_weights(arch, shuffle):
    make = _keras_vs_torch_models()[arch]
    epochs, bs = 3, 16

    em.manual_seed(7)
    keras_model = make()
    keras_model.compile("adam", "cross_entropy")
    keras_model.fit(X, Y, epochs=epochs, batch_size=bs, shuffle=shuffle, verbose=0)

    em.manual_seed(7)
    model = make()
    model.build((None, D))
    _, adam_kw = trainer._OPTIMIZERS["adam"]
    opt = em.optim.Adam(model.parameters(), **adam_kw)
    model.train()
    for _ in range(epochs):
        order = em.randperm(N).numpy() if shuffle else np.arange(N)
        for s in range(0, N, bs):
            idx = order[s:s + bs]
            loss = F.cross_entropy(model(em.tensor(X[idx])), em.tensor(Y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    _assert_same_weights(keras_model, model)


# ---- real accuracy --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    return train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)


DIGIT_MODELS = {
    "mlp": (lambda: em.Sequential([L.Input((1, 8, 8)), L.Flatten(), L.Dense(128, activation="relu"),
                                   L.Dense(10, activation="softmax")]), "adam", 20),
    "cnn": (lambda: em.Sequential([L.Input((1, 8, 8)), L.Conv2D(16, 3, padding="same", activation="relu"),
                                   L.MaxPooling2D(), L.Conv2D(32, 3, padding="same", activation="relu"),
                                   L.MaxPooling2D(), L.Flatten(), L.Dense(64, activation="relu"),
                                   L.Dense(10, activation="softmax")]), 3e-3, 8),
}


@pytest.mark.parametrize("arch", DIGIT_MODELS)
def test_digits_test_accuracy_at_least_95_percent(arch, digits):
    xtr, xte, ytr, yte = digits
    make, opt, epochs = DIGIT_MODELS[arch]
    em.manual_seed(0)
    model = make()
    if not isinstance(opt, str):
        opt = em.optim.Adam(model.build((None, 1, 8, 8)).parameters(), lr=opt)
    model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    hist = model.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=0)
    assert time.perf_counter() - t0 < 15
    logs = model.evaluate(xte, yte)
    assert logs["accuracy"] == accuracy_score(yte, model.predict(xte).argmax(1))
    assert logs["accuracy"] >= 0.95, logs
    assert hist.history["accuracy"][-1] >= 0.95
