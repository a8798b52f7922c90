"""Tensor.register_post_accumulate_grad_hook against PyTorch's."""

import numpy as np
import pytest
import torch

import ember as em
from ember.autograd import engine


def _mlps():
    em.manual_seed(0)
    ours = em.nn.Sequential(em.nn.Linear(4, 8), em.nn.Tanh(), em.nn.Linear(8, 8), em.nn.Tanh(), em.nn.Linear(8, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 2))
    ref.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    return ours, ref


def _record(model):
    """name of each hooked parameter in call order, with the grads that existed at that moment"""
    log = []
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(
            lambda p, name=name: log.append((name, p.grad is not None,
                                             sorted(n for n, q in model.named_parameters() if q.grad is not None))))
    return log


def test_hooks_fire_once_per_parameter_layer_by_layer_like_torch():
    ours, ref = _mlps()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    log, ref_log = _record(ours), _record(ref)
    ours(em.tensor(x)).square().sum().backward()
    ref(torch.tensor(x)).square().sum().backward()
    assert [n for n, *_ in log] == [n for n, *_ in ref_log]  # last layer first, weight after bias
    assert [n for n, *_ in log] == ["4.bias", "4.weight", "2.bias", "2.weight", "0.bias", "0.weight"]
    assert all(has for _, has, _ in log)
    # each hook runs as soon as its parameter is done: the first layer has no gradient yet when the last one's runs
    assert log[1][2] == ["4.bias", "4.weight"]
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_grads_with_hooks_equal_grads_without():
    a, _ = _mlps()
    b, _ = _mlps()
    _record(b)
    x = em.randn(6, 4)
    for m in (a, b):
        out = m(x)
        (out.square().sum() + out.sum()).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy(), err_msg=name)


def test_shared_parameter_hook_sees_the_full_sum():
    w = em.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.numpy().copy()))
    x = em.tensor([[1.0, -1.0]])
    ((x @ w) @ w).sum().backward()  # w used twice: one hook call, after both contributions
    tw = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    ((torch.tensor([[1.0, -1.0]]) @ tw) @ tw).sum().backward()
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], tw.grad.numpy())


def test_accumulation_scatter_gradients_and_remove():
    emb = em.nn.Embedding(5, 3)
    calls = []
    handle = emb.weight.register_post_accumulate_grad_hook(lambda p: calls.append(p.grad.numpy().copy()))
    idx = em.tensor([1, 1, 3])
    emb(idx).sum().backward()
    emb(idx).sum().backward()  # no zero_grad: the hook sees the accumulated gradient
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0][1], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(calls[1][1], [4.0, 4.0, 4.0])
    handle.remove()
    handle.remove()  # removing twice is harmless
    emb(idx).sum().backward()
    assert len(calls) == 2
    assert id(emb.weight) not in engine.POST_ACCUMULATE_HOOKS


def test_hook_registry_forgets_dead_tensors():
    t = em.tensor([1.0], requires_grad=True)
    t.register_post_accumulate_grad_hook(lambda p: None)
    key = id(t)
    assert key in engine.POST_ACCUMULATE_HOOKS
    del t
    assert key not in engine.POST_ACCUMULATE_HOOKS


def test_hook_errors():
    t = em.tensor([1.0], requires_grad=True)
    with pytest.raises(em.GradError, match="only leaf tensors that require grad.*a non-leaf"):
        (t * 2).register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(em.GradError, match="a tensor without requires_grad"):
        em.tensor([1.0]).register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(TypeError, match="hook must be callable, got int"):
        t.register_post_accumulate_grad_hook(3)
