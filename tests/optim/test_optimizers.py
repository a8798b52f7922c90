"""Optimizers and schedulers against PyTorch: same parameters, same loss, several steps ->
the same updated parameters (float64, rtol 1e-9; float32, rtol 1e-5)."""

import numpy as np
import pytest
import torch

import ember as em
import ember.nn as nn

OPTIMIZERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.3, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.5, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
]


def _loss(params, lib):
    """A small non-quadratic loss so every optimizer sees changing gradients."""
    w, b = params
    x = lib.tensor(np.linspace(-1, 1, 12).reshape(4, 3).astype(w.detach().numpy().dtype))
    return ((lib.tanh(x @ w + b) - 0.3) ** 2).sum() + (w * w * w).sum()


def _run(name, kw, lib, steps, dtype, split_at=None):
    rng = np.random.default_rng(0)
    w0, b0 = rng.standard_normal((3, 2)).astype(dtype), rng.standard_normal(2).astype(dtype)
    if lib is torch:
        params = [torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)]
        opt = getattr(torch.optim, name)([{"params": [params[0]]}, {"params": [params[1]], "lr": kw["lr"] / 2}], **kw)
    else:
        params = [em.tensor(w0, requires_grad=True), em.tensor(b0, requires_grad=True)]
        opt = getattr(em.optim, name)([{"params": [params[0]]}, {"params": [params[1]], "lr": kw["lr"] / 2}], **kw)
    for step in range(steps):
        if split_at is not None and step == split_at:  # resume from a state dict
            saved = opt.state_dict()
            opt = getattr(em.optim, name)([{"params": [params[0]]}, {"params": [params[1]]}], **kw)
            opt.load_state_dict(saved)
        opt.zero_grad()
        _loss(params, lib).backward()
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("name,kw", OPTIMIZERS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_optimizer_matches_torch(name, kw, dtype, rtol):
    got = _run(name, kw, em, 8, dtype)
    want = _run(name, kw, torch, 8, dtype)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("name,kw", OPTIMIZERS)
def test_state_dict_resume_is_exact(name, kw):
    straight = _run(name, kw, em, 6, np.float64)
    resumed = _run(name, kw, em, 6, np.float64, split_at=3)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_hyperparameter_errors_state_the_value():
    p = [em.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=r"beta1 should be in \[0, 1\), 1.5 was provided"):
        em.optim.Adam(p, betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="lr should be >= 0, -1"):
        em.optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        em.optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        em.optim.Adam([])


def test_param_groups_and_skipped_params():
    a, b = em.ones(2, requires_grad=True), em.ones(2, requires_grad=True)
    opt = em.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b]}], lr=0.1)
    (a.sum() * 2).backward()  # b has no grad: left untouched
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [-1.0, -1.0])
    np.testing.assert_allclose(b.detach().numpy(), [1.0, 1.0])
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.1]


SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 6], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
    ("LinearLR", dict(start_factor=0.1, total_iters=4)),
    ("ConstantLR", dict(factor=0.5, total_iters=3)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1 / (1 + e))),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=12)),
    ("OneCycleLR", dict(max_lr=[1.0, 0.5], epochs=3, steps_per_epoch=4, three_phase=True,
                        anneal_strategy="linear")),
]


@pytest.mark.parametrize("name,kw", SCHEDULERS)
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_scheduler_matches_torch(name, kw, opt_name):
    def lrs(lib):
        p1, p2 = (lib.zeros(2, requires_grad=True) for _ in range(2))
        extra = {"momentum": 0.9} if opt_name == "SGD" else {}
        opt = getattr(lib.optim, opt_name)([{"params": [p1]}, {"params": [p2], "lr": 0.05}], lr=0.1, **extra)
        sched = getattr(lib.optim.lr_scheduler, name)(opt, **kw)
        out = []
        for _ in range(11):
            opt.step()
            sched.step()
            g = opt.param_groups[0]
            out.append(sched.get_last_lr() + [g.get("momentum", g.get("betas", (0,))[0])])
        return np.array(out)

    np.testing.assert_allclose(lrs(em), lrs(torch), rtol=1e-10, atol=1e-12)


def test_reduce_lr_on_plateau_matches_torch():
    metrics = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65]

    def run(lib):
        p = lib.zeros(2, requires_grad=True)
        opt = lib.optim.SGD([p], lr=1.0)
        s = lib.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=0.1)
        out = []
        for m in metrics:
            s.step(m)
            out.append(opt.param_groups[0]["lr"])
        return out

    assert run(em) == run(torch)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    for max_norm, norm_type in [(1.0, 2.0), (100.0, 2.0), (0.5, float("inf")), (2.0, 1.0)]:
        ep = [em.zeros(g.shape, dtype=em.float64, requires_grad=True) for g in grads]
        tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
        for e, t, g in zip(ep, tp, grads):
            e.grad, t.grad = em.tensor(g), torch.tensor(g)
        n1 = nn.utils.clip_grad_norm_(ep, max_norm, norm_type)
        n2 = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type)
        np.testing.assert_allclose(n1.item(), n2.item(), rtol=1e-12)
        for e, t in zip(ep, tp):
            np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_mlp_sgd_step_matches_torch_exactly_given_same_weights():
    """The core issue's check: a small MLP's loss, gradients and one SGD step equal PyTorch's."""
    tm = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    em_ = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(em.float64)
    em_.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((8, 6))
    y = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    tl = torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    el = nn.functional.cross_entropy(em_(em.tensor(x)), em.tensor(y))
    np.testing.assert_allclose(el.item(), tl.item(), rtol=1e-13)
    tl.backward()
    el.backward()
    for (n, p), (_, q) in zip(em_.named_parameters(), tm.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=n)
    em.optim.SGD(em_.parameters(), lr=0.1, momentum=0.9).step()
    torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9).step()
    for (n, p), (_, q) in zip(em_.named_parameters(), tm.named_parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-13, err_msg=n)


def test_clip_grad_norm_compiles_inside_jit_and_equals_eager():
    """The clipping scale is computed with tensor ops, so a jitted step that clips matches eager."""
    def make():
        em.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        return model, em.optim.SGD(model.parameters(), lr=0.5)

    def step_fn(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            return loss, norm
        return step

    x, y = em.randn(32, 6) * 5, em.randint(0, 3, (32,))
    (m1, o1), (m2, o2) = make(), make()
    eager, jitted = step_fn(m1, o1), em.jit(step_fn(m2, o2))
    for _ in range(3):
        (l1, n1), (l2, n2) = eager(x, y), jitted(x, y)
        assert n1.item() > 0.1  # the norm is large enough that clipping acts
        np.testing.assert_allclose(n2.item(), n1.item(), rtol=1e-5)
        np.testing.assert_allclose(l2.item(), l1.item(), rtol=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_clip_grad_norm_nonfinite():
    p = em.zeros(3, requires_grad=True)
    p.grad = em.tensor([1.0, float("inf"), 0.0])
    with pytest.raises(RuntimeError, match="clip_grad_norm_: the total norm of order 2.0 is inf"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
