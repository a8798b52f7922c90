"""Shared helpers for the examples: data loading with a fallback to the bundled digits."""

from __future__ import annotations

import argparse
import os

import numpy as np


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (used by the test-suite)")
    p.add_argument("--seed", type=int, default=0)
    return p


def image_data(data_dir, flatten):
    """MNIST from ``data_dir`` when its IDX files are there, else scikit-learn's digits.

    Returns (x_train, y_train), (x_test, y_test), name; images channels-first float32 in [0, 1].
    """
    from ember.data import datasets

    if data_dir and os.path.isdir(data_dir):
        try:
            x_train, y_train = datasets.mnist(data_dir, train=True)
            x_test, y_test = datasets.mnist(data_dir, train=False)
            name = "MNIST"
        except FileNotFoundError as e:
            print(f"({e}; using the bundled digits instead)")
            data_dir = None
    if not data_dir or not os.path.isdir(data_dir):
        (x_train, y_train), (x_test, y_test) = datasets.digits(test_size=0.2, seed=0)
        name = "digits (8x8)"
    if flatten:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    return (x_train, y_train), (x_test, y_test), name


def text_data(max_chars, context):
    """The Python standard library's source as characters, split 90/10 into train/validation."""
    from ember.data import datasets

    text = datasets.python_stdlib_text(max_chars)
    vocab = datasets.CharVocab()
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.9)
    train = datasets.CharDataset(ids[:cut], context)
    val = datasets.CharDataset(ids[cut:], context)
    return vocab, train, val, datasets.unigram_entropy(ids[:cut], len(vocab))


def eval_loss(model, dataset, batch_size, batches, seed=123):
    """Mean next-character cross-entropy (nats) over random validation windows."""
    import ember as em
    import ember.nn.functional as F

    rng = np.random.default_rng(seed)
    model.eval()
    total = 0.0
    with em.no_grad():
        for _ in range(batches):
            x, y = dataset.batch(rng.integers(0, len(dataset), batch_size))
            logits = model(em.tensor(x))
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), em.tensor(y.reshape(-1))).item()
    model.train()
    return total / batches
