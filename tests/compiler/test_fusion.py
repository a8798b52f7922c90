"""Elementwise fusion and the numba kernels: what is grouped, in-place state updates, buffers,
kernel semantics (broadcasting, NaN), and the on-disk kernel cache across processes."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jit_helpers import compiled_graph, fused_nodes, op_names, run_graph

import ember as em
import ember.nn.functional as F
from ember import nn
from ember.compiler import passes
from ember.compiler.kernels import kernel_source, make_kernel
from ember.ops.registry import PRIMITIVES


def _chain(x, y):
    return (x * y + 1.0).relu() * x


def test_an_elementwise_chain_becomes_one_kernel():
    f = em.jit(_chain)
    x, y = em.randn(4, 5), em.randn(5)
    np.testing.assert_allclose(f(x, y).numpy(), _chain(x, y).numpy(), rtol=1e-6)
    graph = compiled_graph(f)
    (fused,) = fused_nodes(graph)
    assert [m.op.name for m in fused.members] == ["mul", "add", "relu", "mul"]
    assert len(fused.outputs) == 1 and len(graph.nodes) == 1
    assert "fused[mul + add + relu + mul]" in str(graph)


def test_values_used_outside_the_group_are_extra_kernel_outputs():
    def f(x):
        a = x * 2.0 + 1.0
        return a.relu() - a, a.sum()   # a is needed by the reduction too

    j = em.jit(f)
    x = em.randn(4, 5)
    for got, exp in zip(j(x), f(x)):
        np.testing.assert_allclose(got.numpy(), exp.numpy(), rtol=1e-6)
    (fused,) = fused_nodes(compiled_graph(j))
    assert len(fused.outputs) == 2
    assert "sum" in op_names(compiled_graph(j))


# numba would call scalar libm for these: they stay NumPy calls (exp, tanh, sigmoid and the
# tanh GELU have vectorizable float32 forms, tests/compiler/test_fastmath.py)
WITHOUT_VECTOR_FORM = ["log", "sin", "cos", "erf", "log1p", "expm1", "silu", "softplus"]


@pytest.mark.parametrize("name", WITHOUT_VECTOR_FORM)
def test_transcendental_functions_without_a_vector_form_stay_numpy_calls(name):
    assert PRIMITIVES[name].scalar is None


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "gelu"])
def test_vector_form_transcendentals_fuse_in_float32_only(name):
    assert PRIMITIVES[name].scalar_dtypes == ("float32",)


def test_a_float64_chain_around_exp_and_tanh_keeps_them_outside_kernels():
    def f(x):
        return ((x * 2.0 + 1.0).exp() * 0.5 - 1.0).tanh() * 3.0 + x

    j = em.jit(f)
    x = em.randn(4, 5, dtype=em.float64) * 0.3
    np.testing.assert_allclose(j(x).numpy(), f(x).numpy(), rtol=1e-12)
    graph = compiled_graph(j)
    assert "exp" in op_names(graph) and "tanh" in op_names(graph)
    for node in fused_nodes(graph):
        assert not {m.op.name for m in node.members} & {"exp", "tanh"}
    assert len(fused_nodes(graph)) >= 2


def test_one_small_op_stays_a_numpy_call_but_a_large_one_is_a_kernel():
    small = em.jit(lambda x: x * 2.0)
    small(em.randn(4, 5))
    assert fused_nodes(compiled_graph(small)) == []
    large = em.jit(lambda x: x * 2.0)
    x = em.randn(128, 128)
    np.testing.assert_allclose(large(x).numpy(), x.numpy() * 2, rtol=1e-6)
    assert len(fused_nodes(compiled_graph(large))) == 1


def _adam_pair():
    out = []
    for _ in range(2):
        em.manual_seed(0)
        model = nn.Linear(5, 4)
        opt = em.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
        out.append((model, opt))
    return out


def _step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def test_adam_update_of_one_parameter_is_one_kernel_writing_state_in_place():
    (me, oe), (mj, oj) = _adam_pair()
    x, y = em.randn(6, 5), em.randn(6, 4)
    eager, jitted = _step(me, oe), em.jit(_step(mj, oj))
    eager(x, y)
    jitted(x, y)   # creates the state while tracing
    arrays = {id(p): (p.data, oj.state[p]["exp_avg"].data, oj.state[p]["exp_avg_sq"].data)
              for p in mj.parameters()}
    for _ in range(3):
        eager(x, y)
        jitted(x, y)
    assert jitted.traces == 1
    graph = compiled_graph(jitted)
    for p, pe in zip(mj.parameters(), me.parameters()):
        p_arr, m_arr, v_arr = arrays[id(p)]
        # the same array objects, holding the new values
        assert p.data is p_arr and oj.state[p]["exp_avg"].data is m_arr and oj.state[p]["exp_avg_sq"].data is v_arr
        np.testing.assert_allclose(p_arr, pe.data, rtol=1e-5, atol=1e-7)
        # moments after four steps (v ~ g^2 doubles the gradients' float32 rounding differences)
        np.testing.assert_allclose(m_arr, oe.state[pe]["exp_avg"].data, rtol=5e-5, atol=1e-8)
        np.testing.assert_allclose(v_arr, oe.state[pe]["exp_avg_sq"].data, rtol=5e-5, atol=1e-10)
        # one kernel computes and writes the parameter and both moments
        (kernel,) = [n for n in fused_nodes(graph) if n.output.shape == p.shape and len(n.outputs) >= 3]
        written = {id(a) for a in (p_arr, m_arr, v_arr)}
        in_place = [v for v in kernel.outputs if v.id in kernel.in_place]
        assert len(in_place) == 3
        assert {id(a) for a, v in graph.writes} & written == set()  # no copy afterwards
        assert "sqrt" in [m.op.name for m in kernel.members]


def test_fusion_preserves_results_of_a_training_step_graph():
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))
    opt = em.optim.SGD(model.parameters(), lr=0.1)

    def f(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss, [p.grad for p in model.parameters()]

    args = (em.randn(6, 5), em.randint(0, 3, (6,)))
    j = em.jit(f)
    arrays = [a.data for a in args]
    g1, _, _ = j.trace(*args)
    ref_out, _ = run_graph(passes.optimize(g1, fuse=False), arrays)
    g2, _, _ = j.trace(*args)
    g2 = passes.optimize(g2, fuse=True)
    assert fused_nodes(g2)
    out, _ = run_graph(g2, arrays)
    for a, b in zip(out, ref_out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_results_are_new_arrays_at_every_call_even_as_views_of_kernel_buffers():
    fns = [lambda x: (x * 2.0 + 1.0).relu().reshape(-1),
           lambda x: (x * 2.0 + 1.0).relu()[1:3],
           lambda x: (x * 2.0 + 1.0).relu().mT]
    x1, x2 = em.randn(4, 5), em.randn(4, 5)
    for fn in fns:
        f = em.jit(fn)
        first = f(x1)
        kept = first.numpy().copy()
        second = f(x2)
        np.testing.assert_array_equal(first.numpy(), kept)
        np.testing.assert_allclose(second.numpy(), fn(x2).numpy(), rtol=1e-6)


def test_intermediate_buffers_are_reused_across_runs():
    def f(x):
        a = (x * 2.0 + 1.0).relu()
        return (a @ a.mT).sum()

    j = em.jit(f)
    x = em.randn(4, 5)
    j(x)
    (fused,) = fused_nodes(compiled_graph(j))
    out1 = fused.kernel(x.data)[0]
    out2 = fused.kernel((x * 3).data)[0]
    assert out1 is out2  # one buffer, written at every run
    assert j(x).item() == pytest.approx(f(x).item(), rel=1e-5)


# ---- kernels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape_a,shape_b", [((4, 5), (4, 5)), ((4, 5), (5,)), ((4, 1), (1, 5)), ((4, 5), ())])
def test_kernel_broadcasts_inputs_by_index(shape_a, shape_b):
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    spec = [("x0", shape_a, None), ("x1", shape_b, None), ("x2", None, np.asarray(0.5, np.float32))]
    members = [("t0", "np.float32((x0 * x1))"), ("t1", "np.float32((t0 + x2))")]
    k = make_kernel(out_shape, spec, members, ["t0", "t1"], [np.float32, np.float32])
    a = np.random.default_rng(0).standard_normal(shape_a).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(shape_b).astype(np.float32)
    t0, t1 = k(a, b)
    np.testing.assert_allclose(t0, a * b, rtol=1e-6)
    np.testing.assert_allclose(t1, a * b + np.float32(0.5), rtol=1e-6)
    assert "for a0 in range" in k.source and "@numba.njit" in k.source


def test_kernel_reads_non_contiguous_inputs_correctly():
    f = em.jit(lambda x, y: (x * y + 1.0).relu())
    x = em.randn(5, 4).mT  # a transposed (Fortran-order) view
    y = em.randn(4, 5)
    np.testing.assert_allclose(f(x, y).numpy(), (x * y + 1.0).relu().numpy(), rtol=1e-6)


def test_kernel_source_is_deterministic():
    spec = [("x0", (3, 4), None)]
    members = [("t0", "np.float32((x0 * x0))")]
    assert kernel_source((3, 4), spec, members, ["t0"]) == kernel_source((3, 4), spec, members, ["t0"])


SPECIAL = np.array([[np.nan, 1.0, -np.inf, np.inf, 2.5],
                    [-2.5, 0.0, np.nan, 1e30, -1e-30]], np.float32)
OTHER = np.array([[1.0, np.nan, 0.0, 1.0, 3.0],
                  [-3.0, -1.0, np.nan, 2.0, 0.5]], np.float32)

KERNEL_SEMANTICS = {
    "maximum": lambda a, b: em.maximum(a * 1.5, b) + 1.0,
    "minimum": lambda a, b: em.minimum(a * 1.5, b) + 1.0,
    "relu": lambda a, b: (a * 2.0).relu() + b,
    "floor_ceil": lambda a, b: (a * 2.0).floor() + (b * 2.0).ceil(),
    "clamp": lambda a, b: (a * 2.0).clamp(-1.0, 1.0) + b,
    "abs_sign": lambda a, b: (a * 2.0).abs() + (b * 3.0).sign(),
    "where": lambda a, b: em.where(a * 2.0 > b, a, b) + 1.0,
    "div_sqrt": lambda a, b: (a * 2.0) / (b.abs() * 0.0 + 2.0) + (b * b).sqrt(),
    "leaky_relu": lambda a, b: F.leaky_relu(a * 2.0, 0.1) + b,
}


@pytest.mark.parametrize("name", KERNEL_SEMANTICS)
def test_kernels_follow_numpy_semantics_for_nan_inf_and_large_values(name):
    fn = KERNEL_SEMANTICS[name]
    a, b = em.tensor(SPECIAL), em.tensor(OTHER)
    with np.errstate(all="ignore"):
        expected = fn(a, b).numpy()
        j = em.jit(fn)
        got = j(a, b).numpy()
    assert fused_nodes(compiled_graph(j))
    np.testing.assert_array_equal(got, expected)


def test_integer_chains_fuse_and_keep_their_dtype():
    fn = lambda x: (x * 2 - 1).relu() + em.maximum(x, x * 3)
    x = em.randint(-5, 5, (4, 5))
    j = em.jit(fn)
    out = j(x)
    assert out.dtype == em.int64 and fused_nodes(compiled_graph(j))
    np.testing.assert_array_equal(out.numpy(), fn(x).numpy())


# ---- the disk cache and lazy numba ------------------------------------------------------------

CACHE_SCRIPT = textwrap.dedent("""
    import json, sys
    import ember as em
    before = "numba" in sys.modules
    f = em.jit(lambda x, y: (x * y + 1.2345678).relu() * x)   # a kernel of its own
    x, y = em.randn(4, 5), em.randn(4, 5)
    out = f(x, y)
    assert abs(out.numpy() - ((x * y + 1.2345678).relu() * x).numpy()).max() < 1e-6
    graph = next(iter(f.cache.values()))[0].graph
    stats = [n.kernel.numba_function.stats for n in graph.nodes if hasattr(n, "members")]
    print(json.dumps({"numba_at_import": before,
                      "hits": sum(sum(s.cache_hits.values()) for s in stats),
                      "misses": sum(sum(s.cache_misses.values()) for s in stats),
                      "kernels": len(stats), "cache_path": stats[0].cache_path}))
