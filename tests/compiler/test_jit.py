"""em.jit: the cache and its guards, retracing (and saying why), optimizer hyperparameters,
inspection (printing, DOT, debug output), JAX-style steps and who owns the results."""

import logging
import re

import numpy as np
import pytest

import ember as em
import ember.nn.functional as F
from ember import nn


def _f(x, y):
    return (x * y + 1.0).relu().sum(0)


def test_same_signature_runs_the_cached_graph():
    f = em.jit(_f)
    x, y = em.randn(4, 3), em.randn(3)
    for _ in range(3):
        np.testing.assert_allclose(f(x, y).numpy(), _f(x, y).numpy(), rtol=1e-6)
    assert f.traces == 1
    # new values with the same signature: no retrace, new results
    x2 = em.randn(4, 3)
    np.testing.assert_allclose(f(x2, y).numpy(), _f(x2, y).numpy(), rtol=1e-6)
    assert f.traces == 1


@pytest.mark.parametrize("change", ["shape", "dtype", "requires_grad", "static_arg", "grad_mode"])
def test_a_new_signature_retraces_and_the_old_one_is_kept(change):
    def g(x, scale=2.0):
        return (x * scale).sum()

    f = em.jit(g)
    x = em.randn(4, 3)
    f(x)
    if change == "shape":
        other = dict(args=(em.randn(5, 3),))
    elif change == "dtype":
        other = dict(args=(em.randn(4, 3, dtype=em.float64),))
    elif change == "requires_grad":
        other = dict(args=(em.randn(4, 3, requires_grad=True),))
    elif change == "static_arg":
        other = dict(args=(x,), kwargs=dict(scale=3.0))
    else:
        other = None
    if other is None:
        with em.no_grad():
            out = f(x)
        expected = g(x)
    else:
        out = f(*other["args"], **other.get("kwargs", {}))
        expected = g(*other["args"], **other.get("kwargs", {}))
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-6)
    assert out.dtype == expected.dtype
    assert f.traces == 2
    f(x)  # the first signature is still cached
    assert f.traces == 2


def test_train_eval_switch_retraces_once_and_switching_back_reuses_graphs():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    jitted = em.jit(model)
    x = em.randn(6, 5)
    jitted(x)
    model.eval()
    np.testing.assert_allclose(jitted(x).numpy(), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert jitted.forward.traces == 2
    model.train()
    jitted(x)
    model.eval()
    jitted(x)
    assert jitted.forward.traces == 2
    # train mode really runs the training graph again (dropout zeros some outputs of layer 3)
    model.train()
    hidden = em.jit(model[:3])
    assert (hidden(x).numpy() == 0).any()


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_compile_time_is_recorded_per_trace_and_counts_the_first_run(dynamic_batch, caplog):
    # numba compiles the kernels on the graph's first run: compile_seconds and the log count it
    jitted = em.jit(lambda x: (x * 2 + 1).relu().sum(), dynamic_batch=dynamic_batch)
    with caplog.at_level(logging.DEBUG, logger="ember.jit"):
        jitted(em.randn(4, 3))
        jitted(em.randn(4, 3))
    assert jitted.traces == 1 and len(jitted.compile_seconds) == 1 and jitted.compile_seconds[0] > 0
    runs = [r.getMessage() for r in caplog.records if "first run" in r.getMessage()]
    assert len(runs) == 1 and runs[0].endswith(f"{jitted.compile_seconds[0]:.3f} s compiling in all")


def test_the_guards_check_agrees_with_failed_guard():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    jitted = em.jit(model)
    jitted(em.randn(2, 3))
    compiled = jitted.forward._last[3]
    assert compiled.guards_hold() and compiled.failed_guard() is None
    model[1].eval()
    assert not compiled.guards_hold()
    assert compiled.failed_guard() == "Dropout.training changed from True to False"
    model[1].train()
    assert compiled.guards_hold()
    # a guard that cannot be read counts as failed, in both
    compiled.guards[("broken",)] = ("a broken reader", lambda: 1 / 0, 1)
    from ember.compiler.jit import _guards_check

    compiled.guards_hold = _guards_check(compiled.guards)
    assert not compiled.guards_hold()
    assert compiled.failed_guard() == "a broken reader can no longer be read"


def test_debug_log_says_why_it_retraced(caplog):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    jitted = em.jit(model)
    x = em.randn(2, 3)
    with caplog.at_level(logging.DEBUG, logger="ember.jit"):
        jitted(x)
        model.eval()
        jitted(x)
        jitted(em.randn(4, 3))
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "ember.jit")
    assert "the first call" in text
    assert "retracing because Sequential.training changed from True to False" in text
    assert "a new input signature" in text


