"""The ``ember`` command, run for real: the venv's console script and ``python -m ember`` in
subprocesses, on small models saved here."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember as em
import ember.nn as nn
from ember import layers

SRC = Path(em.__file__).resolve().parents[1]  # the ember under test (a checkout's src/)
SCRIPT = Path(sys.executable).parent / "ember"
COMMANDS = ("demo", "summary", "export", "serve", "bench")


def _env(pythonpath=SRC):
    return {**os.environ, "PYTHONPATH": str(pythonpath)}


def run(*args, via="script", cwd=None, env=None, timeout=120):
    """``ember ARGS`` as a subprocess; via="module" runs ``python -m ember ARGS``."""
    cmd = [str(SCRIPT)] if via == "script" else [sys.executable, "-m", "ember"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=env or _env(), timeout=timeout)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A Keras-style CNN with an Input layer, a plain nn.Sequential (no recorded input shape) and
    files that are not model files."""
    d = tmp_path_factory.mktemp("models")
    em.manual_seed(0)
    cnn = em.Sequential([layers.Input(shape=(1, 8, 8)), layers.Conv2D(4, 3, activation="relu"),
                         layers.Flatten(), layers.Dense(10, activation="softmax")], name="tiny_cnn")
    cnn.save(d / "cnn.ember")
    mlp = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3))
    em.save(mlp, d / "mlp.ember")
    cnn.save_weights(d / "weights.ember")
    (d / "junk.ember").write_bytes(b"\x00not a safetensors file at all")
    return {"dir": d, "cnn": cnn, "mlp": mlp}


@pytest.mark.skipif(not SCRIPT.exists(), reason="the ember console script is not installed in this venv")
@pytest.mark.parametrize("via", ["script", "module"])
def test_top_level_help_lists_every_command_with_examples(via):
    r = run("--help", via=via)
    assert r.returncode == 0, r.stderr
    listed = dict(re.findall(r"^    (\w+)\s+(\S.*)$", r.stdout, re.MULTILINE))
    assert set(listed) == set(COMMANDS), r.stdout
    assert "examples:" in r.stdout
    for command in COMMANDS:
        assert re.search(rf"^  ember {command}\b", r.stdout, re.MULTILINE), f"no example of {command}"
    assert run(via=via).stdout == r.stdout  # no command: the same help


@pytest.mark.parametrize("command", ["demo", "summary", "export"])
def test_subcommand_help_has_examples(command):
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: ember {command}")
    assert re.search(rf"examples?:\n  ember {command}", r.stdout), r.stdout


def test_summary_prints_the_layer_table(models):
    r = run("summary", models["dir"] / "cnn.ember", via="module")
    assert r.returncode == 0, r.stderr
    total = sum(p.numel() for p in models["cnn"].parameters())
    assert 'Model: "tiny_cnn"' in r.stdout
    assert re.search(r"conv2d \(Conv2D\)\s+\(None, 4, 6, 6\)\s+40\b", r.stdout), r.stdout
    assert f"Total params: {total:,}" in r.stdout


def test_summary_of_a_plain_module_prints_it_and_its_parameter_count(models):
    r = run("summary", models["dir"] / "mlp.ember")
    assert r.returncode == 0, r.stderr
    assert "Linear(in_features=64, out_features=16" in r.stdout
    assert f"Total params: {64 * 16 + 16 + 16 * 3 + 3:,}" in r.stdout


def _onnx_outputs(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_export_onnx_takes_the_input_shape_from_the_model_file(models, tmp_path):
    out = tmp_path / "cnn.onnx"
    r = run("export", models["dir"] / "cnn.ember", "--format", "onnx", "-o", out, "--opset", "18")
    assert r.returncode == 0, r.stderr
    assert "(batch, 1, 8, 8)" in r.stdout
    import onnx

    assert onnx.load(str(out)).opset_import[0].version == 18
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)  # another batch size
    np.testing.assert_allclose(_onnx_outputs(out, x), models["cnn"].predict(x), rtol=1e-5, atol=1e-6)


def test_export_default_output_path_is_next_to_the_model(models, tmp_path):
    shutil.copy(models["dir"] / "cnn.ember", tmp_path / "digits.ember")
    r = run("export", "digits.ember", cwd=tmp_path, via="module")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "digits.onnx").is_file()


