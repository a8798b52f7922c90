"""The matrix-vector kernel (compiler/matvec.py): which matmuls it takes, the elementwise
group it absorbs, its results against torch and eager, and its fallbacks."""

import threading

import numpy as np
import pytest
import torch
from jit_helpers import compiled_graph

import ember as em
import ember.nn.functional as F
from ember import nn
from ember.compiler import matvec


def _matvec_nodes(graph):
    return [n for n in graph.nodes if hasattr(n, "describe") and n.describe().startswith("matvec")]


def _linear_pair(in_dim, out_dim, dtype, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(dtype)
    b = rng.standard_normal(out_dim).astype(dtype)
    return w, b


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_linear_and_activation_at_batch_one_to_four_match_torch(rows, dtype, act):
    # 515 outputs: the four-at-a-time loop leaves a remainder in each thread's range
    w, b = _linear_pair(600, 515, dtype, seed=rows)
    x = np.random.default_rng(7).standard_normal((rows, 600)).astype(dtype)
    ember_act = {"relu": F.relu, "gelu": F.gelu, "tanh": em.tanh}[act]
    torch_act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh}[act]

    f = em.jit(lambda x, w, b: ember_act(F.linear(x, w, b)))
    with em.no_grad():
        got = f(em.tensor(x), em.tensor(w), em.tensor(b)).numpy()
    want = torch_act(torch.nn.functional.linear(torch.tensor(x), torch.tensor(w), torch.tensor(b))).numpy()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    (node,) = _matvec_nodes(compiled_graph(f))
    assert node.describe().startswith("matvec + add")  # the bias and activation are in the kernel


def test_the_parallel_and_the_serial_kernel_both_match_numpy():
    rng = np.random.default_rng(0)
    for in_dim, out_dim in [(512, 512), (128, 40)]:  # 2**18 and 5120 weight elements
        w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
        x = rng.standard_normal((1, in_dim)).astype(np.float32)
        f = em.jit(lambda x, w: x @ w.T)
        np.testing.assert_allclose(f(em.tensor(x), em.tensor(w)).numpy(), x @ w.T, rtol=1e-5, atol=1e-4)
        (node,) = _matvec_nodes(compiled_graph(f))
        parallel = in_dim * out_dim >= matvec.PARALLEL_MIN_ELEMENTS
        assert ("numba.prange(parts)" in node.kernel.source) == parallel


def test_an_mlp_at_batch_one_runs_every_layer_through_the_kernel():
    em.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    model.eval()
    f = em.jit(model)
    x = em.randn(1, 784)
    with em.no_grad():
        got = f(x).numpy()
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    graph = compiled_graph(f)
    # one kernel for the three layers; the last bias add is too small to be fused on its own, the
    # kernel takes it as a group of one
    assert [n.describe() for n in graph.nodes] == ["matvec + add + relu -> matvec + add + relu -> matvec + add"]
    assert "permute" not in str(graph)  # x @ W.T reads W itself


def test_small_weights_and_large_batches_stay_numpy_matmuls():
    f = em.jit(lambda x, w: x @ w.T)
    f(em.randn(1, 16), em.randn(8, 16))           # 128 weight elements: below MIN_ELEMENTS
    f(em.randn(64, 512), em.randn(512, 512))      # 64 rows: a GEMM
    f(em.randn(1, 2048), em.randn(1024, 2048))    # 2**21 elements: beyond the cores' caches
    for i in range(3):
        assert not _matvec_nodes(compiled_graph(f, i))


def test_one_thread_leaves_the_matmul_to_blas(monkeypatch):
    monkeypatch.setattr(matvec.threads, "workers", lambda: 1)
    f = em.jit(lambda x, w: x @ w.T)
    f(em.randn(1, 512), em.randn(512, 512))
    assert not _matvec_nodes(compiled_graph(f))


