"""Tracing: symbolic tensors, errors for values needed in Python, state restored after a failed
trace, nested jit, and randomness drawn at every run."""

import inspect
import os

import numpy as np
import pytest

import ember as em
import ember.nn.functional as F
from ember import nn
from ember.compiler import trace as trace_mod

HERE = os.path.basename(__file__)


# each needs the value of a traced tensor on the line after its ``def``
def _item(x):
    return x.sum().item()


def _float(x):
    return float(x.sum())


def _int(x):
    return int(x.sum())


def _bool(x):
    return bool(x.sum())


def _if(x):
    if x.sum() > 0:
        return x
    return -x


def _numpy(x):
    return x.numpy()


def _tolist(x):
    return x.tolist()


def _np_asarray(x):
    return np.asarray(x) + 1


def _while(x):
    while (x > 0).any():
        x = x - 1
    return x


def _print(x):
    print(x * 2)  # repr reads the values (through NumPy's printing code)
    return x


VALUE_NEEDED = [_item, _float, _int, _bool, _if, _numpy, _tolist, _np_asarray, _while, _print]


@pytest.mark.parametrize("fn", VALUE_NEEDED, ids=lambda f: f.__name__)
def test_reading_a_value_raises_trace_error_naming_the_user_line(fn):
    x = em.randn(3, 4)
    jitted = em.jit(fn)
    with pytest.raises(em.TraceError) as info:
        jitted(x)
    msg = str(info.value)
    line = fn.__code__.co_firstlineno + 1
    assert f"{HERE}:{line}" in msg, msg
    assert "em.where" in msg
    assert "jit" in msg
    # nothing was cached, no tracer is left active, and eager ember still works
    assert jitted.cache == {} and jitted.traces == 0
    assert trace_mod.ACTIVE[0] is None
    assert float((x * 2).sum()) == pytest.approx(2 * float(x.sum()), rel=1e-5)


def test_trace_error_is_an_ember_error_and_traces_again_after_it():
    state = {"bad": True}

    def f(x):
        y = x * 2
        if state["bad"] and y.sum() > 0:
            return y
        return y + 1

    jitted = em.jit(f)
    x = em.randn(5)
    with pytest.raises(em.TraceError):
        jitted(x)
    with pytest.raises(em.TraceError):  # tried again, not a cached failure
        jitted(x)
    assert jitted.traces == 0
    state["bad"] = False
    np.testing.assert_allclose(jitted(x).numpy(), x.numpy() * 2 + 1, rtol=1e-6)
    assert jitted.traces == 1
    assert isinstance(em.TraceError("x"), em.errors.OpError)