def _adam_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _pair(make_opt, seed=0):
    """Two identical models with their optimizers: (eager, jitted)."""
    out = []
    for _ in range(2):
        em.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
        opt = make_opt(model.parameters())
        out.append((model, opt))
    return out


def _assert_same_params(m1, m2, rtol=1e-5, atol=1e-6):
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("key,value", [("weight_decay", 0.1), ("eps", 1e-3), ("amsgrad", True)])
def test_changing_a_fixed_hyperparameter_retraces_and_matches_eager(key, value, caplog):
    (me, oe), (mj, oj) = _pair(lambda p: em.optim.AdamW(p, lr=0.05, weight_decay=0.01))
    x, y = em.randn(5, 4), em.randn(5, 2)
    eager, jitted = _adam_step(me, oe), em.jit(_adam_step(mj, oj))
    with caplog.at_level(logging.DEBUG, logger="ember.jit"):
        for i in range(4):
            if i == 2:
                oe.param_groups[0][key] = value
                oj.param_groups[0][key] = value
            le, lj = eager(x, y).item(), jitted(x, y).item()
            assert lj == pytest.approx(le, rel=1e-5)
    # amsgrad also creates new state while tracing: the next call sees it and traces once more
    assert jitted.traces == (3 if key == "amsgrad" else 2)
    _assert_same_params(me, mj)
    assert f"AdamW.param_groups[0][{key!r}] changed" in caplog.text


def test_scheduled_lr_is_read_at_run_time_without_retracing():
    (me, oe), (mj, oj) = _pair(lambda p: em.optim.SGD(p, lr=0.2, momentum=0.9))
    se = em.optim.lr_scheduler.StepLR(oe, step_size=2, gamma=0.1)
    sj = em.optim.lr_scheduler.StepLR(oj, step_size=2, gamma=0.1)
    x, y = em.randn(5, 4), em.randn(5, 2)
    eager, jitted = _adam_step(me, oe), em.jit(_adam_step(mj, oj))
    losses = []
    for _ in range(6):
        losses.append((eager(x, y).item(), jitted(x, y).item()))
        se.step()
        sj.step()
    # SGD's first momentum step differs from later ones: one retrace, then never again
    assert jitted.traces == 2
    np.testing.assert_allclose([b for _, b in losses], [a for a, _ in losses], rtol=1e-5)
    _assert_same_params(me, mj)
    assert oj.param_groups[0]["lr"] == pytest.approx(0.2 * 0.001)


def test_adam_betas_changed_by_a_schedule_take_effect_without_retracing():
    (me, oe), (mj, oj) = _pair(lambda p: em.optim.Adam(p, lr=0.05))
    x, y = em.randn(5, 4), em.randn(5, 2)
    eager, jitted = _adam_step(me, oe), em.jit(_adam_step(mj, oj))
    for i in range(4):
        for o in (oe, oj):
            o.param_groups[0]["betas"] = (0.9 - 0.1 * i, 0.99)
            o.param_groups[0]["lr"] = 0.05 / (i + 1)
        assert jitted(x, y).item() == pytest.approx(eager(x, y).item(), rel=1e-5)
    assert jitted.traces == 1
    _assert_same_params(me, mj)


def test_replacing_a_parameter_array_or_the_optimizer_state_retraces():
    model = nn.Linear(3, 2)
    opt = em.optim.Adam(model.parameters(), lr=0.1)
    step = em.jit(_adam_step(model, opt))
    x, y = em.randn(4, 3), em.randn(4, 2)
    step(x, y)
    saved = opt.state_dict()
    step(x, y)
    opt.load_state_dict(saved)  # new state arrays
    new_w = np.zeros((2, 3), np.float32)
    model.weight.data = new_w    # a new parameter array
    step(x, y)
    assert step.traces == 2
    assert np.abs(new_w).sum() > 0  # the graph updated the new array
    assert opt.state[model.weight]["exp_avg"].data.any()


