"""The process group without a launcher (one process), and a 2-rank run of the collectives."""

import subprocess
import sys

import numpy as np
import pytest
from mpi_launch import WORKER, worker_env

import ember as em
from ember import distributed as dist


def test_one_process_without_mpirun(tmp_path):
    # a fresh interpreter, as a user script would run: no launcher, world size 1
    subprocess.run([sys.executable, str(WORKER), "single", str(tmp_path)], env=worker_env(), check=True, timeout=60)
    res = np.load(tmp_path / "rank0.npz")
    assert int(res["world"]) == 1 and int(res["rank"]) == 0
    assert res["t"].tolist() == [1.0, 2.0]


def test_collectives_in_one_process():
    dist.init()
    assert dist.is_initialized() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main_process()
    t = em.tensor([1.0, 2.0])
    version = t._version[0]
    assert dist.all_reduce(t, "mean") is t and t.tolist() == [1.0, 2.0]
    assert t._version[0] == version + 1  # an in-place write, as far as autograd is concerned
    a = np.arange(3, dtype=np.int64)
    dist.broadcast(a, src=0)
    work = dist.all_reduce(a, "max", async_op=True)
    work.wait()
    assert work.test() and a.tolist() == [0, 1, 2]
    dist.barrier()


def test_collective_errors():
    with pytest.raises(ValueError, match=r"all_reduce: op must be one of .*got 'avg'"):
        dist.all_reduce(em.tensor([1.0]), "avg")
    with pytest.raises(dist.DistributedError, match="op='mean' needs a floating-point tensor, got int64"):
        dist.all_reduce(np.arange(3), "mean")
    with pytest.raises(ValueError, match=r"broadcast: src must be a rank in \[0, 1\), got 1"):
        dist.broadcast(em.tensor([1.0]), src=1)
    with pytest.raises(dist.DistributedError, match="must be contiguous"):
        dist.all_reduce(np.zeros((3, 4), np.float32).T)
    with pytest.raises(TypeError, match="expected an ember Tensor or a NumPy array, got list"):
        dist.all_reduce([1.0])
    with pytest.raises(dist.DistributedError, match="timeout must be a positive number of seconds, got -1"):
        dist.init(timeout=-1)


def test_bad_timeout_variable_is_named(tmp_path):
    proc = subprocess.run([sys.executable, str(WORKER), "single", str(tmp_path)],
                          env=worker_env(EMBER_DIST_TIMEOUT="soon"), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "EMBER_DIST_TIMEOUT must be a positive number of seconds, got 'soon'" in proc.stderr