def test_failed_training_step_leaves_parameters_grads_and_state_intact():
    model = nn.Linear(4, 3)
    opt = em.optim.Adam(model.parameters(), lr=0.1)
    x = em.randn(6, 4)
    before = [p.data.copy() for p in model.parameters()]
    arrays = [p.data for p in model.parameters()]

    @em.jit
    def step(x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        print("loss", loss.item())  # a value needed after the update was traced
        return loss

    with pytest.raises(em.TraceError, match="item"):
        step(x)
    for p, b, a in zip(model.parameters(), before, arrays):
        assert p.data is a and isinstance(p.data, np.ndarray)
        np.testing.assert_array_equal(p.data, b)
        assert p.grad is None
    for st in opt.state.values():
        assert all(isinstance(v.data, np.ndarray) for v in st.values() if isinstance(v, em.Tensor))
    # the model still trains eagerly, and like a fresh copy
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    fresh = nn.Linear(4, 3)
    fresh.load_state_dict({k: em.tensor(v) for k, v in zip(["weight", "bias"], before)})
    fopt = em.optim.Adam(fresh.parameters(), lr=0.1)
    fresh(x).pow(2).mean().backward()
    fopt.step()
    np.testing.assert_allclose(model.weight.data, fresh.weight.data, rtol=1e-5, atol=1e-6)


def test_nested_jit_raises_clearly():
    inner = em.jit(lambda t: t * 2)
    outer = em.jit(lambda t: inner(t) + 1)
    x = em.randn(3)
    with pytest.raises(em.TraceError, match="nested"):
        outer(x)
    assert trace_mod.ACTIVE[0] is None
    np.testing.assert_allclose(inner(x).numpy(), x.numpy() * 2)  # both still usable


def test_python_control_flow_on_shapes_and_arguments_is_resolved_at_trace_time():
    @em.jit
    def f(x, mode):
        if x.shape[0] > 2:  # shapes are static
            x = x * 2
        for _ in range(3):
            x = x + 1
        return x.relu() if mode == "relu" else x.tanh()

    x = em.randn(4, 3)
    np.testing.assert_allclose(f(x, "relu").numpy(), (x * 2 + 3).relu().numpy(), rtol=1e-6)
    np.testing.assert_allclose(f(x, "tanh").numpy(), (x * 2 + 3).tanh().numpy(), rtol=1e-6)
    small = em.randn(2, 3)
    np.testing.assert_allclose(f(small, "relu").numpy(), (small + 3).relu().numpy(), rtol=1e-6)
    assert f.traces == 3


def test_trace_records_backward_and_update_as_graph_effects():
    model = nn.Linear(3, 2)
    opt = em.optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    graph, guards, _ = em.jit(step).trace(em.randn(4, 3))
    assert len(graph.inputs) == 1 and graph.inputs[0].shape == (4, 3)
    assert {id(a) for a, _ in graph.writes} == {id(p.data) for p in model.parameters()}
    assert len(graph.grads) == 2
    assert any("SGD" in desc for desc, _, _ in guards.values())
    assert any("training" in desc for desc, _, _ in guards.values())
    # tracing changed nothing outside
    assert all(isinstance(p.data, np.ndarray) and p.grad is None for p in model.parameters())


def _update_outside_slice(x, buf):
    buf[0].add_(x)  # eager mode writes into buf
    return x


def _update_inner_slice(x, buf):
    h = x * 2
    h[0].add_(1.0)  # eager mode writes into h
    return h


@pytest.mark.parametrize("fn", [_update_outside_slice, _update_inner_slice], ids=lambda f: f.__name__)
def test_in_place_update_of_a_view_raises_instead_of_being_lost(fn):
    buf = em.zeros(4, 3)
    with pytest.raises(em.TraceError, match="slice or view") as info:
        em.jit(lambda x: fn(x, buf))(em.randn(3))
    lines, first = inspect.getsourcelines(fn)
    line = first + next(i for i, text in enumerate(lines) if "add_(" in text)
    assert f"{HERE}:{line}" in str(info.value)
    assert isinstance(buf.data, np.ndarray) and not buf.data.any()


def test_in_place_update_of_a_whole_outside_buffer_is_a_graph_write():
    buf = em.zeros(3)

    @em.jit
    def f(x):
        buf.add_(x)
        return x * 2

    x = em.randn(3)
    f(x)
    f(x)
    np.testing.assert_allclose(buf.numpy(), 2 * x.numpy(), rtol=1e-6)
    assert f.traces == 1


# ---- randomness --------------------------------------------------------------------------------

def test_dropout_in_training_mode_draws_a_new_mask_at_every_call():
    f = em.jit(lambda x: F.dropout(x, 0.5, training=True))
    x = em.ones(64)
    masks = [f(x).numpy() for _ in range(3)]
    assert f.traces == 1
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    for m in masks:
        assert set(np.unique(m)) <= {0.0, 2.0}


def test_dropout_module_in_a_jitted_model_draws_fresh_masks():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    jitted = em.jit(model)
    x = em.randn(4, 8)
    a, b = jitted(x).numpy(), jitted(x).numpy()
    assert not np.array_equal(a == 0, b == 0)


def test_rand_inside_jit_draws_fresh_numbers():
    f = em.jit(lambda x: x + em.rand(5))
    x = em.zeros(5)
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a, b)
    assert ((a >= 0) & (a < 1)).all()


RANDOM_FNS = {
    "dropout": lambda x: F.dropout(x, 0.5, training=True) + F.dropout(x * 2, 0.3, training=True),
    "rand": lambda x: em.rand(3, 4) * x,
    "randn": lambda x: em.randn(3, 4) + x,
    "randint": lambda x: em.randint(0, 10, (3, 4)) + x,
    "normal": lambda x: em.normal(0.5, 2.0, size=(3, 4)) + x,
    "normal_tensor_mean": lambda x: em.normal(x, 2.0),
    "uniform": lambda x: em.uniform(-1.0, 2.0, size=(3, 4)) + x,
    "bernoulli": lambda x: em.bernoulli(x.abs() / (x.abs() + 1)),
    "randperm": lambda x: em.randperm(7),
    "unused_draw_first": lambda x: (em.rand(5), F.dropout(x, 0.5, training=True))[1],
    "two_identical_draws": lambda x: em.rand(3, 4) - em.rand(3, 4),
}


@pytest.mark.parametrize("name", RANDOM_FNS)
def test_seeded_jitted_draws_equal_eager_draws_in_order(name):
    fn = RANDOM_FNS[name]
    x = em.randn(3, 4)
    em.manual_seed(123)
    eager = [fn(x).numpy() for _ in range(3)]
    jitted = em.jit(fn)
    em.manual_seed(123)
    compiled = [jitted(x).numpy() for _ in range(3)]
    assert jitted.traces == 1
    for e, c in zip(eager, compiled):
        np.testing.assert_array_equal(c, e)
        assert c.dtype == e.dtype
    assert not np.array_equal(compiled[0], compiled[1])  # fresh numbers at every call
    if name == "two_identical_draws":
        assert not np.allclose(compiled[0], 0)  # the two draws were not merged


def test_seeded_jitted_model_with_dropout_trains_like_eager():
    def run(jit):
        em.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.4), nn.Linear(16, 3))
        opt = em.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = em.randn(8, 6), em.randint(0, 3, (8,))

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = em.jit(step) if jit else step
        em.manual_seed(7)
        return [step(x, y).item() for _ in range(5)], model[0].weight.data.copy()

    (le, we), (lj, wj) = run(False), run(True)
    np.testing.assert_allclose(lj, le, rtol=1e-5)
    np.testing.assert_allclose(wj, we, rtol=1e-5, atol=1e-6)
