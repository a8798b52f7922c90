"""ember's benchmark runner: the reference workloads of WORKLOADS.md on every installed framework.

    python -m benchmarks.run                                  # everything (about half an hour)
    python -m benchmarks.run --workloads mlp,cnn --frameworks ember-eager,torch,keras-tf --repeat 5
    python -m benchmarks.run --smoke --frameworks ember-eager # tiny sizes, a few steps (the smoke test)

Workloads (benchmarks/workloads.py, exactly as WORKLOADS.md):
  mlp     Dense 784-512-512-10 ReLU, batch 128, Adam 1e-3                 train samples/s
  cnn     Conv32-Pool-Conv64-Pool-Dense128-Dense10, batch 64, Adam 1e-3   train samples/s
  gpt     char GPT (vocab 96, ctx 64, d 128, 4 heads, 2 pre-LN blocks, GELU tanh), batch 32,
          AdamW 3e-4 wd 0.01                                              train tokens/s
  lstm    Embedding(96,64) -> LSTM(256) -> Dense 96 per step, seq 64, batch 32, Adam 1e-3
                                                                          train tokens/s
  infer1  the mlp, batch 1, no grad                                       p50 latency µs

Frameworks: ember-eager, ember-jit (em.jit; listed as "not implemented" where ember has no
em.jit), torch (eager), torch-compile, keras-tf (Keras 3 on TensorFlow), keras-jax (Keras 3 on
JAX), jax (pure jax.numpy, jitted step). A framework that is not installed is skipped with a
note. Install the peers with `pip install torch==2.13.0 && pip install -r benchmarks/requirements.txt`.

Method (fair by construction): each (framework, workload) runs in its own subprocess with every
library at --threads intra-op threads and 1 inter-op thread (OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS,
torch.set_num_threads/set_num_interop_threads, TensorFlow's threading config, XLA's CPU pool
through the process's CPU affinity). Synthetic data: 4 fixed random batches, labels uniform in
[0, classes), cycled. Warm-up steps (where compilation happens) are timed separately and
excluded; then --repeat timed windows of about --window-seconds each; the median and the
min/max across windows are reported. Every training run checks that every parameter changed
and that the fixed batches' mean loss at their last step is below that at their first step (so
nothing is optimized away); inference checks that parameters did not change and outputs are
finite. Also reported: peak RSS of each process, GFLOP/s from analytic FLOP counts and its
fraction of the float32 GEMM peak that the runner measures with NumPy at --threads threads,
the load average before and after each run and the CPU time other processes used just before it.

Outputs: a table on stdout; the raw results as JSON and a bar chart (PNG) in --out (default
benchmarks/results/); the marked blocks of benchmarks/RESULTS.md (workloads, op overhead,
import time; other blocks are left alone). --no-write and --smoke update neither RESULTS.md
nor benchmarks/results/ (an --out directory still gets the JSON and chart).

OpenBLAS: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, when set in the environment, can slow NumPy;
--unset-openblas-env removes both (together) from every benchmark subprocess, and the output,
the JSON and RESULTS.md say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import machine, report, workloads
from .frameworks import FRAMEWORKS, adapter

ROOT = Path(__file__).resolve().parents[1]


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over the next ``seconds`` (from /proc/stat): the other
    processes' load while no benchmark of ours runs."""
    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    try:
        t1, i1 = read()
        time.sleep(seconds)
        t2, i2 = read()
    except OSError:
        return None
    return round(1 - (i2 - i1) / max(t2 - t1, 1), 3)


def wait_for_quiet(max_seconds: float, threshold: float = 0.1) -> float | None:
    """Wait (up to ``max_seconds``) until other processes use less than ``threshold`` of the CPUs."""
    deadline = time.monotonic() + max_seconds
    busy = cpu_busy(0.5)
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        time.sleep(2.0)
        busy = cpu_busy(1.0)
    return busy


def availability(framework: str) -> tuple[bool, str]:
    mod, options = adapter(framework)
    return mod.available(options)