""")


def _run_script(script, tmp_path):
    env = dict(os.environ, EMBER_CACHE_DIR=str(tmp_path))
    env.pop("EMBER_JIT_DEBUG", None)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_kernels_are_cached_on_disk_and_a_second_process_does_not_compile(tmp_path):
    first = _run_script(CACHE_SCRIPT, tmp_path)
    assert first["kernels"] == 1 and first["misses"] == 1 and first["hits"] == 0
    assert first["numba_at_import"] is False
    files = os.listdir(tmp_path / "kernels")
    assert any(name.startswith("k_") and name.endswith(".py") for name in files)
    assert first["cache_path"].startswith(str(tmp_path))
    second = _run_script(CACHE_SCRIPT, tmp_path)
    assert second["hits"] == 1 and second["misses"] == 0   # loaded from numba's disk cache


def test_a_change_to_the_kernels_helper_modules_compiles_them_again(tmp_path, monkeypatch):
    # numba's cache of a kernel module does not see the fastmath/native functions it inlines;
    # their sources are part of the kernel's file name instead
    from ember.compiler import kernels

    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    source = "import numba\n\n\n@numba.njit(cache=True)\ndef plus_one(x):\n    return x + 1\n"
    first = kernels.load_kernel_module(source)
    assert kernels.load_kernel_module(source) is first
    monkeypatch.setattr(kernels, "_helpers_digest", lambda: b"another fastmath.py")
    second = kernels.load_kernel_module(source)
    assert second is not first and second.__file__ != first.__file__
    assert second.plus_one(1) == 2
    assert sorted(f for f in os.listdir(tmp_path / "kernels") if f.endswith(".py")) == sorted(
        os.path.basename(m.__file__) for m in (first, second))


def test_import_ember_and_defining_a_jit_do_not_import_numba():
    script = textwrap.dedent("""
        import sys
        import ember as em
        f = em.jit(lambda x: (x * 2.0 + 1.0).relu())
        assert "numba" not in sys.modules, "numba imported too early"
        g = em.jit(lambda x: x.sum())
        g(em.randn(3))   # no kernel needed: still no numba
        assert "numba" not in sys.modules, "numba imported without a kernel"
        f(em.randn(3, 4))
        assert "numba" in sys.modules
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_in_place_state_update_reads_state_through_its_output_argument():
    """Adam's update writes m, v and the parameter in place: the kernel reads each through the
    array it writes (no second, aliasing argument, which kept LLVM from vectorizing), loops
    over one flat index, reads scalars once, and matches eager exactly."""
    def run(jit):
        em.manual_seed(0)
        p = em.randn(64, 300, requires_grad=True)
        opt = em.optim.Adam([p], lr=1e-2, fused=False)

        def step(x):
            opt.zero_grad()
            # (no tanh: near saturation its last-ulp differences change the sign of tiny
            # gradients, and Adam turns those into whole lr-sized steps)
            loss = ((p * x - 1.0) ** 2).sum()
            loss.backward()
            opt.step()
            return loss

        f = em.jit(step) if jit else step
        for i in range(4):
            f(em.randn(64, 300) * (i + 1))
        return p.detach().numpy(), f

    eager, _ = run(False)
    jitted, f = run(True)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)  # steps of lr=1e-2
    graph = compiled_graph(f)
    adam = next(n for n in fused_nodes(graph) if n.in_place)
    source = adam.kernel.source
    header = next(line for line in source.splitlines() if line.startswith("def kernel_serial"))
    reads_of_outputs = [line for line in source.split("def kernel_serial")[1].splitlines()
                        if "= out_" in line and "[" in line.split("=")[1]]
    assert len(reads_of_outputs) == 3, (header, reads_of_outputs)  # m, v and p: read where they are written
    assert "for a1 in" not in source                      # one flat loop over 64*300 elements
    body = source.split("def kernel_serial")[1]
    first_loop = body.index("for a0")
    assert "_arr[0]" not in body[first_loop:], "a scalar is read inside the loop"