def test_a_weight_in_another_layout_at_run_time_falls_back_to_numpy():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    f = em.jit(lambda x, w, b: (x @ w.T + b).relu())
    expected = np.maximum(x @ w.T + b, 0)
    np.testing.assert_allclose(f(em.tensor(x), em.tensor(w), em.tensor(b)).numpy(), expected, rtol=1e-5, atol=1e-4)
    # the same signature, but the weight is now a transposed view: the compiled graph is reused
    w_view = em.tensor(np.ascontiguousarray(w.T)).T
    np.testing.assert_allclose(f(em.tensor(x), w_view, em.tensor(b)).numpy(), expected, rtol=1e-5, atol=1e-4)
    assert f.traces == 1
    # and a right operand that is not a transpose: the kernel reads it through its transpose
    g = em.jit(lambda x, m: x @ m)
    m = np.ascontiguousarray(w.T)
    np.testing.assert_allclose(g(em.tensor(x), em.tensor(m)).numpy(), x @ m, rtol=1e-5, atol=1e-4)
    assert _matvec_nodes(compiled_graph(g))


def test_outputs_are_new_arrays_every_call():
    f = em.jit(lambda x, w, b: x @ w.T + b)  # the group's result is the function's output
    w, b = em.randn(512, 512), em.randn(512)
    first = f(em.ones(1, 512), w, b)
    kept = first.numpy().copy()
    second = f(em.zeros(1, 512), w, b)
    np.testing.assert_array_equal(first.numpy(), kept)
    np.testing.assert_allclose(second.numpy(), np.broadcast_to(b.numpy(), (1, 512)), rtol=1e-6)


def test_a_product_needed_elsewhere_is_not_absorbed_and_gradients_match_eager():
    em.manual_seed(3)
    model = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 300))
    opt_model = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 300))
    opt_model.load_state_dict(model.state_dict())
    x, target = em.randn(2, 512), em.randn(2, 300)

    def step(m):
        def run(x, target):
            m.zero_grad()
            loss = ((m(x) - target) ** 2).mean()
            loss.backward()
            return loss
        return run

    jitted = em.jit(step(opt_model))
    loss_jit = jitted(x, target)
    loss_eager = step(model)(x, target)
    np.testing.assert_allclose(loss_jit.item(), loss_eager.item(), rtol=1e-5)
    for p_jit, p_eager in zip(opt_model.parameters(), model.parameters()):
        np.testing.assert_allclose(p_jit.grad.numpy(), p_eager.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert _matvec_nodes(compiled_graph(jitted))  # the forward products at batch 2


class _JitInference:
    """A dataset whose items are batch-1 jitted inferences, run in the DataLoader's workers."""

    def __init__(self, f):
        self.f = f

    def __len__(self):
        return 4

    def __getitem__(self, i):
        with em.no_grad():
            return self.f(em.ones(1, 512) * i).numpy()[0]


@pytest.mark.parametrize("worker_type", ["thread", "process"])  # threads share the graph; processes fork
def test_dataloader_workers_run_the_parallel_kernel_after_the_parent_did(worker_type):
    em.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU())
    model.eval()
    f = em.jit(model)
    with em.no_grad():
        f(em.ones(1, 512))  # the parent's OpenMP pool is running when the workers fork
        want = np.stack([model(em.ones(1, 512) * i).numpy()[0] for i in range(4)])
    assert _matvec_nodes(compiled_graph(f))
    batches = list(em.data.DataLoader(_JitInference(f), batch_size=2, num_workers=2))
    np.testing.assert_allclose(np.concatenate([b.numpy() for b in batches]), want, rtol=1e-5, atol=1e-6)


def test_a_group_fed_by_two_products_is_absorbed_by_the_later_one_only():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 512)).astype(np.float32)
    w1, w2 = (rng.standard_normal((512, 512)).astype(np.float32) for _ in range(2))
    f = em.jit(lambda x, w1, w2: (x @ w1.T + x @ w2.T).relu())
    got = f(em.tensor(x), em.tensor(w1), em.tensor(w2)).numpy()
    np.testing.assert_allclose(got, np.maximum(x @ w1.T + x @ w2.T, 0), rtol=1e-5, atol=1e-4)
    assert [n.describe() for n in _matvec_nodes(compiled_graph(f))] == ["matvec", "matvec + add + relu"]


