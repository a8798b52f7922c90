"""Smoke test of the benchmark harness: every ember workload runs through the runner's own code
path (a subprocess per workload, the measurement loop, the checks, the report) at tiny sizes for
a few steps, so the harness never rots. The full benchmark is not run here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import report, run, workloads  # noqa: E402

TRAIN_FIELDS = {"framework", "workload", "status", "metric", "value", "min", "max", "windows", "steps_per_window",
                "warmup_seconds", "first_step_seconds", "flops_per_step", "gflops", "loss_first", "loss_last",
                "loss_fell", "params_total", "params_changed", "checks_passed", "peak_rss_bytes", "method",
                "versions", "loadavg_start", "loadavg_end", "process_seconds"}
INFER_FIELDS = TRAIN_FIELDS - {"steps_per_window", "loss_first", "loss_last", "loss_fell"} | {"p90_us",
                                                                                            "calls_per_window"}


def _check(rec, workload):
    assert rec["status"] == "ok", rec
    fields = INFER_FIELDS if workload == "infer1" else TRAIN_FIELDS
    assert fields <= rec.keys(), fields - rec.keys()
    assert rec["value"] > 0 and rec["min"] <= rec["value"] <= rec["max"]
    assert rec["checks_passed"]
    assert rec["peak_rss_bytes"] > 0
    if workload == "infer1":
        assert rec["metric"] == "us"
        assert rec["params_changed"] == 0 < rec["params_total"]
    else:
        assert rec["params_changed"] == rec["params_total"] > 0  # every parameter moved
        assert rec["loss_last"] < rec["loss_first"]               # and the loss fell


def test_every_ember_workload_runs_through_the_harness(tmp_path):
    md_before = report.RESULTS_MD.read_text() if report.RESULTS_MD.exists() else None
    args = run.parse_args(["--smoke", "--frameworks", "ember-eager", "--out", str(tmp_path), "--no-chart"])
    results = run.collect(args)
    assert list(results["workloads"]) == list(workloads.WORKLOADS)
    for name, block in results["workloads"].items():
        _check(block["results"]["ember-eager"], name)
    assert run.finish(results, args) == 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["settings"]["smoke"] and saved["threads"] == 2
    assert saved["openblas_env"]["unset_for_run"] is False
    assert "start" in saved["loadavg"] and "end" in saved["loadavg"]
    text = report.console(saved)
    assert "ember-eager" in text and "× ember-eager" in text
    # a smoke run never touches RESULTS.md
    assert (report.RESULTS_MD.read_text() if report.RESULTS_MD.exists() else None) == md_before


def test_ember_jit_or_its_not_implemented_note(tmp_path):
    import ember

    args = run.parse_args(["--smoke", "--frameworks", "ember-jit", "--workloads", "mlp",
                           "--unset-openblas-env"])
    rec = run.collect(args)["workloads"]["mlp"]["results"]["ember-jit"]
    if hasattr(ember, "jit"):
        _check(rec, "mlp")
        assert rec["extra"]["traces"] >= 1
    else:
        assert rec["status"] == "skipped" and "not implemented" in rec["note"]


def test_missing_frameworks_are_skipped_with_a_note(monkeypatch):
    from benchmarks.frameworks import keras_backend

    monkeypatch.setattr(keras_backend.importlib.util, "find_spec", lambda name: None)
    args = run.parse_args(["--smoke", "--frameworks", "keras-tf", "--workloads", "infer1"])
    rec = run.collect(args)["workloads"]["infer1"]["results"]["keras-tf"]
    assert rec["status"] == "skipped" and "not installed" in rec["note"]
    rows = report.workload_rows("infer1", {"results": {"keras-tf": rec}, "unit": "us"}, None)
    assert "skipped: " in rows[-1]


def test_flop_counts_and_sizes_follow_workloads_md():
    mlp = workloads.spec("mlp")
    assert (mlp["batch"], mlp["hidden"], mlp["lr"]) == (128, 512, 1e-3)
    # forward 2*(784*512 + 512*512 + 512*10), weight grads the same, input grads of layers 2 and 3
    per_sample = 2 * 668672 * 2 + 2 * (512 * 512 + 512 * 10)
    assert workloads.flops_per_step(mlp) == 128 * per_sample
    gpt = workloads.spec("gpt")
    assert (gpt["vocab"], gpt["context"], gpt["d_model"], gpt["heads"], gpt["layers"], gpt["batch"]) == \
        (96, 64, 128, 4, 2, 32)
    assert workloads.items_per_step(gpt) == 32 * 64
    assert workloads.flops_per_step(workloads.spec("infer1")) == 2 * 668672
    x, y = workloads.make_data(workloads.spec("cnn"))[0]
    assert x.shape == (64, 1, 28, 28) and y.min() >= 0 and y.max() < 10


def test_results_md_blocks_leave_other_blocks_alone(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("<!-- serve:begin -->\nserving numbers\n<!-- serve:end -->\n")
    report.replace_block("workloads", "first", md)
    report.replace_block("workloads", "second", md)
    text = md.read_text()
    assert "second" in text and "first" not in text and "serving numbers" in text
    assert text.index("workloads:begin") < text.index("serve:begin")


def test_help_documents_the_options():
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for opt in ("--workloads", "--frameworks", "--repeat", "--unset-openblas-env", "--smoke", "--out",
                "--no-write", "--threads", "--wait-quiet"):
        assert opt in out
    with pytest.raises(SystemExit):
        run.parse_args(["--repeat", "3"])  # fewer than 5 timed windows is refused


def test_only_a_run_that_updates_results_md_replaces_the_raw_results(tmp_path):
    default = run.ROOT / "benchmarks" / "results"
    assert run.output_dir(run.parse_args([])) == default
    assert run.output_dir(run.parse_args(["--no-write"])) is None
    assert run.output_dir(run.parse_args(["--smoke"])) is None
    assert run.output_dir(run.parse_args(["--no-write", "--out", str(tmp_path)])) == tmp_path
