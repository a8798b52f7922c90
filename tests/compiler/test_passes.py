"""Each graph pass on its own, on hand-built and traced graphs: what it removes or rewrites,
and that the graph computes the same results before and after."""

import numpy as np
import pytest
from jit_helpers import GraphBuilder, op_names, run_graph

import ember as em
import ember.nn.functional as F
from ember.compiler import passes
from ember.compiler.ir import KernelNode

RNG = np.random.default_rng(0)


def _arrays(graph):
    return [RNG.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs]


def _same_results(make_graph, transform, arrays=None):
    """Run a fresh graph before and after ``transform``: the outputs must agree."""
    before = make_graph()
    arrays = arrays if arrays is not None else _arrays(before)
    expected, _ = run_graph(before, arrays)
    after = transform(make_graph())
    got, _ = run_graph(after, arrays)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    return after


# ---- dce ------------------------------------------------------------------------------------

def test_dce_removes_unused_nodes_and_keeps_what_outputs_need():
    def make():
        b = GraphBuilder()
        x = b.input((3, 4))
        used = b.op("exp", x)
        b.op("tanh", x)                      # unused
        b.op("neg", b.op("abs", x))          # an unused chain
        return b.output(b.op("add", used, x))

    graph = _same_results(make, passes.dce)
    assert op_names(graph) == ["exp", "add"]


def test_dce_keeps_writes_gradients_and_random_draws():
    b = GraphBuilder()
    x = b.input((3,))
    b.op("random", kind="uniform", shape=(3,), dtype=np.dtype(np.float32), params=(0.0, 1.0), generator=None)
    state = np.zeros(3, np.float32)
    g = b.graph
    w = b.op("mul", x, b.lit(2.0))
    g.writes = [(state, w)]
    b.output()
    passes.dce(g)
    assert op_names(g) == ["random", "mul"]


# ---- cse ------------------------------------------------------------------------------------

def test_cse_merges_identical_nodes_and_equal_constants():
    def make():
        b = GraphBuilder()
        x, y = b.input((3, 4)), b.input((4,))
        a1 = b.op("mul", b.op("add", x, y), b.lit(2.0))
        a2 = b.op("mul", b.op("add", x, y), b.lit(2.0))    # the same computation again
        s1 = b.op("sum", a1, dims=(0,), keepdim=False)
        s2 = b.op("sum", a2, dims=(0,), keepdim=False)
        s3 = b.op("sum", a2, dims=(1,), keepdim=False)      # other attributes: kept
        return b.output(s1, s2, s3)

    graph = _same_results(make, passes.cse)
    assert op_names(graph) == ["add", "mul", "sum", "sum"]
    assert graph.outputs[0] is graph.outputs[1]


def test_cse_never_merges_random_draws():
    b = GraphBuilder()
    attrs = dict(kind="normal", shape=(4,), dtype=np.dtype(np.float32), params=(0.0, 1.0), generator=None)
    r1, r2 = b.op("random", **attrs), b.op("random", **attrs)
    graph = passes.cse(b.output(b.op("sub", r1, r2)))
    assert op_names(graph) == ["random", "random", "sub"]
    out, _ = run_graph(graph, [])
    assert np.abs(out[0]).max() > 0


def test_traced_duplicate_draws_stay_distinct_after_all_passes():
    f = em.jit(lambda x: em.rand(3, 4) - em.rand(3, 4) + x)
    graph = f.graph(em.zeros(3, 4))
    assert sum(getattr(n.op, "name", "") == "random" for n in graph.nodes) == 2


# ---- fold -----------------------------------------------------------------------------------

def test_fold_evaluates_nodes_whose_inputs_are_all_literals():
    def make():
        b = GraphBuilder()
        x = b.input((3,))
        c = b.op("exp", b.op("add", b.lit(1.0), b.lit([1.0, 2.0, 3.0])))   # constant
        return b.output(b.op("mul", x, c))

    graph = _same_results(make, passes.fold)
    assert op_names(graph) == ["mul"]
    lit = graph.nodes[0].inputs[1]
    assert lit.kind == "literal"
    np.testing.assert_allclose(lit.literal, np.exp([2.0, 3.0, 4.0]).astype(np.float32), rtol=1e-6)


def test_fold_leaves_random_and_large_results():
    b = GraphBuilder()
    r = b.op("random", kind="uniform", shape=(2,), dtype=np.dtype(np.float32), params=(0.0, 1.0), generator=None)
    big = b.op("expand", b.op("reshape", b.lit(1.0), shape=(1,)), shape=(300, 300))
    graph = passes.fold(b.output(b.op("add", r, b.lit(1.0)), b.op("neg", big)))
    assert "random" in op_names(graph) and "add" in op_names(graph)
    assert "neg" in op_names(graph)   # 90,000 elements are not embedded as a constant


