"""The reference workloads of WORKLOADS.md: sizes, synthetic data and analytic FLOP counts.

Every framework builds its models from these specs, so the sizes live in one place. ``smoke``
sizes are tiny versions of the same models for the smoke test (``--smoke``).

FLOPs count the multiply-adds of matmuls and convolutions (2 per multiply-add): the forward
pass, plus for training the weight gradients of every layer and the input gradients of every
layer except the one reading the data (token ids and images need no gradient). Elementwise
ops, softmax, normalisation, pooling and the optimizer update are not counted, so achieved
GFLOP/s is a lower bound of the arithmetic actually done. Attention scores are counted for the
full T x T square (what every framework computes), not the causal half.
"""

from __future__ import annotations

import numpy as np

WORKLOADS = ("mlp", "cnn", "gpt", "lstm", "infer1")

# WORKLOADS.md, exactly.
FULL = {
    "mlp": dict(kind="train", batch=128, in_dim=784, hidden=512, classes=10, optimizer="adam", lr=1e-3,
                unit="samples/s"),
    "cnn": dict(kind="train", batch=64, image=28, c1=32, c2=64, dense=128, classes=10, optimizer="adam", lr=1e-3,
                unit="samples/s"),
    "gpt": dict(kind="train", batch=32, vocab=96, context=64, d_model=128, heads=4, layers=2, mlp_ratio=4,
                optimizer="adamw", lr=3e-4, weight_decay=0.01, unit="tokens/s"),
    "lstm": dict(kind="train", batch=32, vocab=96, embed=64, hidden=256, seq=64, optimizer="adam", lr=1e-3,
                 unit="tokens/s"),
    "infer1": dict(kind="infer", batch=1, in_dim=784, hidden=512, classes=10, unit="us"),
}

# The same models at toy sizes: the smoke test runs every workload for a few steps in seconds.
SMOKE = {
    "mlp": dict(batch=8, in_dim=16, hidden=16, classes=5),
    "cnn": dict(batch=4, image=8, c1=4, c2=8, dense=16, classes=5),
    "gpt": dict(batch=2, vocab=11, context=8, d_model=16, heads=2, layers=1, lr=3e-3),
    "lstm": dict(batch=2, vocab=11, embed=6, hidden=8, seq=5, lr=1e-2),
    "infer1": dict(in_dim=16, hidden=16, classes=5),
}

DESCRIPTION = {
    "mlp": "Dense 784-512-512-10 (ReLU), softmax cross-entropy, batch 128, Adam lr 1e-3",
    "cnn": "Conv 32 3x3 same+ReLU, MaxPool 2, Conv 64 3x3 same+ReLU, MaxPool 2, Dense 128 ReLU, Dense 10; "
           "batch 64, Adam lr 1e-3",
    "gpt": "char GPT: vocab 96, context 64, d_model 128, 4 heads, 2 pre-LN blocks (causal self-attention + "
           "4x MLP, GELU tanh approximation), untied head; batch 32, AdamW lr 3e-4 wd 0.01",
    "lstm": "Embedding(96, 64) -> LSTM(256) -> Dense 96 on every step, seq 64, batch 32, Adam lr 1e-3",
    "infer1": "the mlp model, one sample (batch 1), no grad: latency per call",
}


def spec(workload: str, smoke: bool = False) -> dict:
    if workload not in FULL:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    s = dict(FULL[workload])
    if smoke:
        s.update(SMOKE[workload])
    s["name"] = workload
    s["smoke"] = smoke
    return s


def items_per_step(s: dict) -> int:
    """Samples (mlp, cnn, infer1) or tokens (gpt, lstm) processed by one step."""
    if s["name"] == "gpt":
        return s["batch"] * s["context"]
    if s["name"] == "lstm":
        return s["batch"] * s["seq"]
    return s["batch"]


def forward_products(s: dict) -> list[tuple[str, int, int, int, int]]:
    """The forward pass's matmuls and convolutions as (label, batch, m, k, n): ``batch``
    independent (m, k) x (k, n) products (a convolution as its im2col GEMM over the batch's
    pixels, attention per (sample, head)), in layer order."""
    name, b = s["name"], s["batch"]
    if name in ("mlp", "infer1"):
        dims = [s["in_dim"], s["hidden"], s["hidden"], s["classes"]]
        return [(f"dense{i + 1}", 1, b, dims[i], dims[i + 1]) for i in range(3)]
    if name == "cnn":
        h1, h2, h3 = s["image"], s["image"] // 2, s["image"] // 4
        return [("conv1", 1, b * h1 * h1, 9 * 1, s["c1"]), ("conv2", 1, b * h2 * h2, 9 * s["c1"], s["c2"]),
                ("dense1", 1, b, s["c2"] * h3 * h3, s["dense"]), ("dense2", 1, b, s["dense"], s["classes"])]
    if name == "gpt":
        t, d, heads = s["context"], s["d_model"], s["heads"]
        rows, dh = b * t, d // heads
        block = [("qkv", 1, rows, d, 3 * d), ("scores q@k^T", b * heads, t, dh, t),
                 ("attn@v", b * heads, t, t, dh), ("attn out", 1, rows, d, d),
                 ("mlp up", 1, rows, d, s["mlp_ratio"] * d), ("mlp down", 1, rows, s["mlp_ratio"] * d, d)]
        return block * s["layers"] + [("head", 1, rows, d, s["vocab"])]
    if name == "lstm":
        rows, h = b * s["seq"], s["hidden"]
        # the recurrent projection runs step by step: seq products of (batch, h) x (h, 4h)
        return [("input proj", 1, rows, s["embed"], 4 * h), ("recurrent", s["seq"], b, h, 4 * h),
                ("head", 1, rows, h, s["vocab"])]
    raise ValueError(name)  # pragma: no cover


def flops_per_step(s: dict) -> int:
    """Forward (+ backward for training) matmul/conv FLOPs of one step, see the module docstring."""
    fwd = [2 * batch * m * k * n for _, batch, m, k, n in forward_products(s)]
    if s["kind"] != "train":
        return sum(fwd)
    if s["name"] in ("gpt", "lstm"):
        # the first product reads the embeddings, which need input gradients (the tables are
        # trained), so every product here gets both gradients
        return 3 * sum(fwd)
    # weight gradients of every layer + input gradients of all but the first layer
    return 2 * sum(fwd) + sum(fwd[1:])


def make_data(s: dict, n_batches: int = 4, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_batches`` fixed batches (x, y): float32 inputs (NCHW images for the cnn) or int64 token
    ids, labels uniform in [0, classes). Training cycles over them, so the loss falls reliably."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        b = s["batch"]
        if s["name"] in ("mlp", "infer1"):
            x = rng.standard_normal((b, s["in_dim"]), dtype=np.float32)
            y = rng.integers(0, s["classes"], (b,), dtype=np.int64)
        elif s["name"] == "cnn":
            x = rng.standard_normal((b, 1, s["image"], s["image"]), dtype=np.float32)
            y = rng.integers(0, s["classes"], (b,), dtype=np.int64)
        elif s["name"] == "gpt":
            x = rng.integers(0, s["vocab"], (b, s["context"]), dtype=np.int64)
            y = rng.integers(0, s["vocab"], (b, s["context"]), dtype=np.int64)
        else:  # lstm
            x = rng.integers(0, s["vocab"], (b, s["seq"]), dtype=np.int64)
            y = rng.integers(0, s["vocab"], (b, s["seq"]), dtype=np.int64)
        out.append((x, y))
    return out
