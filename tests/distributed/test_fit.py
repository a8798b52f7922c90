"""model.fit(distributed=True) over 2 real MPI ranks against one process trained on the same global batches."""

import mpi_worker as worker
import numpy as np
import pytest

import ember as em


def test_fit_distributed_matches_one_process_on_the_union_of_the_shards(run_ranks):
    proc, ranks = run_ranks("fit")
    seen = [res["seen"] for res in ranks]
    assert seen[0].shape == seen[1].shape == (10, 4)  # 38 rows -> 19 per rank -> 5 batches of 4 (last 3), 2 epochs
    for epoch in range(2):
        ids = [s[epoch * 5:(epoch + 1) * 5].ravel() for s in seen]
        ids = [i[i >= 0] for i in ids]
        assert len(ids[0]) == len(ids[1]) == 19
        assert set(ids[0]).isdisjoint(ids[1]) and set(ids[0]) | set(ids[1]) == set(range(38))
    assert not np.array_equal(seen[0][:5], seen[0][5:])  # set_epoch: a new shuffle each epoch

    # the reference: one process, each step on both ranks' batches together
    x, y = worker.make_data(38)
    x[:, 0] = np.arange(38) / 1000
    em.manual_seed(1)
    model = em.nn.Sequential(em.nn.Linear(worker.N_IN, worker.N_HIDDEN), em.nn.Tanh(),
                             em.nn.Linear(worker.N_HIDDEN, worker.N_OUT))
    initial = worker.params_of(model)
    opt = em.optim.SGD(model.parameters(), lr=0.1)
    losses, accuracies = [], []
    for epoch in range(2):
        total = correct = count = 0.0
        for step in range(epoch * 5, (epoch + 1) * 5):
            rows = np.concatenate([s[step][s[step] >= 0] for s in seen])
            logits = model(em.tensor(x[rows]))
            loss = em.nn.functional.cross_entropy(logits, em.tensor(y[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(rows)
            correct += float((logits.detach().numpy().argmax(1) == y[rows]).sum())
            count += len(rows)
        losses.append(total / count)
        accuracies.append(correct / count)

    for k in initial:  # before fit the ranks' weights differ (seeded by rank): fit starts from rank 0's
        np.testing.assert_array_equal(ranks[0]["initial." + k], initial[k], err_msg=f"rank 0 initial {k}")
        assert not np.array_equal(ranks[1]["initial." + k], initial[k])
    for r, res in enumerate(ranks):
        for k in initial:
            np.testing.assert_allclose(res["final." + k], worker.params_of(model)[k], rtol=1e-5, atol=2e-6,
                                       err_msg=f"rank {r} final {k}")
        # the logged loss and accuracy are over both ranks' samples
        np.testing.assert_allclose(res["loss"], losses, rtol=1e-5)
        np.testing.assert_allclose(res["accuracy"], accuracies, rtol=1e-6)
        assert int(res["hooks_left"]) == 0  # fit unhooks the gradient averaging when it ends

    # only rank 0 prints and writes files
    assert proc.stdout.count("Epoch 1/2") == 1 and proc.stdout.count("Epoch 2/2") == 1
    assert (run_ranks.dir / "log0.csv").exists() and not (run_ranks.dir / "log1.csv").exists()
    assert (run_ranks.dir / "ckpt0.ember").exists() and not (run_ranks.dir / "ckpt1.ember").exists()


def test_fit_distributed_in_one_process_is_plain_fit():
    x, y = worker.make_data(30)
    runs = []
    for distributed in (False, True):
        em.manual_seed(5)
        model = em.Sequential([em.nn.Linear(worker.N_IN, worker.N_OUT)])
        model.compile(optimizer="sgd", loss="cross_entropy")
        history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, distributed=distributed)
        runs.append((history.history["loss"], model[0].weight.data.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_fit_distributed_refuses_jit_compile():
    model = em.Sequential([em.nn.Linear(worker.N_IN, worker.N_OUT)])
    model.compile(optimizer="sgd", loss="cross_entropy", jit_compile=True)
    x, y = worker.make_data(8)
    try:
        model.fit(x, y, verbose=0, distributed=True)
    except ValueError as e:
        assert "distributed=True does not work with jit_compile=True" in str(e)
    else:
        raise AssertionError("fit(distributed=True, jit_compile=True) did not raise")


def test_fit_distributed_refuses_a_backup(tmp_path):
    x, y = worker.make_data(16)
    model = em.Sequential([em.nn.Linear(worker.N_IN, worker.N_OUT)])
    model.compile(optimizer="sgd", loss="cross_entropy")
    with pytest.raises(ValueError, match="cannot be combined with distributed=True"):
        model.fit(x, y, epochs=1, verbose=0, distributed=True, resume_from=str(tmp_path / "backup"))
    with pytest.raises(ValueError, match="cannot be combined with distributed=True"):
        model.fit(x, y, epochs=1, verbose=0, distributed=True,
                  callbacks=[em.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