def test_kernels_split_over_threads_give_the_unsplit_results(monkeypatch):
    """Flat kernels from THREADED_MIN_ELEMENTS on run in ranges on ember's threads: a training step
    with in-place Adam state then equals eager, as the whole-range kernels do."""
    from ember.compiler import kernels
    from ember.ops import threads

    monkeypatch.setattr(kernels, "THREADED_MIN_ELEMENTS", 0)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    (me, oe), (mj, oj) = _adam_pair()
    x, y = em.randn(6, 5), em.randn(6, 4)
    eager, jitted = _step(me, oe), em.jit(_step(mj, oj))
    for _ in range(3):
        np.testing.assert_allclose(jitted(x, y).item(), eager(x, y).item(), rtol=1e-5)
    assert fused_nodes(compiled_graph(jitted))
    for p, pe in zip(mj.parameters(), me.parameters()):
        np.testing.assert_allclose(p.data, pe.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(oj.state[p]["exp_avg"].data, oe.state[pe]["exp_avg"].data, rtol=5e-5, atol=1e-8)


def test_broadcasting_kernels_split_their_first_axis_over_threads(monkeypatch):
    """A loop-nest kernel (inputs broadcast) splits its first axis: inputs spanning it are
    sliced with it, inputs broadcast along it (size 1 or fewer dims) are shared."""
    from ember.compiler import kernels
    from ember.ops import threads

    monkeypatch.setattr(kernels, "THREADED_MIN_ELEMENTS", 0)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)

    def f(x, per_row, shared, column):
        return ((x + per_row) * shared - column).relu() * 2.0

    x, per_row, shared, column = em.randn(6, 5, 7), em.randn(6, 1, 1), em.randn(1, 5, 7), em.randn(7)
    j = em.jit(f)
    np.testing.assert_allclose(j(x, per_row, shared, column).numpy(), f(x, per_row, shared, column).numpy(),
                               rtol=1e-6)
    (fused,) = fused_nodes(compiled_graph(j))
    assert "for a2" in fused.kernel.source  # a loop nest, not one flat loop