# ---- simplify -------------------------------------------------------------------------------

def _binary(name, literal, literal_first=False, shape=(3, 4), lit_shape=()):
    def make():
        b = GraphBuilder()
        x = b.input(shape)
        lit = b.lit(np.full(lit_shape, literal, np.float32))
        y = b.op(name, lit, x) if literal_first else b.op(name, x, lit)
        return b.output(b.op("exp", y))
    return make


IDENTITIES = {
    "x*1": _binary("mul", 1.0),
    "1*x": _binary("mul", 1.0, literal_first=True),
    "x*ones": _binary("mul", 1.0, lit_shape=(3, 4)),
    "x+0": _binary("add", 0.0),
    "0+x": _binary("add", 0.0, literal_first=True),
    "x-0": _binary("sub", 0.0),
    "x/1": _binary("div", 1.0),
    "x**1": _binary("pow", 1.0),
}


@pytest.mark.parametrize("name", IDENTITIES)
def test_simplify_removes_arithmetic_identities(name):
    graph = _same_results(IDENTITIES[name], passes.simplify)
    assert op_names(graph) == ["exp"]
    assert graph.nodes[0].inputs[0].kind == "input"


@pytest.mark.parametrize("make", [
    _binary("mul", 2.0), _binary("add", 1.0), _binary("sub", 0.0, literal_first=True),   # 0 - x is -x
    _binary("div", 1.0, literal_first=True), _binary("mul", 1.0, shape=(4,), lit_shape=(3, 4)),  # broadcasts
], ids=["x*2", "x+1", "0-x", "1/x", "x*ones_broadcast"])
def test_simplify_keeps_what_is_not_an_identity(make):
    graph = _same_results(make, passes.simplify)
    assert len(graph.nodes) == 2


def _unary_chain(*ops, shape=(2, 3, 4), dtype=np.float32):
    def make():
        b = GraphBuilder()
        v = b.input(shape, dtype)
        for name, attrs in ops:
            v = b.op(name, v, **attrs)
        return b.output(b.op("neg", b.op("exp", v)) if np.dtype(dtype).kind == "f" else v)
    return make


CHAINS = {
    "neg_neg": (_unary_chain(("neg", {}), ("neg", {})), ["exp", "neg"]),
    "cast_same_dtype": (_unary_chain(("cast", {"dtype": np.dtype(np.float32)})), ["exp", "neg"]),
    "reshape_same_shape": (_unary_chain(("reshape", {"shape": (2, 3, 4)})), ["exp", "neg"]),
    "reshape_reshape": (_unary_chain(("reshape", {"shape": (6, 4)}), ("reshape", {"shape": (24,)})),
                        ["reshape", "exp", "neg"]),
    "reshape_reshape_back": (_unary_chain(("reshape", {"shape": (6, 4)}), ("reshape", {"shape": (2, 3, 4)})),
                             ["exp", "neg"]),
    "identity_permute": (_unary_chain(("permute", {"dims": (0, 1, 2)})), ["exp", "neg"]),
    "permute_permute_inverse": (_unary_chain(("permute", {"dims": (2, 0, 1)}), ("permute", {"dims": (1, 2, 0)})),
                                ["exp", "neg"]),
    "permute_permute": (_unary_chain(("permute", {"dims": (1, 0, 2)}), ("permute", {"dims": (0, 2, 1)})),
                        ["permute", "exp", "neg"]),
}


@pytest.mark.parametrize("name", CHAINS)
def test_simplify_removes_no_op_casts_reshapes_and_permutes(name):
    make, expected = CHAINS[name]
    graph = _same_results(make, passes.simplify)
    assert op_names(graph) == expected


def test_simplify_keeps_a_reshape_of_a_shared_reshape_on_its_result():
    # a permuted gradient reshaped for a column sum and again for a weight's product (Linear on
    # a 3-D input): both reading the strided permute would copy it twice
    def make():
        b = GraphBuilder()
        x = b.input((3, 2, 4, 5))
        flat3 = b.op("reshape", b.op("permute", x, dims=(1, 0, 2, 3)), shape=(2, 3, 20))
        flat2 = b.op("reshape", flat3, shape=(6, 20))
        return b.output(b.op("exp", flat3), b.op("neg", flat2))

    graph = _same_results(make, passes.simplify)
    reshapes = [n for n in graph.nodes if n.op.name == "reshape"]
    assert len(reshapes) == 2
    assert reshapes[1].inputs[0] is reshapes[0].output