def test_gradient_accumulation_across_jitted_calls_matches_eager():
    em.manual_seed(0)
    w = nn.Parameter(em.randn(3, 2).data)
    x1, x2 = em.randn(4, 3), em.randn(4, 3)

    def accumulate(x):
        (x @ w).pow(2).sum().backward()

    f = em.jit(accumulate)
    f(x1)  # no .grad yet: assigns
    f(x2)  # a .grad exists: adds (a guard retraces once)
    jit_grad = w.grad.numpy().copy()
    w.grad = None
    accumulate(x1)
    accumulate(x2)
    np.testing.assert_allclose(jit_grad, w.grad.numpy(), rtol=1e-5)
    assert f.traces == 2
    f(x1)
    assert f.traces == 2


# ---- inspection ------------------------------------------------------------------------------

def _mlp_fn():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return em.jit(lambda x: F.softmax(model(x), -1))


def test_graph_prints_one_line_per_node_with_op_shape_and_dtype():
    f = _mlp_fn()
    x = em.randn(2, 4)
    graph = f.graph(x)
    text = str(graph)
    lines = text.splitlines()
    node_lines = [ln for ln in lines if re.match(r"^%\d+:\w+\[", ln) and "= input" not in ln
                  and "= capture" not in ln and "= scalar" not in ln]
    assert len(node_lines) == len(graph.nodes)
    for node, line in zip(graph.nodes, node_lines):
        assert f"{node.output.dtype}{list(node.output.shape)}" in line
        name = node.describe() if hasattr(node, "describe") else node.op.name
        assert name.split(" ")[0] in line
    assert "float32[2, 4] = input[0]" in text
    assert "matmul(" in text and "fused[softmax by rows]" in text  # the row kernel (rowwise.py)
    assert lines[-1].startswith("return %")
    assert f.traces == 0  # inspecting does not fill the cache


def _check_dot(dot):
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    body = dot.strip().splitlines()[1:-1]
    assert all(line.rstrip().endswith(";") for line in body)
    assert all(line.count('"') % 2 == 0 for line in body)
    defined = set(re.findall(r"(\w+) \[label=", dot))
    edges = re.findall(r"(\w+) -> (\w+);", dot)
    for a, b in edges:
        assert a in defined and b in defined, (a, b)  # no implicit (unlabelled) nodes
    return edges


def test_to_dot_is_graphviz_text_with_edges():
    graph = _mlp_fn().graph(em.randn(2, 4))
    edges = _check_dot(graph.to_dot())
    assert len(edges) >= len(graph.nodes)
    assert "matmul" in graph.to_dot()


def test_to_dot_shows_kernels_with_several_outputs_writes_and_gradients():
    def f(x):
        a = x * 2.0 + 1.0
        return a.relu() - a, a.sum()

    dot = em.jit(f).graph(em.randn(4, 5)).to_dot()
    _check_dot(dot)
    assert "fused[mul + add + relu + sub]" in dot
    model = nn.Linear(4, 3)
    opt = em.optim.Adam(model.parameters())
    graph = em.jit(_adam_step(model, opt)).graph(em.randn(5, 4), em.randn(5, 3))
    dot = graph.to_dot()
    _check_dot(dot)
    assert "write state[3, 4] in place" in dot and '"grad"' in dot
    # the printed graph shows the state the kernels update in place, and the gradients
    text = str(graph)
    assert text.count("-> state[3, 4] (in place, by the kernel)") == 3   # weight, exp_avg, exp_avg_sq
    assert "grad %" in text


def test_debug_prints_passes_and_generated_code(capsys):
    f = em.jit(lambda x, y: (x * y + 1.0).relu() * 3.0 + x.exp().sum(), debug=True)
    f(em.randn(3, 4), em.randn(3, 4))
    out = capsys.readouterr().out
    assert "tracing because of the first call" in out
    assert "--- traced graph" in out
    for name in ("dce", "fold", "simplify", "cse", "fuse"):
        assert f"--- after {name}:" in out
    assert "--- generated code" in out and "def run(args):" in out
    assert "--- kernel for" in out and "@numba.njit" in out


