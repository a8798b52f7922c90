"""Jitted models equal eager ones: forward, gradients, one training step and a ten-step loss
curve for an MLP, a CNN, an LSTM, a GPT, BatchNorm in train and eval mode and dropout in eval
mode; JAX-style steps; em.jit(model) for inference; Keras fit with jit_compile=True."""

import numpy as np
import pytest
from jit_helpers import params_close

import ember as em
import ember.layers as L
import ember.nn.functional as F
from ember import nn
from ember.models import GPT, CharLSTM


def _mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)), em.randn(8, 12), em.randint(0, 5, (8,))


def _cnn():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    return model, em.randn(4, 1, 8, 8), em.randint(0, 5, (4,))


def _lstm():
    return CharLSTM(vocab_size=11, embed_dim=6, hidden_size=8), em.randint(0, 11, (3, 5)), em.randint(0, 11, (3, 5))


def _gpt():
    model = GPT(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=1)
    return model, em.randint(0, 11, (2, 6)), em.randint(0, 11, (2, 6))


def _bn():
    # no bias before BatchNorm: its gradient would be zero up to rounding, and Adam amplifies noise
    model = nn.Sequential(nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    return model, em.randn(8, 12), em.randint(0, 5, (8,))


def _dropout():
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))
    return model, em.randn(8, 12), em.randint(0, 5, (8,))


# name -> (factory, train mode?, optimizer)
MODELS = {
    "mlp": (_mlp, True, lambda p: em.optim.Adam(p, lr=1e-2)),
    "cnn_bn": (_cnn, True, lambda p: em.optim.SGD(p, lr=0.05, momentum=0.9)),
    "lstm": (_lstm, True, lambda p: em.optim.AdamW(p, lr=1e-2)),
    "gpt": (_gpt, True, lambda p: em.optim.SGD(p, lr=0.1, momentum=0.9)),
    "batchnorm_train": (_bn, True, lambda p: em.optim.AdamW(p, lr=1e-2)),
    "batchnorm_eval": (_bn, False, lambda p: em.optim.Adam(p, lr=1e-2)),
    "dropout_eval": (_dropout, False, lambda p: em.optim.Adam(p, lr=1e-2)),
}


def _make(name):
    """A fresh model (same weights for the same name), its data, optimizer and loss."""
    factory, train, make_opt = MODELS[name]
    em.manual_seed(0)
    model, x, y = factory()
    if not train:
        with em.no_grad():  # give BatchNorm non-trivial running statistics first
            for _ in range(2):
                model(em.randn(*x.shape))
        model.eval()
    return model, x, y, make_opt(list(model.parameters()))


