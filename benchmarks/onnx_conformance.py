"""Run the ONNX project's backend test-suite (shipped in the ``onnx`` package) on ember's
ONNX backend and report pass rates per suite and per operator.

    python -m benchmarks.onnx_conformance [--json benchmarks/results/onnx_conformance.json]
        [--markdown docs/onnx_conformance.md] [--filter REGEX]

Suites: node (generated single-operator tests), real (nine CNN architectures, the "light"
models that ship with onnx), simple, pytorch-converted, pytorch-operator.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import sys
import time
import unittest


def _op_types(item):
    protos = item.proto if isinstance(item.proto, list) else [item.proto]
    ops = set()
    for p in protos:
        if p is not None and hasattr(p, "graph"):
            ops.update(n.op_type for n in p.graph.node)
    return sorted(ops)


def run(filter_pattern=None, verbose=False):
    import numpy
    import onnx.backend.test

    import ember
    from benchmarks import machine
    from ember.onnx import OPS
    from ember.onnx.backend import EmberBackend

    backend_test = onnx.backend.test.BackendTest(EmberBackend, __name__)
    results = []
    pattern = re.compile(filter_pattern) if filter_pattern else None
    items = backend_test._test_items  # category -> name -> TestItem (func, proto)
    classes = backend_test.test_cases  # category -> unittest.TestCase class with a method per test
    for category, tests in items.items():
        case_cls = classes.get(f"OnnxBackend{category}Test")  # e.g. OnnxBackendNodeModelTest
        for name, item in tests.items():
            if not name.endswith("_cpu") or (pattern and not pattern.search(name)) or case_cls is None:
                continue
            suite = unittest.TestSuite()
            suite.addTest(case_cls(name))
            t0 = time.perf_counter()
            outcome = unittest.TestResult()
            suite.run(outcome)
            status = "pass"
            message = ""
            if outcome.skipped:
                status, message = "skip", outcome.skipped[0][1]
            elif outcome.errors or outcome.failures:
                status = "fail"
                message = (outcome.errors or outcome.failures)[0][1].strip().splitlines()[-1][:300]
            ops = _op_types(item) if category == "NodeModel" else []
            results.append({"suite": category, "test": name, "status": status, "ops": ops,
                            "seconds": round(time.perf_counter() - t0, 3), "message": message})
            if verbose:
                print(f"{status:4s} {category:16s} {name} {message[:120]}")
    return {"ember_version": ember.__version__, "onnx_version": onnx.__version__,
            "date": datetime.date.today().isoformat(),
            "machine": f"{machine.cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
                       f"Python {platform.python_version()}, NumPy {numpy.__version__}",
            "supported_ops": sorted(OPS), "results": results}


_EXOTIC_TYPES = re.compile(r"bfloat16|float8|float4|int4|uint4|int2|uint2|string|STRING|BFLOAT16|FLOAT8|FLOAT4|"
                           r"INT4|UINT4|INT2|UINT2|e4m3|e5m2|complex")


def summarize(report):
    """Per suite, and per operator for the node tests whose operators ember all implements
    (a test that also needs an unsupported operator, or a data type NumPy has no native
    form of, is counted separately, not as a failure of the operators it shares)."""
    by_suite = collections.defaultdict(collections.Counter)
    by_op = collections.defaultdict(collections.Counter)
    supported = set(report["supported_ops"])
    needs_unsupported = collections.Counter()
    exotic = 0
    for r in report["results"]:
        by_suite[r["suite"]][r["status"]] += 1
        if r["suite"] != "NodeModel":
            continue
        missing = [op for op in r["ops"] if op not in supported]
        if missing:
            for op in missing:
                needs_unsupported[op] += 1
            continue
        if r["status"] == "fail" and _EXOTIC_TYPES.search(r["test"] + r["message"]):
            exotic += 1
            continue
        for op in r["ops"]:
            by_op[op][r["status"]] += 1
    lines = [f"ONNX backend test-suite on ember {report['ember_version']} (onnx {report['onnx_version']}, "
             f"{report['date']}; {report['machine']})", "",
             "| suite | passed | failed | skipped | pass rate |", "|---|---|---|---|---|"]
    for suite, c in sorted(by_suite.items()):
        total = c["pass"] + c["fail"]
        lines.append(f"| {suite} | {c['pass']} | {c['fail']} | {c['skip']} | "
                     f"{100.0 * c['pass'] / total if total else 0:.1f}% |")
    claimed = {op: c for op, c in by_op.items() if op in supported}
    node_tests = [r for r in report["results"] if r["suite"] == "NodeModel" and
                  all(op in supported for op in r["ops"])]
    passed = sum(r["status"] == "pass" for r in node_tests)
    lines += ["", f"Node tests whose operators ember all implements: {passed}/{len(node_tests) - exotic} pass "
              f"({100.0 * passed / max(len(node_tests) - exotic, 1):.1f}%); {exotic} more use data types NumPy has no "
              "native form of (bfloat16, float8, int4, strings...) and are not counted.", "",
              "| operator | passed | failed | pass rate |", "|---|---|---|---|"]
    for op, c in sorted(claimed.items()):
        t = c["pass"] + c["fail"]
        lines.append(f"| {op} | {c['pass']} | {c['fail']} | {100.0 * c['pass'] / max(t, 1):.0f}% |")
    lines += ["", f"Operators that node tests use and ember does not implement ({len(needs_unsupported)}; number of "
              "tests): " + ", ".join(f"{op} ({k})" for op, k in sorted(needs_unsupported.items()))]
    return "\n".join(lines)


_NOTES = """
## What ember refuses, and what it cannot match

- **Dropout in training mode** (`training_mode` true). The specification leaves the random generator
  open; the expected masks of the `test_training_dropout*` tests come from the generator of ONNX's
  reference implementation, NumPy's MT19937: `RandomState(seed).uniform(0, 1, shape) >= ratio`. ember
  draws a seeded node's mask the same way, so a node with a `seed` attribute gives the same mask on
  every run and the same one as `onnx.reference` (onnxruntime has a generator of its own, so its masks
  differ from both). Without a `seed`, every run draws a fresh mask from ember's default generator.
  A ratio outside [0, 1) raises `UnsupportedOp`.
- **Data types NumPy has no native form of** (bfloat16, float8, float4, int4, int2, strings): inputs
  or initializers of these types are refused when converted, and Cast or QuantizeLinear to them raises
  `UnsupportedOp` naming the type. These tests are counted apart, above.
- **DynamicQuantizeLinear of an all-zero input** (a range of 0, no node test): the scale is 1, as
  onnxruntime gives; `onnx.reference` gives 1/255. The quantized values (all zero-point) agree.
- **Sequences, optionals and maps** as graph inputs or outputs (ember values are tensors): refused at
  load with an `UnsupportedOp` naming the input, which is why Identity's `test_identity_sequence` and
  `test_identity_opt` fail.
- **Operators ember does not implement** (the last list above): refused at load with an
  `UnsupportedOp` naming the operator, never run with a wrong result.
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="benchmarks/results/onnx_conformance.json")
    p.add_argument("--markdown", default="docs/onnx_conformance.md")
    p.add_argument("--filter", default=None, help="only tests whose name matches this regex")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    report = run(args.filter, args.verbose)
    text = summarize(report)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        os.makedirs(os.path.dirname(args.markdown), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write("# ONNX conformance\n\nMeasured with `python -m benchmarks.onnx_conformance` (the ONNX "
                    "project's backend test-suite from the installed `onnx` package, run on "
                    "`ember.onnx.backend`).\n\n" + text + "\n" + _NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
