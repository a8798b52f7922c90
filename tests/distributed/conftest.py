"""``run_ranks("sgd")``: a real ``mpiexec -n 2`` run of mpi_worker.py, with its per-rank results."""

import subprocess
import sys

import numpy as np
import pytest
from mpi_launch import WORKER, mpiexec, worker_env


@pytest.fixture
def run_ranks(tmp_path):
    """run_ranks(scenario, n=2, launcher_args=(), env=None, check=True) -> (CompletedProcess, [per-rank npz])"""

    def run(scenario, n=2, launcher_args=(), env=None, check=True, timeout=60):
        cmd = [mpiexec(), *launcher_args, "-n", str(n), sys.executable, str(WORKER), scenario, str(tmp_path)]
        proc = subprocess.run(cmd, env=worker_env(**(env or {})), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        results = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(n) if (tmp_path / f"rank{r}.npz").exists()]
        return proc, results

    run.dir = tmp_path
    return run
