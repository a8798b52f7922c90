"""DistributedDataParallel over 2 real MPI ranks against one process with the doubled batch."""

import mpi_worker as worker  # noqa: F401  (tests/distributed is on sys.path: pytest puts a test's folder there)
import numpy as np
import pytest

import ember as em
from ember import distributed as dist

# float32: the ranks sum B-row gradients, the reference 2B rows at once, in different orders
ATOL, RTOL = 2e-6, 1e-5


def reference(opt_name):
    """One process, batch 2B, from rank 0's initial weights (seed 1)."""
    model = worker.make_mlp(seed=1)
    opt = worker.make_optimizer(opt_name, model.parameters())
    x, y = worker.make_data(worker.STEPS * 2 * worker.B)
    initial = worker.params_of(model)
    for step in range(worker.STEPS):
        rows = slice(step * 2 * worker.B, (step + 1) * 2 * worker.B)
        opt.zero_grad()
        em.nn.functional.cross_entropy(model(em.tensor(x[rows])), em.tensor(y[rows])).backward()
        opt.step()
    return initial, worker.params_of(model)


@pytest.mark.parametrize("scenario,opt_name", [("sgd", "sgd"), ("adam", "adam"), ("no_sync", "sgd")])
def test_two_ranks_match_one_process_with_twice_the_batch(run_ranks, scenario, opt_name):
    _, ranks = run_ranks(scenario)
    initial, final = reference(opt_name)
    assert len(ranks) == 2
    for r, res in enumerate(ranks):
        for k in initial:
            # ranks were seeded differently: both start from rank 0's weights
            np.testing.assert_array_equal(res["initial." + k], initial[k], err_msg=f"rank {r} initial {k}")
            np.testing.assert_allclose(res["final." + k], final[k], rtol=RTOL, atol=ATOL,
                                       err_msg=f"rank {r} final {k} ({scenario})")
    np.testing.assert_array_equal(ranks[0]["final.4.weight"], ranks[1]["final.4.weight"])
    if scenario != "no_sync":
        # when the first layer's gradient is ready, the later layers' buckets are already in flight
        n_buckets = int(ranks[0]["n_buckets"])
        assert n_buckets == 3  # 524-byte cap: [4.bias 4.weight 2.bias] [2.weight] [0.bias 0.weight]
        assert list(ranks[0]["started_at_first_layer"]) == [n_buckets - 1] * worker.STEPS


def test_buffers_broadcast_at_construction_and_each_training_forward(run_ranks):
    _, ranks = run_ranks("buffers")
    for r, res in enumerate(ranks):
        assert res["after_init"].tolist() == [10.0], f"rank {r}"
        assert res["after_forward"].tolist() == [100.0], f"rank {r}"
        assert res["mean"].tolist() == [1.5, 1.5, 1.5]
        assert res["bcast"].tolist() == [10, 11, 12, 13]  # rank 1's values
        assert int(res["world"]) == 2


def test_dead_rank_makes_the_other_fail_with_the_collective_and_timeout(run_ranks):
    # -disable-auto-cleanup: the launcher leaves the survivor running, as when a node is lost
    proc, _ = run_ranks("exit", launcher_args=["-disable-auto-cleanup"], env={"EMBER_DIST_TIMEOUT": "2"},
                        check=False, timeout=30)
    assert proc.returncode != 0
    assert "rank 0 finished step 1" in proc.stdout and "rank 0 finished step 2" not in proc.stdout
    assert "ember.distributed: all_reduce(op='sum', shape=(435,), dtype=float32): rank 0 of 2 timed out after 2 s " \
        "(EMBER_DIST_TIMEOUT) waiting for the other ranks" in proc.stderr
    assert "DistributedTimeoutError: all_reduce(op='sum'" in proc.stderr  # raised, then the job is aborted
    assert "aborting the MPI job" in proc.stderr


def test_stuck_rank_is_aborted_by_the_rank_that_timed_out(run_ranks):
    # rank 1 sleeps for 120 s: rank 0 times out after 2 s and MPI_Abort ends the whole job
    proc, _ = run_ranks("hang", env={"EMBER_DIST_TIMEOUT": "2"}, check=False, timeout=30)
    assert proc.returncode != 0
    assert "rank 0 of 2 timed out after 2 s (EMBER_DIST_TIMEOUT)" in proc.stderr
    assert "all_reduce(op='sum'" in proc.stderr


def test_single_process_ddp_is_the_plain_model():
    a, b = worker.make_mlp(seed=3), worker.make_mlp(seed=3)
    ddp = dist.DistributedDataParallel(b)
    x, y = worker.make_data(8)
    for model in (a, ddp):
        em.nn.functional.cross_entropy(model(em.tensor(x)), em.tensor(y)).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy(), err_msg=name)
    assert list(ddp.state_dict()) == ["module." + k for k in a.state_dict()]
    assert ddp.module is b and ddp.get_submodule("module.0") is b[0]
    b.custom_attribute = "kept"
    assert ddp.custom_attribute == "kept"  # looked up on the wrapped module
    with pytest.raises(TypeError, match="expected an nn.Module"):
        dist.DistributedDataParallel(em.tensor([1.0]))
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number, got 0"):
        dist.DistributedDataParallel(b, bucket_cap_mb=0)
    assert em.nn.parallel.DistributedDataParallel is dist.DistributedDataParallel