def test_export_of_a_model_without_input_shape_needs_and_uses_input_shape(models, tmp_path):
    path = models["dir"] / "mlp.ember"
    r = run("export", path, "--format", "onnx", "-o", tmp_path / "x.onnx")
    assert r.returncode == 1
    assert "--input-shape" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.onnx").exists()
    out = tmp_path / "mlp.onnx"
    r = run("export", path, "--format", "onnx", "--input-shape", "64", "-o", out, "--static-batch", "3")
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    with em.no_grad():
        expected = models["mlp"](em.tensor(x)).numpy()
    np.testing.assert_allclose(_onnx_outputs(out, x), expected, rtol=1e-5, atol=1e-6)


def _one_line_error(r, *fragments):
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["summary", "export"])
def test_errors_are_one_line_without_traceback(models, tmp_path, command):
    d = models["dir"]
    _one_line_error(run(command, tmp_path / "missing.ember"), f"ember {command}:", "no such file", "missing.ember")
    _one_line_error(run(command, d / "junk.ember"), "not a usable ember model file", "junk.ember")
    _one_line_error(run(command, d / "weights.ember"), "ember-weights-v1")
    _one_line_error(run(command, d), "is a directory")


def test_export_rejects_unknown_format_and_bad_shapes(models, tmp_path):
    cnn = models["dir"] / "cnn.ember"
    _one_line_error(run("export", cnn, "--format", "tflite", "-o", tmp_path / "m.tflite"),
                    "unknown format 'tflite'", "onnx")
    _one_line_error(run("export", models["dir"] / "mlp.ember", "--input-shape", "3,4", "-o", tmp_path / "m.onnx"),
                    "(batch, 3, 4)", "64")
    _one_line_error(run("export", cnn, "--opset", "12", "-o", tmp_path / "m.onnx"), "opset", "12")
    r = run("export", cnn, "--input-shape", "abc")
    assert r.returncode == 2 and "not a shape: 'abc'" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def _options(help_text):
    return set(re.findall(r"^\s+(--[a-z][a-z-]*)", help_text, re.MULTILINE))


def test_serve_help_shows_every_option_of_the_server_parser():
    r = run("serve", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ember serve") and "MODEL_BASE_PATH" in r.stdout
    assert "ember serve models/ --model-name digits" in r.stdout
    standalone = subprocess.run([sys.executable, "-m", "ember.serve", "--help"], capture_output=True, text=True,
                                env=_env(), timeout=60)
    assert _options(r.stdout) == _options(standalone.stdout)
    assert {"--model-name", "--port", "--max-batch-size", "--keep-versions", "--import"} <= _options(r.stdout)


def test_serve_reports_a_missing_model_directory(tmp_path):
    r = run("serve", tmp_path / "nothing", "--model-name", "digits", "--port", "0")
    assert r.returncode == 2
    assert "is not a directory" in r.stderr and "Traceback" not in r.stderr


def test_bench_help_is_the_harness_help():
    r = run("bench", "--help", via="module")
    assert r.returncode == 0, r.stderr
    for option in ("--smoke", "--workloads", "--frameworks", "--repeat", "--threads"):
        assert option in r.stdout


def test_bench_smoke_run(tmp_path):
    r = run("bench", "--smoke", "--workloads", "mlp", "--frameworks", "ember-eager", "--out", "res", "--no-chart",
            cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "res" / "bench.json").read_text())
    rec = results["workloads"]["mlp"]["results"]["ember-eager"]
    assert rec["status"] == "ok", rec
    assert rec["value"] > 0
    assert results["settings"]["smoke"] is True


def test_bench_outside_a_checkout_says_where_to_get_the_harness(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SRC / "ember", site / "ember", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    r = run("bench", "--smoke", via="module", cwd=work, env=_env(site))
    line = _one_line_error(r, "ember bench:", "benchmarks/run.py", "source repository")
    assert "pip install -e" in line


def test_unknown_command_is_a_usage_error():
    r = run("frobnicate")
    assert r.returncode == 2
    assert "invalid choice: 'frobnicate'" in r.stderr and "Traceback" not in r.stderr
