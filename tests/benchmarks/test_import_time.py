import os

from benchmarks import import_time


def test_first_start_writes_the_bytecode_cache_a_timed_start_then_reads(tmp_path, monkeypatch):
    # an editable-style package: source only, as ember's tree is in a checkout
    (tmp_path / "fresh_pkg").mkdir()
    (tmp_path / "fresh_pkg" / "__init__.py").write_text("VALUE = 1\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    res = import_time.import_seconds("fresh_pkg", runs=1, env=env)
    assert "median_s" in res, res
    assert list((tmp_path / "fresh_pkg" / "__pycache__").glob("__init__.*.pyc"))
    # the caller's environment is left as it was: the timed starts ran with it
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_run_records_whether_bytecode_writing_was_off(monkeypatch):
    monkeypatch.setattr(import_time, "PACKAGES", {})
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert import_time.run(runs=1)["dont_write_bytecode_set"] is True
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    assert import_time.run(runs=1)["dont_write_bytecode_set"] is False


def test_a_failing_import_is_reported_not_timed():
    res = import_time.import_seconds("no_such_module_here_xyz", runs=1)
    assert "error" in res and "No module named" in res["error"]
