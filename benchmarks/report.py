"""Tables, the bar chart and the marked blocks of benchmarks/RESULTS.md.

RESULTS.md is shared with other benchmark scripts: each writes only its own block between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` (created at the top when missing) and leaves
the rest of the file alone. Every number in a block comes from a results JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import import_time, op_overhead

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"
REFERENCE = "ember-eager"
# (workload, ember framework, peers): the ember framework's speed over the best listed peer must be at
# least the goal. Speed is throughput, or 1/latency for infer1 (so "latency <= 0.5x" is a goal of 2.0).
TARGETS = [
    ("mlp", "ember-eager", ("torch",), 1.0),                     # the benchmarks issue
    ("cnn", "ember-eager", ("torch",), 0.7),
    ("mlp", "ember-jit", ("keras-jax", "torch-compile"), 1.1),   # the compiler issue
    ("gpt", "ember-jit", ("torch-compile",), 1.0),
    ("gpt", "ember-jit", ("ember-eager",), 1.5),
    ("cnn", "ember-jit", ("keras-tf",), 1.0),
    ("lstm", "ember-jit", ("torch-compile",), 0.8),
    ("infer1", "ember-jit", ("torch",), 2.0),
]


# ---- numbers ---------------------------------------------------------------------------------
def speed(rec: dict) -> float | None:
    """Higher is better: throughput, or 1/latency for infer1."""
    if rec.get("status") not in ("ok", "failed-checks") or not rec.get("value"):
        return None
    return 1.0 / rec["value"] if rec["metric"] == "us" else rec["value"]


def ratio(rec, ref) -> float | None:
    a, b = speed(rec or {}), speed(ref or {})
    return a / b if a and b else None


def _fmt(v, metric=None):
    if v is None:
        return "–"
    if metric == "us":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def _status(rec):
    st = rec.get("status")
    if st == "ok":
        return "ok"
    if st == "skipped":
        return f"skipped: {rec.get('note', '')}"
    if st == "failed-checks":
        why = []
        if rec.get("params_changed") != rec.get("params_total"):
            why.append(f"{rec.get('params_changed')}/{rec.get('params_total')} params changed")
        if rec.get("metric") != "us" and not rec.get("loss_fell"):
            why.append(f"loss {rec.get('loss_first'):.3f} -> {rec.get('loss_last'):.3f}")
        return "CHECKS FAILED: " + ", ".join(why)
    return f"{st}: {rec.get('note', '')}"[:200]


def workload_rows(name: str, block: dict, peak: float | None) -> list[str]:
    res = block["results"]
    ref, jit = res.get(REFERENCE), res.get("ember-jit")
    unit = block["unit"]
    head = "p50 latency µs (min–max)" if unit == "us" else f"{unit} (min–max)"
    lines = [f"| framework | {head} | × ember-eager | × ember-jit | GFLOP/s | % of GEMM peak | "
             "warm-up s (first step s) | peak RSS MB | checks |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for fw, rec in res.items():
        if rec.get("status") not in ("ok", "failed-checks"):
            lines.append(f"| {fw} | – | – | – | – | – | – | – | {_status(rec)} |")
            continue
        r1, r2 = ratio(rec, ref), ratio(rec, jit)
        g = rec.get("gflops")
        pct = f"{100 * g / peak:.1f}%" if g and peak else "–"
        checks = _status(rec)
        if rec["metric"] != "us" and checks == "ok":
            checks = f"ok (loss {rec['loss_first']:.2f}→{rec['loss_last']:.2f}, {rec['params_changed']} params moved)"
        elif checks == "ok":
            checks = "ok (params unchanged, output finite)"
        lines.append(
            f"| {fw} | {_fmt(rec['value'], rec['metric'])} ({_fmt(rec['min'], rec['metric'])}–"
            f"{_fmt(rec['max'], rec['metric'])}) | {f'{r1:.2f}' if r1 else '–'} | {f'{r2:.2f}' if r2 else '–'} | "
            f"{g:.1f} | {pct} | {rec['warmup_seconds']:.2f} ({rec['first_step_seconds']:.2f}) | "
            f"{rec['peak_rss_bytes'] / 2**20:.0f} | {checks} |")
    return lines


def methods(results: dict) -> list[str]:
    """How each framework was driven (one line per framework, from the records)."""
    seen = {}
    for block in results["workloads"].values():
        for fw, rec in block["results"].items():
            if rec.get("method"):
                seen.setdefault(fw, set()).add(rec["method"])
    return [f"- **{fw}**: " + "; ".join(sorted(m)) for fw, m in seen.items()]


def targets(results: dict) -> list[str]:
    out = []
    for wl, ours, peers, goal in TARGETS:
        block = results["workloads"].get(wl)
        if not block:
            continue
        measured = [(p, ratio(block["results"].get(ours), block["results"].get(p))) for p in peers]
        measured = [(p, r) for p, r in measured if r is not None]
        if not measured:
            continue
        best, r = min(measured, key=lambda pr: pr[1])  # the fastest peer gives the smallest ratio
        what = "speed (1/latency)" if block["results"].get(ours, {}).get("metric") == "us" else "speed"
        out.append(f"- {wl}: {ours} / {best} {what} = {r:.2f}x (target >= {goal}x"
                   f"{' over the best of ' + ', '.join(peers) if len(peers) > 1 else ''}): "
                   f"{'met' if r >= goal else 'NOT met'}")
    return out


def console(results: dict) -> str:
    peak = (results.get("gemm") or {}).get("peak_gflops")
    out = []
    for name, block in results["workloads"].items():
        out.append(f"\n## {name}: {block['description']}")
        out.extend(workload_rows(name, block, peak))
    if peak:
        out.append(f"\nfloat32 GEMM peak (numpy, {results['threads']} threads): {peak:.1f} GFLOP/s")
    out.extend(targets(results))
    return "\n".join(out)


# ---- chart -------------------------------------------------------------------------------------
def chart(results: dict, path: Path) -> str | None:
    """One panel per workload: each framework's median with min/max whiskers. None if matplotlib
    is missing (the note is returned instead of raising)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart"
    blocks = [(n, b) for n, b in results["workloads"].items()
              if any(r.get("status") in ("ok", "failed-checks") for r in b["results"].values())]
    if not blocks:
        return "nothing to plot"
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.8), squeeze=False)
    colors = {"ember-eager": "#d9480f", "ember-jit": "#f08c00", "torch": "#1c7ed6", "torch-compile": "#4dabf7",
              "keras-tf": "#2f9e44", "keras-jax": "#8ce99a", "jax": "#7048e8"}
    for ax, (name, block) in zip(axes[0], blocks):
        items = [(fw, r) for fw, r in block["results"].items() if r.get("status") in ("ok", "failed-checks")]
        vals = [r["value"] for _, r in items]
        lo = [r["value"] - r["min"] for _, r in items]
        hi = [r["max"] - r["value"] for _, r in items]
        y = range(len(items))
        ax.barh(list(y), vals, xerr=[lo, hi], color=[colors.get(fw, "grey") for fw, _ in items], capsize=3)
        ax.set_yticks(list(y), [fw for fw, _ in items])
        ax.invert_yaxis()
        unit = "p50 latency µs (lower is better)" if block["unit"] == "us" else f"{block['unit']} (higher is better)"
        ax.set_xlabel(unit)
        ax.set_title(name)
        ref = block["results"].get(REFERENCE)
        for i, (_, r) in enumerate(items):
            rr = ratio(r, ref)
            if rr:
                ax.text(r["value"], i, f" {rr:.2f}×", va="center", fontsize=8)
        ax.margins(x=0.25)
    m = results["machine"]
    fig.suptitle(f"ember benchmarks — {m['cpu']}, {results['threads']} threads, {m['date']} "
                 f"(× = speed relative to ember-eager)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---- RESULTS.md --------------------------------------------------------------------------------
def replace_block(name: str, body: str, path: Path = RESULTS_MD) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = block + "\n\n" + text if text else block + "\n"
    path.write_text(text)


def save_results(name: str, results: dict, block: str, json_path: Path, path: Path = RESULTS_MD) -> None:
    """A stand-alone benchmark's raw results as JSON at ``json_path`` and its markdown ``block``
    (with or without its begin/end markers) as the marked block ``name`` of RESULTS.md."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    body = block.replace(f"<!-- {name}:begin -->", "").replace(f"<!-- {name}:end -->", "").strip("\n")
    replace_block(name, body, path)


def _machine_line(res: dict) -> str:
    m = res["machine"]
    v = m["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("ember", "numpy", "numba", "torch", "tensorflow-cpu", "tensorflow",
                                               "keras", "jax", "jaxlib") if k in v)
    ob = res.get("openblas_env", {})
    obtxt = ", ".join(f"{k}={val}" for k, val in ob.get("values", {}).items() if val) or "not set"
    unset = "unset for this run (`--unset-openblas-env`)" if ob.get("unset_for_run") else "left as they were"
    la = res.get("loadavg", {})
    return (f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, {m['memory_gib']} GiB, "
            f"{m['os']}; {m['python'].split(' (')[0]}. Date: {m['date']}. Libraries: {libs}. "
            f"OpenBLAS variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE): {obtxt}; {unset}. "
            f"Load average (1, 5, 15 min) at start {la.get('start')}, at end {la.get('end')}.")


REPRODUCE = """```bash
python3 -m venv /work/benchvenv && . /work/benchvenv/bin/activate
pip install torch==2.13.0                      # exactly this spec: the CPU build
pip install -r benchmarks/requirements.txt     # tensorflow-cpu, keras, jax, matplotlib (pinned)
pip install -e .                               # ember
{command}
```"""


def write_workloads(results: dict, json_path: Path, png_path: Path | None) -> None:
    peak = (results.get("gemm") or {}).get("peak_gflops")
    g = results.get("gemm") or {}
    s = results["settings"]
    lines = ["## Training and inference workloads", "",
             f"`{results['command']}` — {_machine_line(results)}", "",
             f"Settings: every framework in its own process at {results['threads']} intra-op threads and 1 inter-op "
             f"thread; warm-up excluded ({s['warmup'] or 'default: 5 steps / 20 calls'}); median of "
             f"{s['repeat']} timed windows of about {s['window_seconds']} s each, (min–max) across windows; "
             f"compiler caches {'kept' if s['warm_cache'] else 'cold (a fresh cache directory per process)'}. "
             f"Full run took {results['elapsed_seconds'] / 60:.1f} min.", ""]
    if peak:
        lines += [f"Measured float32 GEMM peak: **{peak:.1f} GFLOP/s** ({g['how']}, {g['threads']} threads, "
                  f"BLAS {g['blas'].get('name')} {g['blas'].get('version')}, OpenBLAS kernel "
                  f"{g.get('openblas_core')}). GFLOP/s counts matmul/conv FLOPs only (forward + backward; see "
                  "`benchmarks/workloads.py`).", ""]
    for name, block in results["workloads"].items():
        lines += [f"### {name}", "", block["description"] + f" — {block['flops_per_step'] / 1e6:,.1f} MFLOP "
                  "per step.", ""]
        lines += workload_rows(name, block, peak)
        lines.append("")
    t = targets(results)
    if t:
        lines += ["Targets:", ""] + t + [""]
    lines += ["How each framework is driven:", ""] + methods(results) + [""]
    lines += [f"Raw results: `{json_path.relative_to(ROOT)}`" + (f"; chart: `{png_path.relative_to(ROOT)}`"
                                                                  if png_path else "") + ".", ""]
    if png_path:
        lines += [f"![benchmark chart]({png_path.relative_to(ROOT / 'benchmarks')})", ""]
    lines += ["Reproduce:", "", REPRODUCE.format(command=results["command"])]
    replace_block("workloads", "\n".join(lines))


def write_op_overhead(res: dict, json_path: Path | None = None) -> None:
    json_path = json_path or RESULTS_DIR / "op_overhead.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1, default=float))
    lines = ["## Op overhead (small ops, eager)", "", _machine_line(res), "",
             "Time per call in µs, median of " f"{res['repeat']} windows of ~{res['window_seconds']} s (min–max); "
             "64x64 float32 inputs that require grad; fwd+bwd = `x.grad = None`, forward, `backward(ones)`. "
             f"Target: ember <= {res['target_ratio']}x PyTorch.", ""]
    lines += op_overhead.table(res)
    lines += ["", f"Raw results: `{json_path.relative_to(ROOT)}`. Reproduce: `python -m benchmarks.op_overhead "
              "--write` (also part of `python -m benchmarks.run`)."]
    replace_block("op-overhead", "\n".join(lines))


def write_import(res: dict, json_path: Path | None = None) -> None:
    json_path = json_path or RESULTS_DIR / "import_time.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1, default=float))
    ember = res["packages"].get("ember", {}).get("import", {})
    verdict = ""
    if "median_s" in ember:
        ok = ember["median_s"] < res["target_seconds"]
        verdict = (f" `import ember`: {ember['median_s']:.3f} s — target < {res['target_seconds']} s "
                   f"{'met' if ok else 'NOT met'}.")
    lines = ["## Import time and installed size", "", _machine_line(res), "",
             "`python -c \"import X\"` in a fresh process, wall seconds, median of 5 after one untimed start "
             "(min–max); keras with its TensorFlow backend. Sizes: the files each distribution installed, and "
             "summed over its dependency closure (importlib.metadata)." + verdict, ""]
    if res.get("dont_write_bytecode_set"):
        lines += ["PYTHONDONTWRITEBYTECODE was set in this environment; the untimed start ran without it, so "
                  "each package's bytecode cache (`__pycache__`) existed for the timed starts, as after an "
                  "install and a first import anywhere else (pip writes it for installed packages; ember is "
                  "an editable install here, whose cache Python writes on first import).", ""]
    lines += import_time.table(res)
    lines += ["", f"Raw results: `{json_path.relative_to(ROOT)}`. Reproduce: `python -m benchmarks.import_time "
              "--write` (also part of `python -m benchmarks.run`)."]
    replace_block("import", "\n".join(lines))


__all__ = ["console", "chart", "write_workloads", "write_op_overhead", "write_import"]
