"""Launching real multi-rank runs of mpi_worker.py from the tests."""

import os
import shutil
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("mpi_worker.py")
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


