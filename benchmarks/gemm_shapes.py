"""The workloads' own matrix products in NumPy's BLAS (what ember runs) and in PyTorch's.

ember's matmuls and convolutions go to the BLAS NumPy ships (OpenBLAS); PyTorch's CPU wheels
bring their own (MKL on x86). How far apart the two are on the exact products of the reference
workloads (``workloads.forward_products``) bounds how close ember can come to PyTorch there,
whatever the compiler does around them. Each library runs in its own process at 2 threads (the
benchmark environment of ``machine.thread_env``); each product is timed as ``batch``
independent (m, k) x (k, n) float32 products into a preallocated output, median of several
windows. Writes benchmarks/results/gemm_shapes.json and the ``gemm-shapes`` block of RESULTS.md.

    python -m benchmarks.gemm_shapes --unset-openblas-env      # ~1-2 minutes
    python -m benchmarks.gemm_shapes --no-write --workloads gpt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import machine, workloads

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results" / "gemm_shapes.json"

_TIMER = r"""
import json, sys, time
import numpy as np
library, windows, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
shapes = json.loads(sys.argv[4])
if library == "torch":
    import torch
    torch.set_num_threads(int(sys.argv[5]))
    matmul = lambda a, b, out: torch.matmul(a, b, out=out)
    wrap = torch.from_numpy
    config = torch.__config__.show().replace(",", " ").split()
    blas = next((part.split("=", 1)[1] for part in config if part.startswith("BLAS_INFO=")), None)
else:
    from threadpoolctl import threadpool_info
    matmul, wrap = np.matmul, lambda x: x
    found = [i for i in threadpool_info() if i["user_api"] == "blas"]
    blas = f"{found[0]['internal_api']} {found[0]['version']}, kernel {found[0].get('architecture')}" if found else None
rng = np.random.default_rng(0)
out = []
for batch, m, k, n in shapes:
    lead = (batch,) if batch > 1 else ()
    a = wrap(rng.standard_normal(lead + (m, k), dtype=np.float32))
    b = wrap(rng.standard_normal(lead + (k, n), dtype=np.float32))
    c = wrap(np.empty(lead + (m, n), np.float32))
    t = time.perf_counter()
    calls = 0
    while time.perf_counter() - t < 0.1 or calls < 3:  # warm-up; also sizes a window
        matmul(a, b, c)
        calls += 1
    per_window = max(1, int(calls * seconds / (time.perf_counter() - t)))
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(per_window):
            matmul(a, b, c)
        rates.append(2 * batch * m * k * n * per_window / (time.perf_counter() - t) / 1e9)
    rates.sort()
    out.append({"median": rates[len(rates) // 2], "min": rates[0], "max": rates[-1]})
print(json.dumps({"rates": out, "blas": blas}))
"""


def distinct_products(names) -> list[dict]:
    """Each workload's forward products, a shape listed once per workload."""
    rows = []
    for name in names:
        seen = set()
        for label, batch, m, k, n in workloads.forward_products(workloads.spec(name)):
            if (batch, m, k, n) not in seen:
                seen.add((batch, m, k, n))
                rows.append({"workload": name, "label": label, "shape": [batch, m, k, n]})
    return rows


def time_products(library: str, shapes, threads: int, unset_openblas: bool, windows: int, seconds: float) -> dict:
    """GFLOP/s of each (batch, m, k, n) in ``library`` ("numpy" or "torch"), in a subprocess:
    {"rates": [{"median", "min", "max"}, ...], "blas": the BLAS that process ran}."""
    env = machine.thread_env(threads, unset_openblas)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "gemm_shapes_timer.py"
        script.write_text(_TIMER)
        proc = subprocess.run([sys.executable, str(script), library, str(windows), str(seconds), json.dumps(shapes),
                               str(threads)], env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"gemm_shapes: the {library} timer failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["## The workloads' products: NumPy's BLAS against PyTorch's", "",
             f"`{res['command']}` — {m['cpu']}, {m['cores']} cores, {res['threads']} threads; {m['date']}; "
             f"numpy {m['versions'].get('numpy')} (BLAS {res['blas']}), torch {m['versions'].get('torch')} "
             f"(BLAS {res['torch_blas']}). OpenBLAS variables "
             f"{'unset for this run' if res['unset_openblas'] else 'left as they were'}. float32 GFLOP/s, median "
             f"of {res['windows']} windows of ~{res['seconds']} s (min–max); each library in its own process. "
             "`batch` x (m, k) x (k, n): a convolution as its im2col GEMM, attention per (sample, head), the "
             "LSTM's recurrent product per time step.", "",
             "| workload | product | batch x m x k x n | numpy GFLOP/s | torch GFLOP/s | numpy / torch |",
             "|---|---|---|---:|---:|---:|"]
    for row in res["rows"]:
        a, b = row["numpy"], row["torch"]
        shape = " x ".join(str(v) for v in row["shape"])
        lines.append(f"| {row['workload']} | {row['label']} | {shape} | {a['median']:.1f} "
                     f"({a['min']:.0f}–{a['max']:.0f}) | {b['median']:.1f} ({b['min']:.0f}–{b['max']:.0f}) | "
                     f"{a['median'] / b['median']:.2f}x |")
    lines += ["", f"Raw results: `{RESULTS_JSON.relative_to(ROOT)}`. Reproduce: `python -m benchmarks.gemm_shapes "
              "--unset-openblas-env`."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(workloads.WORKLOADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.2, help="seconds per timing window (default 0.2)")
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (together) for the timed processes")
    p.add_argument("--no-write", action="store_true", help="print only; do not write the results files")
    args = p.parse_args(argv)
    if args.windows > 20 or args.seconds > 2:
        p.error("keep it bounded: --windows <= 20, --seconds <= 2")
    rows = distinct_products([w.strip() for w in args.workloads.split(",") if w.strip()])
    shapes = [r["shape"] for r in rows]
    blas = {}
    for library in ("numpy", "torch"):
        timed = time_products(library, shapes, args.threads, args.unset_openblas_env, args.windows, args.seconds)
        blas[library] = timed["blas"]
        for row, rate in zip(rows, timed["rates"]):
            row[library] = rate
    res = {"command": "python -m benchmarks.gemm_shapes" + (" --unset-openblas-env" if args.unset_openblas_env
                                                            else ""),
           "machine": machine.info(), "threads": args.threads, "windows": args.windows, "seconds": args.seconds,
           "unset_openblas": args.unset_openblas_env, "blas": blas["numpy"], "torch_blas": blas["torch"],
           "rows": rows}
    text = markdown(res)
    print(text)
    if not args.no_write:
        from .report import save_results

        save_results("gemm-shapes", res, text, RESULTS_JSON)
    return res


if __name__ == "__main__":
    main()