def _loss(model, x, y):
    out = model(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _buffers(model):
    return {k: np.array(v.data, copy=True) for k, v in model.named_buffers()}


@pytest.mark.parametrize("name", MODELS)
def test_forward_equals_eager(name):
    model_e, x, _, _ = _make(name)
    model_j, _, _, _ = _make(name)
    jitted = em.jit(model_j)
    for _ in range(2):
        expected = model_e(x).detach().numpy()
        got = jitted(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for k, v in _buffers(model_e).items():  # BatchNorm's running statistics advanced alike
        np.testing.assert_allclose(_buffers(model_j)[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    assert jitted.forward.traces == 1


@pytest.mark.parametrize("name", MODELS)
def test_gradients_equal_eager(name):
    model_e, x, y, _ = _make(name)
    model_j, _, _, _ = _make(name)
    params_e, params_j = list(model_e.parameters()), list(model_j.parameters())

    @em.jit
    def grads(x, y):
        for p in params_j:
            p.grad = None
        loss = _loss(model_j, x, y)
        loss.backward()
        return loss, [p.grad for p in params_j]

    loss_j, grads_j = grads(x, y)
    loss_e = _loss(model_e, x, y)
    loss_e.backward()
    assert loss_j.item() == pytest.approx(loss_e.item(), rel=1e-5)
    assert len(grads_j) == len(params_e)
    # a gradient that is zero in exact arithmetic (a conv bias before BatchNorm) is rounding
    # noise in both: it is compared against the model's gradient scale, not its own
    overall = max(np.abs(p.grad.data).max() for p in params_e)
    for (pname, pe), gj, pj in zip(model_e.named_parameters(), grads_j, params_j):
        atol = 1e-5 * np.abs(pe.grad.data).max() + 1e-6 * overall
        np.testing.assert_allclose(gj.numpy(), pe.grad.data, rtol=1e-4, atol=atol, err_msg=pname)
        np.testing.assert_allclose(pj.grad.numpy(), pe.grad.data, rtol=1e-4, atol=atol, err_msg=pname)


def _train_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.parametrize("name", MODELS)
def test_one_training_step_equals_eager(name):
    model_e, x, y, opt_e = _make(name)
    model_j, _, _, opt_j = _make(name)
    before = [p.data.copy() for p in model_e.parameters()]
    loss_e = _train_step(model_e, opt_e)(x, y).item()
    step = em.jit(_train_step(model_j, opt_j))
    loss_j = step(x, y).item()
    assert loss_j == pytest.approx(loss_e, rel=1e-5)
    for (pname, pe), pj, b in zip(model_e.named_parameters(), model_j.parameters(), before):
        assert np.abs(pe.data - b).max() > 0, pname  # the step moved every parameter
        ok, worst = params_close(pj.data, pe.data, rtol=1e-5, atol=1e-7)
        assert ok, f"{pname}: |jit - eager| is {worst:.2f} x (1e-5 |p| + 1e-7)"
    for k, v in _buffers(model_e).items():
        np.testing.assert_allclose(_buffers(model_j)[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("name", MODELS)
def test_ten_steps_give_the_same_loss_curve(name):
    model_e, x, y, opt_e = _make(name)
    model_j, _, _, opt_j = _make(name)
    eager, jitted = _train_step(model_e, opt_e), em.jit(_train_step(model_j, opt_j))
    curve_e = [eager(x, y).item() for _ in range(10)]
    curve_j = [jitted(x, y).item() for _ in range(10)]
    np.testing.assert_allclose(curve_j, curve_e, rtol=1e-4)
    assert curve_e[-1] < curve_e[0]  # it trains
    assert jitted.traces <= 2        # (SGD momentum's first step is traced on its own)


@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_jit_of_a_model_for_inference(name):
    model, x, _, _ = _make(name)
    model.eval()
    jitted = em.jit(model)
    with em.no_grad():
        expected = model(x).numpy()
        got = jitted(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        longer = em.randint(0, 11, (2, 7))  # another sequence length: another graph
        np.testing.assert_allclose(jitted(longer).numpy(), model(longer).numpy(), rtol=1e-5, atol=1e-6)
    assert jitted.forward.traces == 2


def test_jax_style_step_with_value_and_grad_trains_like_eager():
    def loss_fn(ps, x, y):
        w1, b1, w2, b2 = ps
        return F.cross_entropy((x @ w1 + b1).relu() @ w2 + b2, y)

    def step(ps, x, y):
        loss, grads = em.value_and_grad(loss_fn)(ps, x, y)
        return loss, [p - 0.5 * g for p, g in zip(ps, grads)]

    def run(jit):
        model, x, y, _ = _make("mlp")
        ps = [model[0].weight.detach().mT, model[0].bias.detach(), model[2].weight.detach().mT,
              model[2].bias.detach()]
        fn = em.jit(step) if jit else step
        losses = []
        for _ in range(5):
            loss, ps = fn(ps, x, y)
            losses.append(loss.item())
        return losses, ps, fn

    (le, pe, _), (lj, pj, jitted) = run(False), run(True)
    np.testing.assert_allclose(lj, le, rtol=1e-5)
    for a, b in zip(pj, pe):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert le[-1] < le[0]
    assert jitted.traces == 1


def _digits_model():
    return em.Sequential([L.Input((64,)), L.Dense(32, activation="relu"), L.Dense(10, activation="softmax")])


def test_keras_fit_with_jit_compile_matches_eager_fit_on_digits():
    (xtr, ytr), (xte, yte) = em.data.datasets.digits(flatten=True)
    results = []
    for jit in (False, True):
        em.manual_seed(0)
        model = _digits_model()
        opt = em.optim.Adam(model.build((None, 64)).parameters(), lr=1e-2)
        model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
        em.manual_seed(1)
        hist = model.fit(xtr, ytr, epochs=4, batch_size=64, verbose=0)
        logs = model.evaluate(xte, yte)
        pred = model.predict(xte)
        results.append((hist.history, logs, pred, model))
    (he, le, pe, _), (hj, lj, pj, mj) = results
    np.testing.assert_allclose(hj["loss"], he["loss"], rtol=1e-4)
    np.testing.assert_allclose(hj["accuracy"], he["accuracy"], atol=2 / len(xtr))
    assert lj["accuracy"] == pytest.approx(le["accuracy"], abs=2 / len(xte))
    assert lj["accuracy"] >= 0.9
    np.testing.assert_allclose(pj, pe, rtol=1e-3, atol=1e-5)
    # one train graph per batch size (full batches and the last, smaller one), not one per step
    assert mj.compiled.jit.train.traces <= 2
