"""Per-call overhead of small ops in ember eager vs PyTorch eager.

For add (64x64 + 64x64), matmul (64x64 @ 64x64), relu (64x64) and sum (64x64 -> scalar), with
inputs that require grad: the time of one forward call (which records the graph) and of one
forward + backward (``x.grad = None``, forward, ``out.backward(ones)``; ``out.backward()`` for
sum). Each framework runs in its own subprocess at the benchmark's thread settings; each
number is the median over >= 5 windows of many calls (min and max shown). Target: ember's
per-op time <= 2x PyTorch's.

    python -m benchmarks.op_overhead                 # prints the table
    python -m benchmarks.op_overhead --write         # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPS = ("add", "matmul", "relu", "sum")
FRAMEWORKS = ("ember-eager", "torch")
TARGET = 2.0


def _setup(framework):
    if framework == "torch":
        import torch

        torch.set_num_threads(2)
        torch.set_num_interop_threads(1)
        torch.manual_seed(0)
        randn, ones = (lambda *s: torch.randn(*s, requires_grad=True)), torch.ones
        lib = torch
    else:
        import ember as em

        em.manual_seed(0)
        randn, ones = (lambda *s: em.randn(*s, requires_grad=True)), em.ones
        lib = em
    a, b = randn(64, 64), randn(64, 64)
    fns = {"add": lambda: a + b, "matmul": lambda: a @ b, "relu": lambda: lib.relu(a), "sum": lambda: a.sum()}
    grads = {"add": ones(64, 64), "matmul": ones(64, 64), "relu": ones(64, 64), "sum": None}
    return a, b, fns, grads


def _time(fn, repeat, window_seconds):
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.05:
        fn()
        n += 1
    calls = max(100, int(n * window_seconds / 0.05))
    per_call = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
    return {"median_us": statistics.median(per_call), "min_us": min(per_call), "max_us": max(per_call),
            "calls_per_window": calls, "windows": repeat}


def measure_one(framework: str, repeat: int = 7, window_seconds: float = 0.3) -> dict:
    a, b, fns, grads = _setup(framework)
    out = {}
    for op in OPS:
        fwd = fns[op]
        g = grads[op]

        def fwd_bwd(fwd=fwd, g=g):
            a.grad = None
            b.grad = None
            y = fwd()
            y.backward(g) if g is not None else y.backward()

        fwd_bwd()
        assert a.grad is not None, f"{framework} {op}: backward produced no gradient"
        out[op] = {"forward": _time(fwd, repeat, window_seconds), "forward_backward": _time(fwd_bwd, repeat,
                                                                                             window_seconds)}
    return out


def run(repeat: int = 7, window_seconds: float = 0.3, threads: int = 2, unset_openblas: bool = False,
        frameworks=FRAMEWORKS) -> dict:
    """Each framework in its own subprocess; returns {framework: {op: ...}} plus skip notes."""
    import importlib.util

    from .machine import thread_env

    results, notes = {}, {}
    for fw in frameworks:
        module = "torch" if fw == "torch" else "ember"
        if importlib.util.find_spec(module) is None:
            notes[fw] = f"{module} not installed"
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.json"
            cmd = [sys.executable, "-m", "benchmarks.op_overhead", "--one", fw, "--out", str(path),
                   "--repeat", str(repeat), "--window-seconds", str(window_seconds)]
            proc = subprocess.run(cmd, env=thread_env(threads, unset_openblas), capture_output=True, text=True,
                                  timeout=900, cwd=Path(__file__).resolve().parents[1])
            if proc.returncode or not path.exists():
                notes[fw] = f"failed: {proc.stderr.strip()[-500:]}"
                continue
            results[fw] = json.loads(path.read_text())
    ratios = {}
    if "ember-eager" in results and "torch" in results:
        for op in OPS:
            ratios[op] = {k: results["ember-eager"][op][k]["median_us"] / results["torch"][op][k]["median_us"]
                          for k in ("forward", "forward_backward")}
    return {"results": results, "ratio_ember_over_torch": ratios, "notes": notes, "target_ratio": TARGET,
            "repeat": repeat, "window_seconds": window_seconds}


def table(res: dict) -> list[str]:
    """Markdown rows of the op-overhead result."""
    r = res["results"]
    lines = ["| op | ember fwd µs | torch fwd µs | ember/torch fwd | ember fwd+bwd µs | torch fwd+bwd µs | "
             "ember/torch fwd+bwd |", "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(fw, op, k):
        if fw not in r:
            return "n/a"
        m = r[fw][op][k]
        return f"{m['median_us']:.1f} ({m['min_us']:.1f}–{m['max_us']:.1f})"

    for op in OPS:
        ratio = res["ratio_ember_over_torch"].get(op)
        rf = f"{ratio['forward']:.2f}x" if ratio else "n/a"
        rb = f"{ratio['forward_backward']:.2f}x" if ratio else "n/a"
        lines.append(f"| {op} | {cell('ember-eager', op, 'forward')} | {cell('torch', op, 'forward')} | {rf} | "
                     f"{cell('ember-eager', op, 'forward_backward')} | {cell('torch', op, 'forward_backward')} | "
                     f"{rb} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7, help="timed windows per op (>= 5; default 7)")
    p.add_argument("--window-seconds", type=float, default=0.3, help="length of one timed window (default 0.3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the subprocesses")
    p.add_argument("--write", action="store_true", help="update the op-overhead block of benchmarks/RESULTS.md "
                                                        "and write benchmarks/results/op_overhead.json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        Path(a.out).write_text(json.dumps(measure_one(a.one, a.repeat, a.window_seconds)))
        return 0
    from . import report
    from .machine import info, loadavg, openblas_env

    start = loadavg()
    res = run(a.repeat, a.window_seconds, a.threads, a.unset_openblas_env)
    res.update(machine=info(), loadavg={"start": start, "end": loadavg()}, threads=a.threads,
               openblas_env=openblas_env(a.unset_openblas_env))
    print("\n".join(table(res)))
    for fw, note in res["notes"].items():
        print(f"{fw}: skipped: {note}")
    if a.write:
        report.write_op_overhead(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
