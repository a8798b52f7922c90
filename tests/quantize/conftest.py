"""Trained digits models shared by the quantization tests (trained once per session; the model
builders and training loop are the benchmark's, benchmarks/quantize.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quantize import train  # noqa: E402

#: fewest epochs that still reach >= 95% float32 test accuracy for each model (seed 0)
TEST_EPOCHS = {"mlp": 6, "cnn": 6}


@pytest.fixture(scope="session")
def trained_mlp():
    return train("mlp", TEST_EPOCHS["mlp"])


@pytest.fixture(scope="session")
def trained_cnn():
    return train("cnn", TEST_EPOCHS["cnn"])