def test_debug_prints_every_kind_of_kernel_node(capsys):
    # a GRU's steps make scatter sums (Python functions); the batch-1 classifier a matvec kernel
    gru, head = nn.GRU(8, 16), nn.Linear(16, 300)

    def step(x):
        out, _ = gru(x)
        loss = (head(out[-1][:1]) ** 2).sum()
        loss.backward()
        return loss

    em.jit(step, debug=True)(em.randn(5, 3, 8))
    out = capsys.readouterr().out
    assert "--- kernel for scatter_sum[" in out and "(Python: " in out
    assert "--- kernel for matvec" in out and "def dot_range" in out


def test_debug_environment_variable(capsys, monkeypatch):
    f = em.jit(lambda x: (x * 2.0 + 1.0).relu())
    monkeypatch.setenv("EMBER_JIT_DEBUG", "1")
    f(em.randn(3, 4))
    out = capsys.readouterr().out
    assert "--- after simplify:" in out and "def run(args):" in out
    monkeypatch.setenv("EMBER_JIT_DEBUG", "0")
    g = em.jit(lambda x: (x * 2.0 + 1.0).relu())
    g(em.randn(3, 4))
    assert capsys.readouterr().out == ""


# ---- JAX-style steps, jitted modules, results owned by the caller --------------------------------

