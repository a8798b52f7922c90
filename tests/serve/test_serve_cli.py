"""The command line: arguments, errors before serving, and ``python -m ember.serve`` end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_model, needs_web_stack, save_version
from ember.serve import build_parser, main
from ember.serve.cli import config_from_args, parse_size

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_parser_defaults_and_options():
    args = build_parser().parse_args(["models/", "--model-name", "digits", "--port", "9000", "--no-batching",
                                      "--max-body-bytes", "2M", "--keep-versions", "0"])
    config = config_from_args(args)
    assert (config.model_name, config.batching, config.max_body_bytes, config.keep_versions) == \
        ("digits", False, 2 * 1024 ** 2, 0)
    assert args.port == 9000 and args.host == "127.0.0.1"
    defaults = config_from_args(build_parser().parse_args(["/srv/models/digits"]))
    assert defaults.model_name == "digits" and defaults.batching and defaults.max_batch_size == 32


def test_parse_size():
    assert [parse_size(s) for s in ("100", "4k", "16M", "16MiB", "1G")] == [100, 4096, 16 * 2 ** 20, 16 * 2 ** 20,
                                                                            2 ** 30]


@pytest.mark.parametrize("argv", [["x", "--max-batch-size", "0"], ["x", "--poll-seconds", "-1"],
                                  ["x", "--max-body-bytes", "lots"], []])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--batch-timeout-micros" in capsys.readouterr().out


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    needs_web_stack()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_bad_import_is_a_clear_error(tmp_path, capsys):
    needs_web_stack()
    assert main([str(tmp_path), "--import", "no_such_module_for_ember_tests"]) == 2
    assert "--import no_such_module_for_ember_tests" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_dash_m_serves_and_stops_on_sigint(tmp_path):
    needs_web_stack()
    import httpx

    save_version(tmp_path / "digits", 3, make_model(0))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "ember.serve", str(tmp_path), "--model-name", "digits",
                             "--port", str(port), "--poll-seconds", "0.5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        r = httpx.post(url + "/v1/models/digits:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 200 and len(r.json()["predictions"][0]) == 3
        assert httpx.get(url + "/v1/models/digits").json()["model_version_status"][0]["version"] == "3"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(a["path"] == "/v1/models/digits:predict" and a["status"] == 200 for a in access)
    assert "model digits version 3 AVAILABLE" in stderr
