"""Load test for ``ember serve``: throughput and latency with and without dynamic batching.

Saves a small MLP (64 -> 256 -> 256 -> 10, the digits shape) as version 1 in a temporary
model directory, starts ``python -m ember.serve`` on a free loopback port once with batching
and once with ``--no-batching``, and drives each with concurrent keep-alive HTTP/1.1 clients
(a minimal asyncio client, so the client costs little CPU next to the server) sending one
example per request for a fixed time after a warm-up. Reports requests/s, p50/p90/p99
latency and the mean rows per model call (from the server's /metrics), writes
benchmarks/results/serve.json and replaces the ``<!-- serve:begin -->`` ... ``<!-- serve:end -->``
block of benchmarks/RESULTS.md (created or appended when missing; the rest of the file is
left alone).

    python benchmarks/serve_load.py                      # ~1 minute
    python benchmarks/serve_load.py --seconds 3 --concurrency 1,16 --no-write

Loopback only; every phase has a time limit, and the servers are stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "serve.json"
BEGIN, END = "<!-- serve:begin -->", "<!-- serve:end -->"
HOST = "127.0.0.1"


def build_model(directory: Path):
    sys.path.insert(0, str(ROOT / "src"))
    import ember as em
    from ember import layers

    em.manual_seed(0)
    model = em.Sequential([layers.Input(shape=(64,)), layers.Dense(256, activation="relu"),
                           layers.Dense(256, activation="relu"), layers.Dense(10, activation="softmax")])
    model.build((None, 64))
    (directory / "1").mkdir(parents=True)
    model.save(str(directory / "1" / "model.ember"))
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``python -m ember.serve`` in a subprocess."""

    def __init__(self, model_dir: Path, batching: bool, max_batch_size: int, timeout_micros: int):
        self.port = free_port()
        cmd = [sys.executable, "-m", "ember.serve", str(model_dir), "--model-name", "bench", "--host", HOST,
               "--port", str(self.port), "--no-access-log", "--log-level", "warning",
               "--max-batch-size", str(max_batch_size), "--batch-timeout-micros", str(timeout_micros)]
        if not batching:
            cmd.append("--no-batching")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, limit=60.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                status, _ = http_get(self.port, "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready in time")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http_get(port, path):
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


async def drive(port, bodies, concurrency, warmup, seconds):
    """``concurrency`` keep-alive connections posting back to back; latencies after the warm-up."""
    latencies, statuses = [], {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(i):
        reader, writer = await asyncio.open_connection(HOST, port)
        k = i
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                body = bodies[k % len(bodies)]
                k += 1
                writer.write(b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (HOST.encode(), len(body), body))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                await reader.readexactly(length)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    status = int(head[9:12])
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, statuses


def run_one(model_dir, batching, concurrency, args, bodies, expected):
    server = Server(model_dir, batching, args.max_batch_size, args.batch_timeout_micros)
    try:
        server.wait_ready()
        # correctness check first: the served predictions are the model's
        import http.client

        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
        conn.request("POST", "/v1/models/bench:predict", body=bodies[0], headers={"Content-Type": "application/json"})
        got = np.asarray(json.loads(conn.getresponse().read())["predictions"])
        conn.close()
        assert np.allclose(got, expected, atol=1e-5), "served predictions differ from the model's"
        _, before = http_get(server.port, "/metrics")
        latencies, statuses = asyncio.run(drive(server.port, bodies, concurrency, args.warmup, args.seconds))
        _, after = http_get(server.port, "/metrics")
    finally:
        server.stop()
    calls = metric_sum(after, "ember_serve_batch_size_count") - metric_sum(before, "ember_serve_batch_size_count")
    rows = metric_sum(after, "ember_serve_batch_size_sum") - metric_sum(before, "ember_serve_batch_size_sum")
    lat = np.asarray(latencies) * 1000
    ok = statuses.get(200, 0)
    return {"batching": batching, "concurrency": concurrency, "seconds": args.seconds, "requests": len(latencies),
            "errors": len(latencies) - ok, "throughput_rps": round(ok / args.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p90_ms": round(float(np.percentile(lat, 90)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "mean_rows_per_model_call": round(rows / calls, 2) if calls else None}


def markdown(report) -> str:
    s = report["settings"]
    lines = [BEGIN, "## Serving", "",
             f"`python benchmarks/serve_load.py` ({report['date']}; {report['machine']}). `ember serve` in a "
             f"subprocess on loopback, one example per request ({s['model']}), keep-alive clients posting back to back "
             f"for {s['seconds']} s after a {s['warmup']} s warm-up; batching: `--max-batch-size "
             f"{s['max_batch_size']} --batch-timeout-micros {s['batch_timeout_micros']}`; access log off. Client and "
             "server share the machine's CPUs.", "",
             "| dynamic batching | concurrent clients | requests/s | p50 ms | p90 ms | p99 ms | rows per model call "
             "| errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['throughput_rps']} | "
                     f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['mean_rows_per_model_call']} | "
                     f"{r['errors']} |")
    lines += ["", "Dynamic batching trades up to `--batch-timeout-micros` of extra latency per request at low load "
              "for throughput and lower tail latency under concurrency (`--batch-timeout-micros 0` never waits for a "
              "lone request). Raw numbers: `benchmarks/results/serve.json`.", END]
    return "\n".join(lines)


def write_results(report):
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import save_results

    save_results("serve", report, markdown(report), RESULTS_JSON, RESULTS_MD)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="measured time per run (default 8)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured time per run (default 1.5)")
    p.add_argument("--concurrency", default="1,32", help="comma-separated client counts (default 1,32)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-micros", type=int, default=2000)
    p.add_argument("--no-write", action="store_true", help="print only; do not write the results files")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.seconds > 120 or args.warmup > 30 or max(levels) > 512:
        p.error("keep it bounded: --seconds <= 120, --warmup <= 30, concurrency <= 512")

    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 16, size=(64, 64)).round(1)
    bodies = [json.dumps({"instances": [row.tolist()]}).encode() for row in inputs]
    runs = []
    with tempfile.TemporaryDirectory(prefix="ember-serve-load-") as tmp:
        model_dir = Path(tmp) / "bench"
        model = build_model(model_dir)
        from ember.tensor import Tensor

        expected = model(Tensor._make(inputs[:1].astype(np.float32))).data
        for concurrency in levels:
            for batching in (True, False):
                r = run_one(model_dir, batching, concurrency, args, bodies, expected)
                runs.append(r)
                print(f"batching {'on ' if batching else 'off'}  clients {concurrency:>3}  "
                      f"{r['throughput_rps']:>8} req/s  p50 {r['p50_ms']} ms  p90 {r['p90_ms']} ms  "
                      f"p99 {r['p99_ms']} ms  rows/call {r['mean_rows_per_model_call']}  errors {r['errors']}",
                      flush=True)
    import numpy
    import starlette
    import uvicorn

    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
                         f"NumPy {numpy.__version__}, uvicorn {uvicorn.__version__}, Starlette {starlette.__version__}",
              "settings": {"model": "MLP 64-256-256-10, float32", "seconds": args.seconds, "warmup": args.warmup,
                           "max_batch_size": args.max_batch_size, "batch_timeout_micros": args.batch_timeout_micros},
              "runs": runs}
    if not args.no_write:
        write_results(report)
        print(f"wrote {RESULTS_JSON.relative_to(ROOT)} and the Serving block of {RESULTS_MD.relative_to(ROOT)}")
    return report


if __name__ == "__main__":
    main()