def test_value_and_grad_inside_jit():
    em.manual_seed(0)
    w, b = em.randn(4, 2), em.zeros(2)
    x, y = em.randn(6, 4), em.randn(6, 2)

    def loss_fn(params, x, y):
        w, b = params
        return F.mse_loss(x @ w + b, y)

    def step(params, x, y):
        loss, grads = em.value_and_grad(loss_fn)(params, x, y)
        return loss, [p - 0.1 * g for p, g in zip(params, grads)]

    jitted = em.jit(step)
    pe, pj = [w, b], [w, b]
    for _ in range(3):
        le, pe = step(pe, x, y)
        lj, pj = jitted(pj, x, y)
        assert lj.item() == pytest.approx(le.item(), rel=1e-5)
    for a, c in zip(pe, pj):
        np.testing.assert_allclose(c.numpy(), a.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert jitted.traces == 1


def test_jit_of_a_module_passes_attributes_through_and_has_a_graph():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    jitted = em.jit(model)
    x = em.randn(2, 4)
    np.testing.assert_allclose(jitted(x).numpy(), model(x).detach().numpy(), rtol=1e-6)
    assert jitted.training is True and len(list(jitted.parameters())) == 2
    assert "matmul" in str(jitted.graph(x))


def test_decorated_method():
    class Scaler:
        def __init__(self, k):
            self.k = k

        @em.jit
        def apply(self, x):
            return x * self.k + 1.0

    a, b = Scaler(2.0), Scaler(3.0)
    x = em.randn(3)
    np.testing.assert_allclose(a.apply(x).numpy(), x.numpy() * 2 + 1, rtol=1e-6)
    np.testing.assert_allclose(b.apply(x).numpy(), x.numpy() * 3 + 1, rtol=1e-6)


def test_results_never_alias_parameters_inputs_or_graph_constants():
    w = nn.Parameter(em.randn(3).data)
    x = em.randn(3)
    f = em.jit(lambda x: (w * 1.0, x + 0.0, x.reshape(3, 1) * 1.0))
    out_w, out_x, out_r = f(x)
    np.testing.assert_array_equal(out_w.numpy(), w.data)
    assert not np.shares_memory(out_w.data, w.data)
    assert not np.shares_memory(out_x.data, x.data)
    assert not np.shares_memory(out_r.data, x.data)
    # gradients are the caller's own arrays, even when the graph's gradient is a view of an input
    w2 = nn.Parameter(em.randn(3).data)
    g = em.jit(lambda x: (w2 * x).sum().backward())
    g(x)
    assert not np.shares_memory(w2.grad.data, x.data)
    w2.grad.data += 1  # writable, and changes nothing else
    np.testing.assert_allclose(w2.grad.numpy() - 1, x.numpy(), rtol=1e-6)


OPTIMIZERS = {
    "sgd": lambda p: em.optim.SGD(p, lr=0.1),
    "sgd_nesterov_wd": lambda p: em.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam_amsgrad": lambda p: em.optim.Adam(p, lr=0.05, amsgrad=True, weight_decay=0.01),
    "adamw_amsgrad": lambda p: em.optim.AdamW(p, lr=0.05, amsgrad=True),
    "rmsprop": lambda p: em.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: em.optim.Adagrad(p, lr=0.1),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_like_eager(name):
    (me, oe), (mj, oj) = _pair(OPTIMIZERS[name])
    x, y = em.randn(5, 4), em.randn(5, 2)
    eager, jitted = _adam_step(me, oe), em.jit(_adam_step(mj, oj))
    for _ in range(4):
        assert jitted(x, y).item() == pytest.approx(eager(x, y).item(), rel=1e-5)
    _assert_same_params(me, mj)
    assert jitted.traces <= 2


def test_gradients_are_writable_even_when_the_graph_computes_a_broadcast():
    w = nn.Parameter(em.randn(3).data)
    f = em.jit(lambda s: (w.sum() * s * s).backward())  # d/dw = s^2 broadcast to w's shape
    f(em.tensor(2.0))
    np.testing.assert_allclose(w.grad.numpy(), [4.0, 4.0, 4.0])
    w.grad.add_(1.0)
    np.testing.assert_allclose(w.grad.numpy(), [5.0, 5.0, 5.0])


@pytest.mark.parametrize("batchnorm", [False, True], ids=["batch_generic", "one_graph_per_size"])
def test_dynamic_batch_training_matches_eager_and_traces_each_size_once(batchnorm):
    def run(jit):
        em.manual_seed(0)
        layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if batchnorm else []) + [nn.ReLU(), nn.Linear(16, 3)]
        model = nn.Sequential(*layers)
        # dampening: SGD's first momentum step (buffer = gradient) differs from later ones
        opt = em.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        fn = em.jit(step, dynamic_batch=True) if jit else step
        em.manual_seed(1)
        batches = [(em.randn(b, 6), em.randint(0, 3, (b,))) for b in (8, 8, 5, 8, 3, 5, 3)]
        return [fn(x, y).item() for x, y in batches], fn

    (le, _), (lj, fn) = run(False), run(True)
    np.testing.assert_allclose(lj, le, rtol=1e-5)
    # the first step (which creates the momentum buffers) is traced on its own; then one
    # template for every size, or with BatchNorm (not batch-generic here) one graph per size
    assert fn.traces == (4 if batchnorm else 2)


def test_graph_of_a_function_differentiating_its_arguments_prints_their_gradients():
    def f(x, y):
        (x * y).sum().backward()

    x, y = em.randn(3, requires_grad=True), em.randn(3, requires_grad=True)
    text = str(em.jit(f).graph(x, y))
    assert "-> input[0]" in text and "-> input[1]" in text


def test_a_call_like_the_last_one_reuses_its_graph_and_any_other_call_looks_up_its_own():
    # the fast path for a repeated signature must never hand a call the wrong specialisation
    f = em.jit(lambda x, y: (x * y).sum(dim=0))
    a, b = em.randn(4, 3), em.randn(4, 3)
    a64, b64 = em.randn(4, 3, dtype=em.float64), em.randn(4, 3, dtype=em.float64)
    wide = em.randn(4, 5)
    for x, y in [(a, b), (a, b), (a64, b64), (a, b), (wide, wide), (a64, b64), (a, b)]:
        got = f(x, y)
        np.testing.assert_allclose(got.numpy(), (x.numpy() * y.numpy()).sum(0), rtol=1e-6)
        assert got.dtype == x.dtype and got.shape == (x.shape[1],)
    assert f.traces == 3
    p = em.nn.Parameter(em.randn(4, 3))  # a Tensor subclass: looked up the ordinary way
    np.testing.assert_allclose(f(p, b).detach().numpy(), (p.detach().numpy() * b.numpy()).sum(0), rtol=1e-6)
    assert f.traces == 4  # it requires grad
    with em.no_grad():
        f(a, b)  # same tensors as a cached call, another grad mode
    assert f.traces == 5