def run_subprocess(framework: str, workload: str, args) -> dict:
    """One measurement in a fresh process; returns its record (status ok/skipped/error/...)."""
    mod, options = adapter(framework)
    env = machine.thread_env(args.threads, args.unset_openblas_env)
    if hasattr(mod, "env"):
        env.update(mod.env(options, args.threads))
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        if not args.warm_cache:  # compile from scratch: warm-up times are cold-start times
            env["EMBER_CACHE_DIR"] = str(Path(tmp) / "ember-cache")
            env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor-cache")
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.worker", "--framework", framework, "--workload", workload,
               "--out", str(out), "--repeat", str(args.repeat), "--window-seconds", str(args.window_seconds),
               "--threads", str(args.threads)]
        if args.smoke:
            cmd.append("--smoke")
        if args.warmup is not None:
            cmd += ["--warmup", str(args.warmup)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"framework": framework, "workload": workload, "status": "timeout",
                    "note": f"no result within --timeout {args.timeout} s"}
        wall = time.perf_counter() - t0
        if out.exists():
            rec = json.loads(out.read_text())
        else:
            rec = {"framework": framework, "workload": workload, "status": "error",
                   "note": f"exit code {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
        rec["process_seconds"] = wall
        if rec.get("status") == "error" and "stderr" not in rec:
            rec["stderr_tail"] = proc.stderr.strip()[-3000:]
        return rec


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(workloads.WORKLOADS),
                   help=f"comma-separated subset of {','.join(workloads.WORKLOADS)} (default: all)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: all)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed windows per measurement, >= 5 (default 7; 2 with --smoke)")
    p.add_argument("--window-seconds", type=float, default=1.0,
                   help="target length of one timed window; steps per window are calibrated from the "
                        "warm-up (default 1.0)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up steps (default 5 training steps, at least one pass over the 4 batches; "
                        "20 inference calls)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every framework (default 2)")
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (both) in every benchmark subprocess; "
                        "recorded in the JSON and RESULTS.md")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model sizes, 2 windows, short windows; never touches RESULTS.md (for the smoke test)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for bench.json and bench.png (default benchmarks/results; with --smoke "
                        "or --no-write nothing is written unless --out is given)")
    p.add_argument("--no-write", action="store_true",
                   help="do not update benchmarks/RESULTS.md, nor benchmarks/results/ unless --out is given")
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    p.add_argument("--no-gemm", action="store_true", help="skip measuring the GEMM peak")
    p.add_argument("--no-op-overhead", action="store_true", help="skip the op-overhead benchmark")
    p.add_argument("--no-import-time", action="store_true", help="skip import time and installed size")
    p.add_argument("--warm-cache", action="store_true",
                   help="keep ember's and inductor's compiler caches (default: a fresh cache per process, so "
                        "warm-up times include cold compilation)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement wait up to SECONDS until other processes use < 10%% of the "
                        "CPUs (default 0: do not wait; the CPU use is recorded either way)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per subprocess (default 1800)")
    args = p.parse_args(argv)
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.framework_list = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for w in args.workload_list:
        if w not in workloads.WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {', '.join(workloads.WORKLOADS)}")
    for f in args.framework_list:
        if f not in FRAMEWORKS:
            p.error(f"unknown framework {f!r}; choose from {', '.join(FRAMEWORKS)}")
    if args.smoke:
        args.repeat = 2 if args.repeat is None else args.repeat
        args.window_seconds = min(args.window_seconds, 0.02)
        args.warmup = 4 if args.warmup is None else args.warmup
        args.no_op_overhead = args.no_import_time = args.no_gemm = True
        args.no_write = True
    elif args.repeat is None:
        args.repeat = 7
    if not args.smoke and args.repeat < 5:
        p.error("--repeat must be >= 5 (median of at least 5 timed windows); --smoke for quick runs")
    return args


def output_dir(args):
    """Where bench.json and bench.png go: --out, else benchmarks/results/ for a run that updates
    RESULTS.md, else nowhere (a smoke or --no-write run must not replace the raw results that
    RESULTS.md's tables were made from)."""
    if args.out is not None:
        return args.out
    return None if args.smoke or args.no_write else ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    args = parse_args(argv)
    results = collect(args, argv)
    return finish(results, args)


