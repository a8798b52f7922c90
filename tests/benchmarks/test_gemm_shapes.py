"""benchmarks/gemm_shapes.py: the workloads' products, and one tiny run of the probe."""

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import gemm_shapes, workloads  # noqa: E402


def test_forward_products_are_the_products_each_workload_runs():
    gpt = {label: shape for label, *shape in workloads.forward_products(workloads.spec("gpt"))}
    # attention per (sample, head): 32 * 4 products of 64 x 32 by 32 x 64, then 64 x 64 by 64 x 32
    assert gpt["scores q@k^T"] == [128, 64, 32, 64] and gpt["attn@v"] == [128, 64, 64, 32]
    lstm = {label: shape for label, *shape in workloads.forward_products(workloads.spec("lstm"))}
    assert lstm["recurrent"] == [64, 32, 256, 1024]  # one (batch, hidden) x (hidden, 4 hidden) per step
    cnn = {label: shape for label, *shape in workloads.forward_products(workloads.spec("cnn"))}
    assert cnn["conv2"] == [1, 64 * 14 * 14, 32 * 9, 64]  # im2col over the batch's pixels
    # the FLOP count the reports have always used: 2 blocks of (qkv, scores, attn@v, out, mlp up
    # and down) and the head, times 3 for the gradients
    rows = 32 * 64
    block = rows * 128 * 384 + 2 * rows * 64 * 128 + rows * 128 * 128 + 2 * rows * 128 * 512
    assert workloads.flops_per_step(workloads.spec("gpt")) == 3 * 2 * (2 * block + rows * 128 * 96)


def test_each_shape_is_timed_once_per_workload():
    rows = gemm_shapes.distinct_products(["gpt"])
    assert len(rows) == 7  # 13 products, 6 of them the second block's repeats
    assert len({tuple(r["shape"]) for r in rows}) == len(rows)


def test_the_probe_times_numpy_and_torch_and_renders_a_table():
    res = gemm_shapes.main(["--workloads", "infer1", "--windows", "1", "--seconds", "0.01", "--no-write"])
    assert len(res["rows"]) == 3
    for row in res["rows"]:
        for library in ("numpy", "torch"):
            assert math.isfinite(row[library]["median"]) and row[library]["median"] > 0
    assert res["torch_blas"] and res["blas"]  # each timer names the BLAS it ran
    text = gemm_shapes.markdown(res)
    assert "| infer1 | dense2 | 1 x 1 x 512 x 512 |" in text