def _three_layers(rows, dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [*_linear_pair(600, 515, dtype, seed), *_linear_pair(515, 300, dtype, seed + 1)]
    w3 = (rng.standard_normal((20, 300)) / np.sqrt(300)).astype(dtype)  # no bias: a stage without a group
    x = rng.standard_normal((rows, 600)).astype(dtype)
    return x, params + [w3]


def _three_layers_ember(x, w1, b1, w2, b2, w3):
    return F.relu(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)) @ w3.T


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_consecutive_layers_run_as_one_kernel_and_match_torch(rows, dtype):
    x, params = _three_layers(rows, dtype)
    f = em.jit(_three_layers_ember)
    got = f(em.tensor(x), *map(em.tensor, params)).numpy()
    t = [torch.tensor(p) for p in params]
    want = (torch.relu(torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(
        torch.tensor(x), t[0], t[1])), t[2], t[3])) @ t[4].T).numpy()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert [n.describe() for n in compiled_graph(f).nodes] == \
        ["matvec + add + relu -> matvec + add + relu -> matvec"]


def test_a_layer_whose_output_is_also_returned_or_read_twice_ends_the_chain():
    x, (w1, b1, w2, b2, w3) = _three_layers(1, np.float32)
    def both(x, w1, b1, w2, b2):
        h = F.relu(F.linear(x, w1, b1))
        return h, F.linear(h, w2, b2)  # h is returned and read by the next product
    returned = em.jit(both)
    h, out = returned(*map(em.tensor, (x, w1, b1, w2, b2)))
    want_h = np.maximum(x @ w1.T + b1, 0)
    np.testing.assert_allclose(h.numpy(), want_h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), want_h @ w2.T + b2, rtol=1e-5, atol=1e-5)
    assert [n.describe() for n in _matvec_nodes(compiled_graph(returned))] == ["matvec + add + relu", "matvec + add"]

    def twice(x, w1, b1, w2):
        h = F.relu(F.linear(x, w1, b1))
        return h @ w2.T + (h * h).sum()  # h is read by the product and by the sum
    read_twice = em.jit(twice)
    got = read_twice(*map(em.tensor, (x, w1, b1, w2)))
    np.testing.assert_allclose(got.numpy(), want_h @ w2.T + (want_h * want_h).sum(), rtol=1e-5, atol=1e-4)
    assert len(_matvec_nodes(compiled_graph(read_twice))) >= 2  # no chain reads h's buffer half-written


def test_a_chain_with_a_weight_in_another_layout_at_run_time_falls_back_to_numpy():
    x, params = _three_layers(2, np.float32)
    f = em.jit(_three_layers_ember)
    want = f(em.tensor(x), *map(em.tensor, params)).numpy()
    w2_view = em.tensor(np.ascontiguousarray(params[2].T)).T  # the same values, column-major
    got = f(em.tensor(x), *map(em.tensor, params[:2]), w2_view, *map(em.tensor, params[3:])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert f.traces == 1


def test_a_chain_on_fewer_numba_threads_than_parts_computes_every_range_itself():
    # numba then runs the parallel loop's iterations one after the other: a thread waiting at a
    # fixed range for a thread that never comes would hang here
    import numba

    x, params = _three_layers(1, np.float32)
    f = em.jit(_three_layers_ember)
    want = f(em.tensor(x), *map(em.tensor, params)).numpy()
    (node,) = compiled_graph(f).nodes
    assert "numba.prange(parts)" in node.kernel.source
    result = {}

    def on_one_thread():
        numba.set_num_threads(1)  # per calling thread
        result["got"] = f(em.tensor(x), *map(em.tensor, params)).numpy()

    worker = threading.Thread(target=on_one_thread, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the chain kernel waited for a thread numba did not start"
    np.testing.assert_array_equal(result["got"], want)
