"""One (framework, workload) measurement; run by ``benchmarks.run`` in a fresh subprocess.

    python -m benchmarks.worker --framework torch --workload mlp --out result.json

The parent sets the thread environment (see ``benchmarks.machine.thread_env``) before this
process starts, so NumPy/BLAS/XLA read it at import. The result (one JSON object) is written to
``--out``; a failure is written there too, with its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


def run_one(framework: str, workload: str, smoke=False, repeat=7, window_seconds=1.0, warmup=None,
            threads=2) -> dict:
    from . import harness, workloads
    from .frameworks import adapter

    mod, options = adapter(framework)
    record = {"framework": framework, "workload": workload, "smoke": smoke, "threads": threads}
    ok, note = mod.available(options)
    if not ok:
        record.update(status="skipped", note=note)
        return record
    pin = None
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > threads:
        pin = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, pin)
    record["affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    t0 = time.perf_counter()
    mod.setup(options, threads)
    s = workloads.spec(workload, smoke)
    data = workloads.make_data(s)
    runner = mod.build(s, data, options)
    record["build_seconds"] = time.perf_counter() - t0
    record.update(harness.measure(runner, s, repeat=repeat, window_seconds=window_seconds, warmup=warmup))
    record["method"] = runner.method
    record["extra"] = runner.extra()
    record["versions"] = mod.versions()
    record["peak_rss_bytes"] = harness.peak_rss_bytes()["self"]
    record["peak_rss_children_bytes"] = harness.peak_rss_bytes()["children"]
    record["status"] = "ok" if record["checks_passed"] else "failed-checks"
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--window-seconds", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    try:
        record = run_one(a.framework, a.workload, a.smoke, a.repeat, a.window_seconds, a.warmup, a.threads)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        record = {"framework": a.framework, "workload": a.workload, "status": "error",
                  "note": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1, default=float)
    return 0 if record["status"] in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