def collect(args, argv=None) -> dict:
    """Run every requested measurement; returns the results dict (what bench.json holds)."""
    t_start = time.perf_counter()
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                 else argv))
    results = {
        "schema": 1,
        "command": command.strip(),
        "machine": machine.info(),
        "threads": args.threads,
        "interop_threads": 1,
        "openblas_env": machine.openblas_env(args.unset_openblas_env),
        "settings": {"repeat": args.repeat, "window_seconds": args.window_seconds, "warmup": args.warmup,
                     "smoke": args.smoke, "warm_cache": args.warm_cache, "n_batches": 4},
        "loadavg": {"start": machine.loadavg()},
        "workloads": {},
    }
    say = print if not args.smoke else (lambda *a, **k: None)
    if args.unset_openblas_env:
        say("note: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in every benchmark subprocess "
            f"(they were: {results['openblas_env']['values']})")
    if not args.no_gemm:
        say("measuring the float32 GEMM peak ...", flush=True)
        results["gemm"] = machine.gemm_peak(args.threads, args.unset_openblas_env)
        say(f"  {results['gemm'].get('peak_gflops', 0):.1f} GFLOP/s", flush=True)
    avail = {fw: availability(fw) for fw in args.framework_list}
    for fw, (ok, note) in avail.items():
        if not ok:
            say(f"{fw}: skipped ({note})")
    for wl in args.workload_list:
        s = workloads.spec(wl, args.smoke)
        block = results["workloads"][wl] = {"description": workloads.DESCRIPTION[wl], "unit": s["unit"],
                                            "flops_per_step": workloads.flops_per_step(s),
                                            "items_per_step": workloads.items_per_step(s), "results": {}}
        for fw in args.framework_list:
            ok, note = avail[fw]
            if not ok:
                block["results"][fw] = {"framework": fw, "workload": wl, "status": "skipped", "note": note}
                continue
            busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet else (None if args.smoke else cpu_busy(0.5))
            load0 = machine.loadavg()
            say(f"{wl:7s} {fw:14s} ...", end=" ", flush=True)
            rec = run_subprocess(fw, wl, args)
            rec["loadavg_start"], rec["loadavg_end"] = load0, machine.loadavg()
            rec["other_cpu_busy_before"] = busy
            block["results"][fw] = rec
            if rec.get("status") in ("ok", "failed-checks"):
                say(f"{rec['value']:.1f} {rec['metric']} ({rec['process_seconds']:.0f} s, {rec['status']})",
                    flush=True)
            else:
                say(f"{rec.get('status')}: {rec.get('note', '')[:300]}", flush=True)
    if not args.no_op_overhead:
        from . import op_overhead

        say("op overhead ...", flush=True)
        results["op_overhead"] = op_overhead.run(args.repeat, 0.3, args.threads, args.unset_openblas_env)
        results["op_overhead"]["loadavg"] = {"end": machine.loadavg()}
    if not args.no_import_time:
        from . import import_time

        say("import time and installed size ...", flush=True)
        results["import_time"] = import_time.run(5, args.threads, args.unset_openblas_env)
    results["loadavg"]["end"] = machine.loadavg()
    results["elapsed_seconds"] = time.perf_counter() - t_start
    return results


def finish(results: dict, args) -> int:
    say = print if not args.smoke else (lambda *a, **k: None)
    say(report.console(results))
    if "op_overhead" in results:
        from . import op_overhead

        say("\n## op overhead (µs per call)\n" + "\n".join(op_overhead.table(results["op_overhead"])))
    if "import_time" in results:
        from . import import_time

        say("\n## import time and installed size\n" + "\n".join(import_time.table(results["import_time"])))
    if args.unset_openblas_env:
        say("\nnote: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE were unset for this run")
    out_dir = output_dir(args)
    results["outputs"] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / "bench.json"
        png_path = None if args.no_chart else out_dir / "bench.png"
        if png_path is not None:
            note = report.chart(results, png_path)
            if note:
                say(f"chart: {note}")
                png_path = None
        results["outputs"] = {"json": str(json_path), "png": str(png_path) if png_path else None}
        json_path.write_text(json.dumps(results, indent=1, default=float))
        say(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else ""))
        if not args.no_write:
            if "import_time" in results:
                report.write_import({**results["import_time"], "machine": results["machine"],
                                     "loadavg": results["loadavg"], "openblas_env": results["openblas_env"]})
            if "op_overhead" in results:
                report.write_op_overhead({**results["op_overhead"], "machine": results["machine"],
                                          "loadavg": results["loadavg"], "openblas_env": results["openblas_env"]})
            report.write_workloads(results, json_path, png_path)
            say(f"updated {report.RESULTS_MD}")
    bad = [r for b in results["workloads"].values() for r in b["results"].values()
           if r.get("status") not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
