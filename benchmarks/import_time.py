"""``import`` time and installed size of ember and its peers.

Import time: wall seconds of ``python -c "import X"`` in a fresh subprocess (the benchmark's
thread environment), after one untimed start that warms the file cache ("cold-ish"); median of
5 (min and max kept), with the interpreter's bare start (``python -c pass``) reported alongside.
The untimed start runs without ``PYTHONDONTWRITEBYTECODE``, so each package's bytecode cache
exists when the timed starts read it, as after any install and first import.
Keras is imported with its default TensorFlow backend (its size closure does not include the
backend: Keras does not declare one). Target: ``import ember`` under 0.2 s.

Installed size: the files each distribution installed (its RECORD; for an editable install the
package's source tree without ``__pycache__``) and the same summed over its dependency closure
(``Requires-Dist`` without extras, environment markers evaluated, followed recursively through
``importlib.metadata``).

    python -m benchmarks.import_time                 # prints the table
    python -m benchmarks.import_time --write         # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

# module to import -> distribution(s) whose closure is its installed size
PACKAGES = {"ember": "ember", "torch": "torch", "tensorflow": "tensorflow-cpu", "keras": "keras", "jax": "jax",
            "numpy": "numpy"}
TARGET_SECONDS = 0.2
BYTECODE_VAR = "PYTHONDONTWRITEBYTECODE"


def import_seconds(module: str | None, runs: int = 5, env=None) -> dict:
    code = "pass" if module is None else f"import {module}"
    cmd = [sys.executable, "-c", code]
    # untimed: warms the file cache, and writes the bytecode cache where it is missing, as any
    # first import does unless PYTHONDONTWRITEBYTECODE is set (these machines set it). With it
    # set, an editable install (ember's, here) compiles its source again at every start, while
    # pip-installed packages read the .pyc files pip wrote: the timed starts would measure that
    # difference, not the packages
    first = {k: v for k, v in (os.environ if env is None else env).items() if k != BYTECODE_VAR}
    subprocess.run(cmd, env=first, capture_output=True, timeout=300)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - t0)
        if proc.returncode:
            return {"error": proc.stderr.strip()[-500:]}
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": runs}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist(name: str):
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def _requirements(dist) -> list[str]:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging is everywhere pip is
        Requirement = None
    out = []
    for req in dist.requires or []:
        if Requirement is not None:
            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            out.append(r.name)
        elif "extra ==" not in req:
            out.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return out


def _editable_root(dist) -> Path | None:
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        return None
    if not info.get("dir_info", {}).get("editable"):
        return None
    top = (dist.read_text("top_level.txt") or dist.metadata["Name"]).split()
    for name in top:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0])
    return None


def dist_size(dist) -> int:
    root = _editable_root(dist)
    if root is not None:
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    total = 0
    for f in dist.files or []:
        try:
            total += Path(dist.locate_file(f)).stat().st_size
        except OSError:
            pass
    return total


def closure(name: str) -> dict:
    """Own size and the size of the dependency closure of distribution ``name``."""
    root = _dist(name)
    if root is None:
        return {"installed": False}
    seen, todo = {}, [root]
    while todo:
        d = todo.pop()
        key = _norm(d.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist_size(d)
        for req in _requirements(d):
            dep = _dist(req)
            if dep is not None and _norm(dep.metadata["Name"]) not in seen:
                todo.append(dep)
    own = seen[_norm(root.metadata["Name"])]
    return {"installed": True, "version": root.version, "own_bytes": own, "closure_bytes": sum(seen.values()),
            "closure": dict(sorted(seen.items(), key=lambda kv: -kv[1]))}


def run(runs: int = 5, threads: int = 2, unset_openblas: bool = False) -> dict:
    from .machine import thread_env

    env = thread_env(threads, unset_openblas)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    out = {"python_bare": import_seconds(None, runs, env), "packages": {}, "target_seconds": TARGET_SECONDS,
           "dont_write_bytecode_set": bool(env.get(BYTECODE_VAR))}
    for module, dist in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            out["packages"][module] = {"installed": False}
            continue
        d = dist if _dist(dist) is not None else module
        out["packages"][module] = {"dist": d, "import": import_seconds(module, runs, env), **closure(d)}
    return out


def table(res: dict) -> list[str]:
    lines = ["| package | version | import s (median, min–max) | own size MB | with dependencies MB | "
             "dependencies (largest, MB) |", "|---|---|---:|---:|---:|---|"]
    bare = res["python_bare"]
    lines.append(f"| (python -c pass) | | {bare['median_s']:.3f} ({bare['min_s']:.3f}–{bare['max_s']:.3f}) | | | |")
    for module, r in res["packages"].items():
        if not r.get("installed"):
            lines.append(f"| {module} | not installed | | | | |")
            continue
        imp = r["import"]
        t = (f"{imp['median_s']:.3f} ({imp['min_s']:.3f}–{imp['max_s']:.3f})" if "median_s" in imp
             else f"error: {imp.get('error', '')[:60]}")
        deps = sorted(((n, b) for n, b in r["closure"].items() if n != _norm(r["dist"])), key=lambda kv: -kv[1])
        biggest = ", ".join(f"{n} {b / 1e6:.0f}" for n, b in deps[:3])
        lines.append(f"| {module} ({r['dist']}) | {r['version']} | {t} | {r['own_bytes'] / 1e6:.1f} | "
                     f"{r['closure_bytes'] / 1e6:.1f} | {len(deps)}{f' (largest: {biggest})' if deps else ''} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="timed starts per package (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--unset-openblas-env", action="store_true")
    p.add_argument("--write", action="store_true", help="update the import block of benchmarks/RESULTS.md and "
                                                        "write benchmarks/results/import_time.json")
    a = p.parse_args(argv)
    from . import report
    from .machine import info, loadavg, openblas_env

    start = loadavg()
    res = run(a.runs, a.threads, a.unset_openblas_env)
    res.update(machine=info(), loadavg={"start": start, "end": loadavg()}, openblas_env=openblas_env(
        a.unset_openblas_env))
    print("\n".join(table(res)))
    if a.write:
        report.write_import(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
