"""The machine: CPU model and cores, load average, library versions, the environment every
benchmark subprocess gets (threads, OpenBLAS variables) and the measured float32 GEMM peak.

    python -m benchmarks.machine            # prints the machine info and measures the GEMM peak
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
DISTS = ("ember", "numpy", "numba", "torch", "tensorflow-cpu", "tensorflow", "keras", "jax", "jaxlib",
         "matplotlib", "psutil")


def thread_env(threads: int = 2, unset_openblas: bool = False, base: dict | None = None) -> dict:
    """The environment of a benchmark subprocess: every library at ``threads`` intra-op threads
    and 1 inter-op thread; with ``unset_openblas`` both OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
    are removed (together)."""
    env = dict(os.environ if base is None else base)
    n = str(threads)
    env.update({"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n,
                "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONHASHSEED": "0"})
    if unset_openblas:
        for var in OPENBLAS_VARS:
            env.pop(var, None)
    paths = [str(ROOT), str(ROOT / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def openblas_env(unset: bool) -> dict:
    """What the OpenBLAS variables were in the runner's environment and whether they were unset."""
    return {"values": {v: os.environ.get(v) for v in OPENBLAS_VARS}, "unset_for_run": bool(unset)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"))
    except OSError:
        pass
    return []


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for d in DISTS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return out


def info() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
    }


_GEMM = r"""
import json, os, sys, time
import numpy as np
sizes = [int(s) for s in sys.argv[1].split(",")]
reps = int(sys.argv[2])
out = {}
for n in sizes:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    out[n] = sorted(rates)
blas = {}
try:
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    blas = {"name": cfg.get("name"), "version": cfg.get("version"), "config": cfg.get("openblas configuration")}
except Exception:
    pass
print(json.dumps({"gflops": out, "blas": blas}))
"""


def gemm_peak(threads: int = 2, unset_openblas: bool = False, sizes=(1024, 2048, 3072), reps: int = 7) -> dict:
    """float32 GEMM throughput of NumPy (its BLAS) at ``threads`` threads, in a subprocess with
    the benchmark environment. The peak is the best repetition over the sizes; the median per
    size is kept too. OpenBLAS reports the kernel it picked (``OPENBLAS_VERBOSE=2``)."""
    env = thread_env(threads, unset_openblas)
    env["OPENBLAS_VERBOSE"] = "2"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "gemm.py"
        script.write_text(_GEMM)
        proc = subprocess.run([sys.executable, str(script), ",".join(map(str, sizes)), str(reps)], env=env,
                              capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    core = [ln.split(":", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("Core:")]
    per_size = {int(n): {"median": r[len(r) // 2], "max": r[-1]} for n, r in res["gflops"].items()}
    return {"peak_gflops": max(v["max"] for v in per_size.values()), "per_size": per_size, "threads": threads,
            "blas": res["blas"], "openblas_core": core[0] if core else None,
            "how": f"numpy.matmul float32 n x n, n in {list(sizes)}, best of {reps}"}


if __name__ == "__main__":
    print(json.dumps({**info(), "loadavg": loadavg(), "gemm": gemm_peak()}, indent=1))
