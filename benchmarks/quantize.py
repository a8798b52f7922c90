"""Int8 dynamic quantization on real data: float32 vs int8 digits models.

Trains a digits MLP (64-256-256-10) and CNN (two 3x3 convs, max-pool, 128-unit dense) on
scikit-learn's 1,797 handwritten digits (``ember.data.datasets.digits``, stratified 80/20
split), quantizes each with ``em.quantize.dynamic``, and reports for float32 and int8: the
``em.save`` file size, the test accuracy, and the inference speed in ember (eager, no_grad) and in
onnxruntime (the ``em.onnx.export`` file): batch-1 p50 latency and batch-256 throughput, each
the median over several timing windows, at 2 threads. Writes benchmarks/results/quantize.json
and replaces the ``<!-- quantize:begin -->`` ... ``<!-- quantize:end -->`` block of
benchmarks/RESULTS.md (appended when missing; the rest of the file is left alone).

    python benchmarks/quantize.py              # ~1-2 minutes
    python benchmarks/quantize.py --no-write --windows 3
    python benchmarks/quantize.py --render     # rewrite the RESULTS.md block from the JSON

The model builders and ``train`` are also used by tests/quantize.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # before NumPy loads BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "quantize.json"
BEGIN, END = "<!-- quantize:begin -->", "<!-- quantize:end -->"


# ---- models (shared with tests/quantize) ------------------------------------------------------

def build_mlp():
    """64 -> 256 -> 256 -> 10 on flattened 8x8 digits (85k weights)."""
    from ember import Sequential, layers

    return Sequential([layers.Input(shape=(64,)), layers.Dense(256, activation="relu"),
                       layers.Dense(256, activation="relu"), layers.Dense(10, activation="softmax")],
                      name="digits_mlp")


def build_cnn():
    """3x3 conv (16 filters), 2x2 max-pool, 3x3 conv (32), 128-unit dense: 72k weights on (1, 8, 8) digits."""
    from ember import Sequential, layers

    return Sequential([layers.Input(shape=(1, 8, 8)), layers.Conv2D(16, 3, padding="same", activation="relu"),
                       layers.MaxPooling2D(2), layers.Conv2D(32, 3, padding="same", activation="relu"),
                       layers.Flatten(), layers.Dense(128, activation="relu"),
                       layers.Dense(10, activation="softmax")], name="digits_cnn")


EPOCHS = {"mlp": 12, "cnn": 10}
BUILDERS = {"mlp": build_mlp, "cnn": build_cnn}


def digits_split(kind):
    """((x_train, y_train), (x_test, y_test)) in the layout the model ``kind`` takes."""
    from ember.data.datasets import digits

    return digits(test_size=0.2, seed=0, flatten=(kind == "mlp"))


def train(kind, epochs=None, seed=0):
    """A trained float32 model of ``kind`` ('mlp' or 'cnn') and its data split."""
    import ember as em

    data = digits_split(kind)
    (x_train, y_train), _ = data
    em.manual_seed(seed)
    model = BUILDERS[kind]().build((None,) + x_train.shape[1:])
    model.compile(optimizer=em.optim.Adam(model.parameters(), lr=2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs or EPOCHS[kind], batch_size=32, verbose=0)
    return model, data


def accuracy(model, x, y):
    return float((model.predict(x, batch_size=256).argmax(-1) == y).mean())


# ---- timing ---------------------------------------------------------------------------------

def _windows(fn, windows, seconds):
    """Per window: the call times (s) of ``fn`` run back to back for ``seconds``."""
    fn()
    out = []
    for _ in range(windows):
        times, end = [], time.perf_counter() + seconds
        while True:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            if t > end:
                break
        out.append(times)
    return out


def speed(runners, x_test, windows, seconds):
    """Per runner: batch-1 p50 latency (ms) and batch-256 throughput (images/s), medians over the
    windows. The runners' windows alternate, so load from other processes hits all of them alike."""
    one = x_test[:1]
    batch = np.concatenate([x_test] * -(-256 // len(x_test)))[:256]
    lat = {k: [] for k in runners}
    thr = {k: [] for k in runners}
    for _ in range(windows):
        for k, run in runners.items():
            lat[k].append(float(np.median(_windows(lambda r=run: r(one), 1, seconds)[0])) * 1e3)
            thr[k].append(256 / float(np.median(_windows(lambda r=run: r(batch), 1, seconds)[0])))
    return {k: {"batch1_p50_ms": round(float(np.median(lat[k])), 4),
                "batch1_p50_ms_windows": [round(v, 4) for v in lat[k]],
                "batch256_images_per_s": round(float(np.median(thr[k])), 1),
                "batch256_images_per_s_windows": [round(v, 1) for v in thr[k]]} for k in runners}


def ember_runner(model):
    import ember as em

    def run(x):
        with em.no_grad():
            return model(em.Tensor._make(x)).data
    return run


def ort_runner(path, threads=2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


# ---- the benchmark ----------------------------------------------------------------------------

def measure(kind, tmp, windows, seconds):
    import ember as em

    t0 = time.perf_counter()
    model, ((_, _), (x_test, y_test)) = train(kind)
    train_s = time.perf_counter() - t0
    qmodel = em.quantize.dynamic(model)
    row = {"model": kind, "epochs": EPOCHS[kind], "train_seconds": round(train_s, 1), "test_images": len(x_test)}
    outputs, runners = {}, {}
    for label, m in (("float32", model), ("int8", qmodel)):
        path = Path(tmp) / f"{kind}-{label}.ember"
        em.save(m, path)
        reloaded = em.load(path)
        onnx_path = Path(tmp) / f"{kind}-{label}.onnx"
        em.onnx.export(m, em.Tensor._make(x_test[:2]), onnx_path)
        runners[("ember", label)], runners[("onnxruntime", label)] = ember_runner(m), ort_runner(onnx_path)
        outputs[label] = m.predict(x_test, batch_size=256)
        row[label] = {
            "file_bytes": path.stat().st_size, "onnx_bytes": onnx_path.stat().st_size,
            "test_accuracy": accuracy(m, x_test, y_test),
            "reload_identical": bool(np.array_equal(reloaded.predict(x_test, batch_size=256), outputs[label])),
            "onnxruntime_accuracy": float((runners[("onnxruntime", label)](x_test).argmax(-1) == y_test).mean()),
        }
    for (engine, label), result in speed(runners, x_test, windows, seconds).items():
        row[label][engine] = result
    for label in ("float32", "int8"):
        print(f"{kind} {label}: {json.dumps(row[label])}", flush=True)
    row["size_ratio"] = round(row["float32"]["file_bytes"] / row["int8"]["file_bytes"], 2)
    row["onnx_size_ratio"] = round(row["float32"]["onnx_bytes"] / row["int8"]["onnx_bytes"], 2)
    row["accuracy_drop_points"] = round(100 * (row["float32"]["test_accuracy"] - row["int8"]["test_accuracy"]), 2)
    row["max_abs_prob_diff"] = float(np.abs(outputs["float32"] - outputs["int8"]).max())
    return row


def _throughput(result):
    return f"{result['batch256_images_per_s']:.0f} (best {max(result['batch256_images_per_s_windows']):.0f})"


def markdown(report) -> str:
    m = report["machine"]
    lines = [BEGIN, "## Int8 dynamic quantization", "",
             f"`python benchmarks/quantize.py` ({report['date']}; {m['cpu']}, {m['cores']} cores, {m['threads']} "
             f"threads; Python {m['python']}, NumPy {m['numpy']}, onnxruntime {m['onnxruntime']}). Digits models "
             f"trained on scikit-learn's 1,797 handwritten digits (stratified 80/20 split, "
             f"{report['models'][0]['test_images']} test images), "
             "quantized with `em.quantize.dynamic` (int8 per-channel weights, uint8 per-batch activations). "
             f"Speed: median over {report['settings']['windows']} windows of {report['settings']['seconds']} s "
             "each; batch 1 is the p50 latency of one call, batch 256 the images/s of back-to-back calls. "
             "Caveat: on these 2-CPU virtual machines single windows vary by up to 2x from run to run (and more "
             "when other jobs share the CPUs), which is why the best window is shown next to the median; compare "
             "float32 and int8 on the same row pair (their windows alternate).", "",
             "| model | weights | file bytes | size ratio | test accuracy | ember batch-1 p50 ms | "
             "ember batch-256 img/s | onnxruntime batch-1 p50 ms | onnxruntime batch-256 img/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["models"]:
        for label in ("float32", "int8"):
            r = row[label]
            ratio = f"{row['size_ratio']}x" if label == "int8" else "1x"
            lines.append(f"| {row['model']} | {label} | {r['file_bytes']} | {ratio} | "
                         f"{100 * r['test_accuracy']:.2f}% | "
                         f"{r['ember']['batch1_p50_ms']} | {_throughput(r['ember'])} | "
                         f"{r['onnxruntime']['batch1_p50_ms']} | {_throughput(r['onnxruntime'])} |")
    lines += ["", "In ember (NumPy) int8 is slower than float32: NumPy has no int8 GEMM, so each quantized layer "
              "quantizes its input, widens the int8 values to float32 for BLAS (exact, see docs/quantization.md) and "
              "rescales; that is extra work on top of the same float GEMM. The win in ember is the file size (and "
              "the same int8 file runs in onnxruntime: there the int8 MLP is faster than float32 at batch 256, "
              "while the int8 CNN is slower, its ConvInteger layers being slower than onnxruntime's float Conv "
              "on these small images). "
              "Raw numbers: `benchmarks/results/quantize.json`.", END]
    return "\n".join(lines)


def write_results(report):
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import save_results

    save_results("quantize", report, markdown(report), RESULTS_JSON, RESULTS_MD)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=5, help="timing windows per measurement (default 5)")
    p.add_argument("--seconds", type=float, default=0.3, help="seconds per timing window (default 0.3)")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--no-write", action="store_true", help="print only; do not write the results files")
    p.add_argument("--render", action="store_true", help="only rewrite the RESULTS.md block from the JSON results")
    args = p.parse_args(argv)
    if args.render:
        return write_results(json.loads(RESULTS_JSON.read_text()))
    if args.windows > 20 or args.seconds > 5:
        p.error("keep it bounded: --windows <= 20, --seconds <= 5")
    sys.path.insert(0, str(ROOT / "src"))
    import onnxruntime

    sys.path.insert(0, str(ROOT))
    from benchmarks import machine

    with tempfile.TemporaryDirectory(prefix="ember-quantize-") as tmp:
        rows = [measure(kind, tmp, args.windows, args.seconds) for kind in args.models.split(",")]
    info = machine.info()
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": info["cpu"], "cores": info["cores"], "threads": int(os.environ["OMP_NUM_THREADS"]),
                          "python": platform.python_version(), "numpy": np.__version__,
                          "onnxruntime": onnxruntime.__version__, "os": info["os"]},
              "settings": {"windows": args.windows, "seconds": args.seconds, "epochs": EPOCHS},
              "models": rows}
    if not args.no_write:
        write_results(report)
        print(f"wrote {RESULTS_JSON.relative_to(ROOT)} and the quantization block of {RESULTS_MD.relative_to(ROOT)}")
    return report


if __name__ == "__main__":
    main()