def test_simplify_combines_permutes_into_one():
    graph = _same_results(CHAINS["permute_permute"][0], passes.simplify)
    perm = graph.nodes[0]
    assert perm.inputs[0].kind == "input" and perm.attrs["dims"] == (1, 2, 0)


def test_simplify_keeps_a_real_cast():
    make = _unary_chain(("cast", {"dtype": np.dtype(np.float64)}))
    graph = _same_results(make, passes.simplify)
    assert op_names(graph) == ["cast", "exp", "neg"]


_POOL = dict(kernel=(2, 2), stride=(2, 2), dilation=(1, 1), pads=(0, 0, 0, 0), out_size=(2, 3))


def _relu_grad_through_pool(mask_of="x", other=0.0, pooled=True):
    """where(mask_of > 0, pool_scatter(g, x), other), a ReLU's gradient through the max pool
    of its output x, with the forward's pool_select(x, x) in the graph if ``pooled``."""
    def make():
        b = GraphBuilder()
        x, g, y = b.input((2, 3, 4, 6)), b.input((2, 3, 2, 3)), b.input((2, 3, 4, 6))
        outputs = [b.op("pool_select", x, x, **_POOL)] if pooled else []
        scattered = b.op("pool_scatter", g, x, **_POOL)
        mask = b.op("gt", x if mask_of == "x" else y, b.lit(0.0))
        return b.output(b.op("where", mask, scattered, b.lit(other)), *outputs)
    return make


