"""Keras-named losses against their formulas (values and, through PyTorch autograd of the same
formula, gradients); ``cross_entropy`` against ``torch.nn.functional.cross_entropy``."""

import numpy as np
import pytest
import torch

import ember as em
import ember.nn as nn
from ember.training import losses

EPS = 1e-7
rng = np.random.default_rng(0)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


LOGITS = rng.standard_normal((6, 4)).astype(np.float32)
PROBS = _softmax(LOGITS).astype(np.float32)
LABELS = np.array([0, 3, 1, 1, 2, 0])
ONEHOT = np.eye(4, dtype=np.float32)[LABELS]
# unnormalised scores, and probabilities at the clip boundaries (exactly 0 and 1)
UNNORM = (PROBS * np.array([[1.0], [2.0], [0.5], [3.0], [1.0], [0.7]], np.float32)).astype(np.float32)
EXTREME = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], np.float32)
BIN_P = np.array([0.1, 0.9, 0.5, 0.0, 1.0, 0.3], np.float32)
BIN_Y = np.array([0, 1, 1, 0, 0, 1], np.float32)
BIN_Z = rng.standard_normal(6).astype(np.float32)
REG_P = rng.standard_normal((6, 1)).astype(np.float32)
REG_Y = rng.standard_normal(6).astype(np.float32)


def _clip(p):
    return torch.clamp(p, EPS, 1 - EPS)


# (name, kwargs, y_true, y_pred, torch formula of (y_true, y_pred) -> scalar)
CASES = [
    ("sparse_categorical_crossentropy", {}, LABELS, PROBS,
     lambda t, p: -torch.log(_clip(p))[torch.arange(len(t)), t].mean()),
    ("sparse_categorical_crossentropy", {}, LABELS[:, None], PROBS,  # labels as (N, 1)
     lambda t, p: -torch.log(_clip(p))[torch.arange(len(t)), t[:, 0]].mean()),
    ("sparse_categorical_crossentropy", {}, np.array([1, 0]), EXTREME,  # clipped, finite
     lambda t, p: -torch.log(_clip(p))[torch.arange(len(t)), t].mean()),
    ("sparse_categorical_crossentropy", {"from_logits": True}, LABELS, LOGITS,
     lambda t, p: torch.nn.functional.cross_entropy(p, t)),
    # Keras renormalises the probabilities (which also shapes the gradient)
    ("categorical_crossentropy", {}, ONEHOT, PROBS,
     lambda t, p: -(t * torch.log(_clip(p / p.sum(-1, keepdim=True)))).sum(-1).mean()),
    ("categorical_crossentropy", {}, ONEHOT, UNNORM,
     lambda t, p: -(t * torch.log(_clip(p / p.sum(-1, keepdim=True)))).sum(-1).mean()),
    ("categorical_crossentropy", {"from_logits": True}, ONEHOT, LOGITS,
     lambda t, p: -(t * torch.log_softmax(p, -1)).sum(-1).mean()),
    ("categorical_crossentropy", {"label_smoothing": 0.2}, ONEHOT, PROBS,
     lambda t, p: -((t * 0.8 + 0.2 / 4) * torch.log(_clip(p / p.sum(-1, keepdim=True)))).sum(-1).mean()),
    ("binary_crossentropy", {}, BIN_Y, BIN_P,
     lambda t, p: -(t * torch.log(_clip(p)) + (1 - t) * torch.log(1 - _clip(p))).mean()),
    ("binary_crossentropy", {}, BIN_Y[:, None], BIN_P,  # y (N, 1) vs predictions (N,)
     lambda t, p: -(t[:, 0] * torch.log(_clip(p)) + (1 - t[:, 0]) * torch.log(1 - _clip(p))).mean()),
    ("binary_crossentropy", {"from_logits": True}, BIN_Y, BIN_Z,
     lambda t, p: torch.nn.functional.binary_cross_entropy_with_logits(p, t)),
    ("mse", {}, REG_Y, REG_P, lambda t, p: ((p[:, 0] - t) ** 2).mean()),
    ("mean_squared_error", {}, REG_Y[:, None], REG_P, lambda t, p: ((p - t) ** 2).mean()),
    ("mae", {}, REG_Y, REG_P, lambda t, p: (p[:, 0] - t).abs().mean()),
    ("mean_absolute_error", {}, REG_Y[:, None], REG_P, lambda t, p: (p - t).abs().mean()),
    ("huber", {}, REG_Y[:, None], REG_P * 3,
     lambda t, p: torch.nn.functional.huber_loss(p, t, delta=1.0)),
]


def _case_id(c):
    return c[0] + ("-" + ",".join(f"{k}={v}" for k, v in c[1].items()) if c[1] else "") + f"-{c[2].shape}"


@pytest.mark.parametrize("name,kwargs,y_true,y_pred,formula", CASES, ids=[_case_id(c) for c in CASES])
def test_keras_loss_matches_formula_value_and_gradient(name, kwargs, y_true, y_pred, formula):
    loss = losses._BY_NAME[name](**kwargs) if kwargs else losses.get(name)
    p = em.tensor(y_pred, requires_grad=True)
    out = loss(em.tensor(y_true), p)
    assert out.shape == ()
    tp = torch.tensor(y_pred, requires_grad=True)
    ref = formula(torch.tensor(y_true), tp)
    ref.backward()
    out.backward()
    assert np.isfinite(out.item())
    np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-4, atol=1e-6)


CE_CASES = [
    ("indices", rng.standard_normal((5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0]), {}),
    ("spatial", rng.standard_normal((2, 3, 4)).astype(np.float32), rng.integers(0, 3, (2, 4)), {}),
    ("probabilities", rng.standard_normal((4, 3)).astype(np.float32),
     _softmax(rng.standard_normal((4, 3))).astype(np.float32), {}),
    ("label_smoothing", rng.standard_normal((5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0]),
     {"label_smoothing": 0.1}),
]


@pytest.mark.parametrize("logits,target,kw", [c[1:] for c in CE_CASES], ids=[c[0] for c in CE_CASES])
def test_cross_entropy_matches_torch(logits, target, kw):
    loss = losses.TorchCrossEntropy(**kw) if kw else losses.get("cross_entropy")
    z = em.tensor(logits, requires_grad=True)
    out = loss(target, z)  # Keras argument order: (y_true, y_pred)
    out.backward()
    tz = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tz, torch.tensor(target), **kw)
    ref.backward()
    np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z.grad.numpy(), tz.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_loss_from_callable_and_from_torch_style_module():
    def my_loss(y_true, y_pred):  # per-sample values are averaged
        return ((y_pred - y_true) ** 2).sum(-1)

    y_pred = em.tensor(REG_P)
    y_true = em.tensor(REG_Y[:, None])
    out = losses.get(my_loss)(y_true, y_pred)
    np.testing.assert_allclose(out.item(), ((REG_P - REG_Y[:, None]) ** 2).sum(-1).mean(), rtol=1e-6)
    assert losses.get(my_loss).name == "my_loss"

    # an nn loss module takes (input, target): get() swaps Keras's (y_true, y_pred) order
    ce = losses.get(nn.CrossEntropyLoss())
    out = ce(em.tensor(LABELS), em.tensor(LOGITS))
    ref = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS))
    np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-6)
    assert ce.accuracy_kind == "sparse"


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown loss 'cross_entropyy'.*sparse_categorical_crossentropy"):
        losses.get("cross_entropyy")
    with pytest.raises(TypeError, match="loss must be a name"):
        losses.get(3)
