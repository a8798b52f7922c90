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


def _mm(m, k, n):
    return 2 * m * k * n


def flops_per_step(s: dict) -> int:
    """Forward (+ backward for training) matmul/conv FLOPs of one step, see the module docstring."""
    name, b = s["name"], s["batch"]
    if name in ("mlp", "infer1"):
        layers = [(s["in_dim"], s["hidden"]), (s["hidden"], s["hidden"]), (s["hidden"], s["classes"])]
        fwd = [_mm(b, i, o) for i, o in layers]
    elif name == "cnn":
        h1, h2 = s["image"], s["image"] // 2
        h3 = s["image"] // 4
        fwd = [_mm(b * h1 * h1, 9 * 1, s["c1"]), _mm(b * h2 * h2, 9 * s["c1"], s["c2"]),
               _mm(b, s["c2"] * h3 * h3, s["dense"]), _mm(b, s["dense"], s["classes"])]
    elif name == "gpt":
        t, d, v = s["context"], s["d_model"], s["vocab"]
        rows = b * t
        block = [_mm(rows, d, 3 * d), _mm(b * t, t, d), _mm(b * t, t, d), _mm(rows, d, d),
                 _mm(rows, d, s["mlp_ratio"] * d), _mm(rows, s["mlp_ratio"] * d, d)]
        # the first matmul of the first block reads the embeddings, which need input gradients
        # (the embedding tables are trained), so every matmul here gets both gradients
        fwd = block * s["layers"] + [_mm(rows, d, v)]
        return 3 * sum(fwd) if s["kind"] == "train" else sum(fwd)
    elif name == "lstm":
        rows = b * s["seq"]
        h = s["hidden"]
        # input projection (its input, the embedding output, needs a gradient), recurrent
        # projection and the head over every step
        fwd = [_mm(rows, s["embed"], 4 * h), _mm(rows, h, 4 * h), _mm(rows, h, s["vocab"])]
        return 3 * sum(fwd) if s["kind"] == "train" else sum(fwd)
    else:  # pragma: no cover
        raise ValueError(name)
    if s["kind"] != "train":
        return sum(fwd)
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