def _relu_outputs():
    """x as a ReLU's output: zeros (windows of tied zeros among them) and positives; g, y."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((2, 3, 4, 6)), 0).astype(np.float32)
    x[0, 0, :2, :2] = 0  # a window whose maximum is a four-way tie at zero
    return [x, rng.standard_normal((2, 3, 2, 3)).astype(np.float32),
            rng.standard_normal((2, 3, 4, 6)).astype(np.float32)]


def test_simplify_masks_a_relu_gradient_before_the_pool_scatter():
    graph = _same_results(_relu_grad_through_pool(), passes.simplify, _relu_outputs())
    assert op_names(graph) == ["pool_select", "gt", "where", "pool_scatter"]
    gt, where, scatter = graph.nodes[1:]
    # the mask is tested on the pooled values, the gradient masked at the pooled size
    assert gt.inputs[0] is graph.nodes[0].output and where.output.shape == (2, 3, 2, 3)
    assert scatter.inputs[0] is where.output and scatter.output is graph.outputs[0]


@pytest.mark.parametrize("case", [dict(mask_of="y"), dict(other=1.0), dict(pooled=False)])
def test_simplify_keeps_other_masks_around_a_pool_scatter(case):
    """A mask of another tensor, a nonzero other branch, or no pooled values to test."""
    graph = _same_results(_relu_grad_through_pool(**case), passes.simplify, _relu_outputs())
    assert op_names(graph)[-3:] == ["pool_scatter", "gt", "where"]


@pytest.mark.parametrize("batch", [(), (2,)])
def test_simplify_rewrites_transpose_of_matmul(batch):
    def make():
        b = GraphBuilder()
        a, c = b.input(batch + (3, 4)), b.input(batch + (4, 5))
        n = len(batch) + 2
        dims = tuple(range(n - 2)) + (n - 1, n - 2)
        return b.output(b.op("permute", b.op("matmul", a, c), dims=dims))

    graph = _same_results(make, passes.simplify)
    names = op_names(graph)
    assert names.count("matmul") == 1 and names[-1] == "matmul" and names.count("permute") == 2
    mm = graph.nodes[-1]
    # (A @ B)^T = B^T @ A^T: the product is computed transposed, contiguous
    assert [v.node.inputs[0].ref for v in mm.inputs] == [1, 0]
    assert mm.output.shape == batch + (5, 3)


def test_simplify_keeps_transpose_when_the_product_is_used_elsewhere():
    def make():
        b = GraphBuilder()
        a, c = b.input((3, 4)), b.input((4, 5))
        m = b.op("matmul", a, c)
        return b.output(b.op("permute", m, dims=(1, 0)), m)

    graph = _same_results(make, passes.simplify)
    assert op_names(graph) == ["matmul", "permute"]


# ---- scatter_sums ---------------------------------------------------------------------------

def _slice_grads():
    """The gradient of several slices of one parameter: a sum of index_put results."""
    w = em.randn(6, 3, requires_grad=True)

    def f(x):
        loss = (w[0:2] * x).sum() + (w[2:4] * x).pow(2).sum() + (w[4:6] * x.exp()).sum()
        loss.backward()

    return em.jit(f), em.randn(2, 3)


def test_scatter_sums_adds_slices_into_one_buffer():
    f, x = _slice_grads()
    graph, _, _ = f.trace(x)
    assert op_names(graph).count("index_put") == 3
    graph = passes.scatter_sums(passes.fold(passes.dce(graph)))
    calls = [n for n in graph.nodes if isinstance(n, KernelNode)]
    assert len(calls) == 1 and "scatter_sum" in calls[0].describe()
    assert "index_put" not in op_names(graph)
    assert all(getattr(n.op, "name", "") != "add" or n.output.shape != (6, 3) for n in graph.nodes)


def test_scatter_sums_preserves_the_gradient():
    f, x = _slice_grads()
    arrays = [x.data]
    g1, _, _ = f.trace(x)
    _, expected = run_graph(g1, arrays)
    g2, _, _ = f.trace(x)
    _, got = run_graph(passes.scatter_sums(g2), arrays)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)


@pytest.mark.parametrize("rows, tiles", [
    ([(0, 2), (2, 4), (4, 6)], True),    # q, k, v of a fused projection: written, not added
    ([(4, 6), (0, 3), (3, 4)], True),
    ([(0, 2), (3, 5)], False),           # rows 2 and 5 stay zero
    ([(0, 4), (2, 6)], False),           # rows 2-3 get both gradients
    ([(0, 3), (0, 3), (3, 6)], False),
])
def test_scatter_sums_of_slices_that_tile_or_not_give_the_gradient(rows, tiles):
    w = em.randn(6, 3, requires_grad=True)

    def f(x):
        loss = sum(((w[a:b] * x[: b - a]) ** (k + 1)).sum() for k, (a, b) in enumerate(rows))
        loss.backward()

    x = em.randn(6, 3)
    g1, _, _ = em.jit(f).trace(x)
    _, expected = run_graph(g1, [x.data])
    g2, _, _ = em.jit(f).trace(x)
    g2 = passes.scatter_sums(g2)
    assert any("scatter_sum" in n.describe() for n in g2.nodes if isinstance(n, KernelNode))
    _, got = run_graph(g2, [x.data])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert passes._tile_the_buffer((6, 3), [(0, (slice(a, b),), False) for a, b in rows]) is tiles


# ---- each pass and the pipeline on traced graphs ---------------------------------------------

def _traced_model_step():
    em.manual_seed(0)
    w1, b1 = em.randn(5, 8, requires_grad=True), em.zeros(8, requires_grad=True)
    w2 = em.randn(8, 3, requires_grad=True)

    def f(x, y):
        h = (x @ w1 + b1).tanh() * 1.0 + 0.0
        h = h.reshape(2, 3, 8).reshape(6, 8).permute(1, 0).permute(1, 0)
        out = F.log_softmax(h @ w2, -1)
        loss = -(out * y).sum() / 6.0
        loss.backward()
        return loss, (out.mT @ h).mT, out.sum(-1)

    return em.jit(f), (em.randn(6, 5), F.one_hot(em.randint(0, 3, (6,)), 3).float())


@pytest.mark.parametrize("name", ["dce", "fold", "simplify", "cse", "scatter_sums", "pipeline", "pipeline+fuse"])
def test_each_pass_preserves_outputs_and_gradients(name):
    f, args = _traced_model_step()
    arrays = [a.data for a in args]
    fn = {"dce": passes.dce, "fold": passes.fold, "simplify": passes.simplify, "cse": passes.cse,
          "scatter_sums": passes.scatter_sums,
          "pipeline": lambda g: passes.optimize(g, fuse=False),
          "pipeline+fuse": lambda g: passes.optimize(g, fuse=True)}[name]
    raw, _, _ = f.trace(*args)
    expected_out, expected_grads = run_graph(raw, arrays)
    graph, _, _ = f.trace(*args)
    n_before = len(graph.nodes)
    graph = fn(graph)
    out, grads = run_graph(graph, arrays)
    for a, b in zip(out, expected_out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(expected_grads) == 3
    for a, b in zip(grads, expected_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if name.startswith("pipeline"):
        assert len(graph.nodes) < n_before


def test_optimize_prints_each_pass_with_debug(capsys):
    f, args = _traced_model_step()
    graph, _, _ = f.trace(*args)
    passes.optimize(graph, debug=True, fuse=False)
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == [f"--- after {n}" for n, _ in passes.PIPELINE]
