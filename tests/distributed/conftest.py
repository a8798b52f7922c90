"""Launching real multi-rank runs of worker.py from a test: ``run_ranks("sgd")``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def mpiexec():
    """The launcher of the MPI that mpi4py uses (the mpich wheel puts it next to python)."""
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: install the test extra (pip install -e '.[test]' brings mpi4py and mpich)"
    return found


def worker_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"  # two ranks share two cores: one BLAS thread each
    # Open MPI refuses to run as root without these (CI runs as root); MPICH ignores them
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra)
    return env


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
