"""The fused LSTM recurrence (ember/ops/rnn.py) against PyTorch's LSTM and finite differences."""

import numpy as np
import pytest
import torch

import ember as em
from ember.ops.rnn import lstm_sequence
from opcheck import check_fd


def _inputs(rng, length=5, n=3, hs=4, dtype=np.float64):
    """xp, h0, c0, w_hh and bias."""
    return [rng.standard_normal(s).astype(dtype)
            for s in ((length, n, 4 * hs), (n, hs), (n, hs), (4 * hs, hs), (4 * hs,))]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_every_output_slot_has_the_finite_difference_gradient(reverse, bias):
    """Gradients through h, c and the saved gate activations, for every input."""
    rng = np.random.default_rng(0)
    inputs = _inputs(rng)
    check_fd(lambda xp, h0, c0, w, b=None: lstm_sequence(xp, h0, c0, w, b, reverse=reverse),
             inputs if bias else inputs[:4])


@pytest.mark.parametrize("reverse", [False, True])
def test_matches_torch_lstm_step_by_step(reverse):
    rng = np.random.default_rng(1)
    inputs = _inputs(rng, dtype=np.float32)
    g = rng.standard_normal((5, 3, 4)).astype(np.float32)
    ours = [em.tensor(a, requires_grad=True) for a in inputs]
    packed = lstm_sequence(*ours, reverse=reverse)
    (packed[:, :, 0] * em.tensor(g)).sum().backward()
    theirs = [torch.tensor(a, requires_grad=True) for a in inputs]
    h, c, hs = theirs[1], theirs[2], []
    for t in (range(4, -1, -1) if reverse else range(5)):
        i, f, gg, o = (theirs[0][t] + h @ theirs[3].T + theirs[4]).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append((t, h, c))
    out = torch.stack([h for _, h, _ in sorted(hs, key=lambda e: e[0])])
    (out * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(packed[:, :, 0].detach().numpy(), out.detach().numpy(), rtol=1e-5, atol=1e-6)
    last = 0 if reverse else 4
    np.testing.assert_allclose(packed[last, :, 1].detach().numpy(), c.detach().numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_lstm_layers_train_like_torch():
    """A 2-layer bidirectional LSTM: outputs, final states and every weight's gradient."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours = em.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((2, 7, 3)).astype(np.float32)
    out_t, (h_t, c_t) = ref(torch.tensor(x))
    out_e, (h_e, c_e) = ours(em.tensor(x))
    (out_t.sum() + h_t.pow(2).sum() + c_t.sum()).backward()
    (out_e.sum() + (h_e ** 2).sum() + c_e.sum()).backward()
    for a, b in ((out_e, out_t), (h_e, h_t), (c_e, c_t)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(grads[name].grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_second_derivative_is_refused_clearly():
    lstm = em.nn.LSTM(2, 3)
    x = em.randn(4, 1, 2, requires_grad=True)
    out, _ = lstm(x)
    with pytest.raises(em.OpError, match="no second derivative"):
        em.autograd.grad(out.sum(), [x], create_graph=True)


def test_shape_and_dtype_errors_name_the_op():
    xp, h0, c0, w, b = (em.tensor(a) for a in _inputs(np.random.default_rng(3)))
    with pytest.raises(em.ShapeError, match=r"lstm_sequence: w_hh has shape \(16, 3\), expected \(16, 4\)"):
        lstm_sequence(xp, h0, c0, w[:, :3])
    with pytest.raises(em.ShapeError, match=r"lstm_sequence: bias has shape \(15,\), expected \(16,\)"):
        lstm_sequence(xp, h0, c0, w, b[:15])
    with pytest.raises(em.OpError, match="one floating dtype"):
        lstm_sequence(xp, h0, c0, w.float())
    with pytest.raises(em.OpError, match="one floating dtype"):
        lstm_sequence(xp, h0, c0, w, b.float())


@pytest.mark.parametrize("reverse", [False, True])
def test_the_gradient_of_h_alone_equals_the_zero_filled_one(reverse):
    """lstm_sequence_grad given only h's gradient (L, N, H), as the compiler passes it, gives
    what the full (L, N, 6, H) gradient with zeros in the other slots gives, bit for bit."""
    from ember.ops import rnn

    rng = np.random.default_rng(6)
    xp, h0, c0, w, b = _inputs(rng, length=6, n=3, hs=5, dtype=np.float32)
    out = rnn._sequence_np(xp, h0, c0, w, b, reverse=reverse)
    g_h = rng.standard_normal((6, 3, 5)).astype(np.float32)
    full = np.zeros(out.shape, np.float32)
    full[:, :, 0] = g_h
    np.testing.assert_array_equal(rnn._grad_np(g_h, out, h0, c0, w, reverse=reverse),
                                  rnn._grad_np(full, out, h0, c0, w, reverse=reverse))
    with pytest.raises(em.ShapeError, match=r"lstm_sequence_grad: output gradient has shape \(6, 3, 4\)"):
        rnn.LSTM_SEQUENCE_GRAD.infer(em.ones(6, 3, 4), em.ones(6, 3, 6, 5), em.ones(3, 5), em.ones(3, 5),
                                     em.ones(20, 5), reverse=reverse)


@pytest.mark.parametrize("uses_c", [True, False])
def test_jit_step_equals_eager(uses_c):
    """With only the output sequence in the loss, the compiled backward passes h's gradient
    alone (no zero-filled index_put feeds lstm_sequence_grad); with c_n too, the full one."""
    def run(jit):
        em.manual_seed(0)
        model = em.nn.LSTM(3, 4, batch_first=True)
        opt = em.optim.Adam(model.parameters(), lr=1e-2)
        x = em.tensor(np.random.default_rng(4).standard_normal((2, 6, 3)).astype(np.float32))

        def step(x):
            opt.zero_grad()
            out, (h, c) = model(x)
            loss = (out ** 2).mean() + (c.sum() if uses_c else 0)
            loss.backward()
            opt.step()
            return loss

        jitted = em.jit(step) if jit else step
        losses = [jitted(x).item() for _ in range(3)]
        grad_inputs = None
        if jit:
            nodes = jitted.graph(x).nodes
            grad_inputs = [n.inputs[0] for n in nodes if n.op.name == "lstm_sequence_grad"]
        return losses, [p.detach().numpy().copy() for p in model.parameters()], grad_inputs

    (le, pe, _), (lj, pj, grad_inputs) = run(False), run(True)
    np.testing.assert_allclose(lj, le, rtol=1e-5)
    for a, b in zip(pj, pe):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(grad_inputs) == 1
    assert grad_inputs[0].shape == ((6, 2, 6, 4) if uses_c else (6, 2, 4))


# ---- the recurrence shared by threads (forward_part / backward_part) ----------------------

@pytest.fixture
def team_recurrence(monkeypatch):
    """Every recurrence runs on all workers together, counting how many did."""
    from ember.ops import rnn, threads

    if threads.workers() < 2 or threads.gemm_address(np.float32) is None:
        pytest.skip("one worker or a BLAS ember cannot call: the recurrence runs on one thread")
    ran = []
    team = threads.team
    monkeypatch.setattr(threads, "team", lambda part: ran.append(team(part)) or ran[-1])
    monkeypatch.setattr(rnn, "_TEAM_MIN_STEP_WORK", 0)
    return ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", ["units", "sequences"])
def test_threads_sharing_each_step_give_the_one_thread_results(team_recurrence, monkeypatch, dtype, reverse, split):
    # 7 hidden units: the two threads' shares (3 and 4 units) differ, and rows end mid-vector;
    # or 5 sequences, split 2 and 3, each thread with every unit and its own bias gradient
    from ember.ops import rnn

    monkeypatch.setattr(rnn, "ROWS_PER_WORKER", 1 if split == "sequences" else 1 << 30)
    rng = np.random.default_rng(4)
    xp, h0, c0, w, b = _inputs(rng, length=6, n=5, hs=7, dtype=dtype)
    g = rng.standard_normal((6, 5, 6, 7)).astype(dtype)

    def both():
        out = rnn._sequence_np(xp, h0, c0, w, b, reverse=reverse)
        return out, rnn._grad_np(g, out, h0, c0, w, reverse=reverse), rnn._grad_np(g[:, :, 0], out, h0, c0, w,
                                                                                   reverse=reverse)

    shared = both()
    assert len(team_recurrence) == 3 and all(k >= 2 for k in team_recurrence)  # forward and both gradients
    monkeypatch.setattr(rnn, "_TEAM_MIN_STEP_WORK", 1 << 62)
    alone = both()
    assert len(team_recurrence) == 3  # no team this time
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(shared, alone):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", ["units", "sequences"])
def test_threads_sharing_each_step_match_torch(team_recurrence, monkeypatch, reverse, split):
    from ember.ops import rnn

    monkeypatch.setattr(rnn, "ROWS_PER_WORKER", 1 if split == "sequences" else 1 << 30)
    test_matches_torch_lstm_step_by_step(reverse)
    assert len(team_recurrence) == 2 and all(k >= 2 for k in team_recurrence)  # forward and backward


def test_a_part_that_fails_stops_the_others_waiting(team_recurrence):
    from ember.compiler import native
    from ember.ops import rnn

    counters = np.zeros(2, dtype=np.int64)
    waited = []

    def kernel(index):
        if index == 0:
            raise RuntimeError("part 0 failed before its loop")
        waited.append(native.spin_barrier(counters, 2))  # would wait forever for part 0

    with pytest.raises(RuntimeError, match="part 0 failed"):
        rnn._in_team(kernel, counters, lambda index, count: (index,))
    assert waited == [False] and counters[1] == 1
