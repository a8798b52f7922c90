"""Every example runs end to end (in its --quick mode) as a user would run it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick"], cwd=EXAMPLES, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name,minimum", [("mnist_mlp.py", 0.85), ("mnist_cnn.py", 0.85),
                                          ("custom_training_loop.py", 0.9)])
def test_image_examples_reach_accuracy(name, minimum):
    out = run_example(name)
    accuracies = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", out)]
    assert accuracies and accuracies[-1] >= minimum, out


@pytest.mark.parametrize("name", ["char_gpt.py", "lstm_text.py"])
def test_text_examples_learn_and_sample(name):
    out = run_example(name)
    m = re.search(r"validation loss ([0-9.]+) nats vs unigram entropy ([0-9.]+)", out)
    assert m, out
    assert float(m.group(1)) < 0.85 * float(m.group(2)), out
    assert "sample:" in out and len(out.split("sample:")[1].strip()) > 20
