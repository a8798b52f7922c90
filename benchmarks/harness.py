"""The measurement loop every framework runs through (inside its own subprocess).

A framework adapter builds a *runner* for one workload:

- ``runner.step(i)`` runs one training step on fixed batch ``i % n_batches`` (forward, loss,
  backward, optimizer update) and returns a handle of the loss; for ``infer1`` it runs one
  forward pass and returns the output handle;
- ``runner.value(handle)`` turns a handle into a Python float (the loss, or a checksum of the
  output), ``runner.sync(handle)`` waits until the work behind it is done (JAX dispatches
  asynchronously);
- ``runner.params()`` returns NumPy copies of every parameter;
- ``runner.method`` says how the framework was driven (e.g. ``train_on_batch``).

``measure`` then does: warm-up steps (compilation happens here; their time is reported, not
counted), a calibration of the steps per window so that each timed window lasts about
``window_seconds``, ``repeat`` timed windows (median, min and max throughput), and the checks
that nothing was optimized away: every parameter changed and the fixed batches' mean loss at
their last step is below their mean loss at their first step (inference: parameters unchanged
and outputs finite).
"""

from __future__ import annotations

import math
import resource
import statistics
import time

import numpy as np

from . import workloads


def peak_rss_bytes() -> dict:
    """Peak resident set size of this process (and of its finished children, e.g. compiler workers)."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def _changed(before, after) -> list[bool]:
    return [a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(before, after)]


def measure(runner, spec: dict, repeat: int = 7, window_seconds: float = 1.0, warmup: int | None = None,
            min_steps: int = 2, n_batches: int = 4) -> dict:
    if spec["kind"] == "infer":
        return _measure_infer(runner, spec, repeat, window_seconds, warmup)
    warmup = max(warmup if warmup is not None else n_batches + 1, n_batches, 3)
    before = runner.params()
    handles = []
    step_times = []
    i = 0
    t_start = time.perf_counter()
    for _ in range(warmup):
        t0 = time.perf_counter()
        h = runner.step(i)
        runner.sync(h)
        step_times.append(time.perf_counter() - t0)
        handles.append((i % n_batches, h))
        i += 1
    warmup_s = time.perf_counter() - t_start
    # steady-state step time from the last warm-up steps, then enough steps per window
    per_step = min(step_times[-2:])
    steps = max(min_steps, math.ceil(window_seconds / max(per_step, 1e-9)))
    # every timed window starts at batch 0, so all windows do the same work; the windows
    # together make whole passes over the fixed batches
    steps = math.ceil(steps / n_batches) * n_batches if steps >= n_batches else steps
    windows = []
    for _ in range(repeat):
        i = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            h = runner.step(i)
            handles.append((i % n_batches, h))
            i += 1
        runner.sync(h)
        windows.append(time.perf_counter() - t0)
    after = runner.params()
    losses = [(b, runner.value(h)) for b, h in handles]
    changed = _changed(before, after)
    # the same batches before and after training: each batch's loss at its first step (warm-up)
    # and at its last step
    first_by_batch, last_by_batch = {}, {}
    for b, v in losses:
        first_by_batch.setdefault(b, v)
        last_by_batch[b] = v
    first = float(np.mean([first_by_batch[b] for b in sorted(last_by_batch)]))
    last = float(np.mean([last_by_batch[b] for b in sorted(last_by_batch)]))
    losses = [v for _, v in losses]
    items = workloads.items_per_step(spec)
    rates = sorted(steps * items / w for w in windows)
    flops = workloads.flops_per_step(spec)
    med_window = statistics.median(windows)
    return {
        "metric": spec["unit"],
        "value": statistics.median(rates),
        "min": rates[0],
        "max": rates[-1],
        "step_ms": 1e3 * med_window / steps,
        "steps_per_window": steps,
        "windows": len(windows),
        "window_seconds": windows,
        "warmup_steps": warmup,
        "warmup_seconds": warmup_s,
        "first_step_seconds": step_times[0],
        "flops_per_step": flops,
        "gflops": flops * steps / med_window / 1e9,
        "loss_first": first,
        "loss_last": last,
        "loss_fell": bool(last < first),
        "losses_finite": bool(np.all(np.isfinite(losses))),
        "params_total": len(changed),
        "params_changed": int(sum(changed)),
        "checks_passed": bool(last < first and all(changed) and len(changed) > 0 and np.all(np.isfinite(losses))),
    }


def _measure_infer(runner, spec, repeat, window_seconds, warmup):
    warmup = warmup if warmup is not None else 20
    before = runner.params()
    t_start = time.perf_counter()
    times = []
    for i in range(warmup):
        t0 = time.perf_counter()
        h = runner.step(i)
        runner.sync(h)
        times.append(time.perf_counter() - t0)
    warmup_s = time.perf_counter() - t_start
    per_call = statistics.median(times[-max(1, warmup // 2):])
    calls = max(20, math.ceil(window_seconds / max(per_call, 1e-9)))
    window_p50, all_calls, checksum = [], [], 0.0
    clock = time.perf_counter_ns
    for _ in range(repeat):
        lat = []
        for i in range(calls):
            t0 = clock()
            h = runner.step(i)
            runner.sync(h)
            lat.append(clock() - t0)
        checksum += runner.value(h)
        window_p50.append(statistics.median(lat) / 1e3)
        all_calls.extend(lat)
    after = runner.params()
    changed = _changed(before, after)
    all_calls.sort()
    flops = workloads.flops_per_step(spec)
    p50 = statistics.median(window_p50)
    return {
        "metric": "us",
        "value": p50,
        "min": min(window_p50),
        "max": max(window_p50),
        "p90_us": all_calls[int(0.9 * (len(all_calls) - 1))] / 1e3,
        "p99_us": all_calls[int(0.99 * (len(all_calls) - 1))] / 1e3,
        "calls_per_window": calls,
        "windows": repeat,
        "warmup_steps": warmup,
        "warmup_seconds": warmup_s,
        "first_step_seconds": times[0],
        "flops_per_step": flops,
        "gflops": flops / (p50 * 1e-6) / 1e9,
        "output_checksum": checksum,
        "params_total": len(changed),
        "params_changed": int(sum(changed)),
        "checks_passed": bool(not any(changed) and len(changed) > 0 and math.isfinite(checksum)),
    }
