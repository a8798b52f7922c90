"""Fixtures: small saved models in TF Serving's layout and a real uvicorn server on a free
loopback port, run in a background thread."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest


def needs_web_stack():
    """Skip a test module when the serve extra (and httpx) is not installed."""
    for name in ("starlette", "uvicorn", "prometheus_client", "httpx"):
        pytest.importorskip(name)


def make_model(seed=0, n_in=4, n_out=3):
    """A small Keras-style model with a recorded input signature [-1, n_in] float32."""
    import ember as em
    from ember import layers

    em.manual_seed(seed)
    model = em.Sequential([layers.Input(shape=(n_in,)), layers.Dense(8, activation="relu"), layers.Dense(n_out)])
    model.build((None, n_in))  # Dense sizes itself lazily; em.save writes what exists
    return model


def save_version(base, version, model, filename="model.ember"):
    """Write ``model`` as version ``version`` under ``base`` (atomically, like em.save does)."""
    import ember as em

    directory = os.path.join(base, str(version))
    os.makedirs(directory, exist_ok=True)
    em.save(model, os.path.join(directory, filename))
    return directory


def reference(model, x):
    """What the model itself computes for ``x`` (float32 rows)."""
    from ember.tensor import Tensor

    return model(Tensor._make(np.asarray(x, dtype=np.float32))).data


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 at a free port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        # port 0: the OS picks a free port (uvicorn binding the socket itself; a socket bound here and
        # passed in answered every request after a 40 ms delayed-ACK stall)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = self.url = None

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def state(self):
        return self.app.state.ember


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    """``root/m/1`` and ``root/m/2``: two versions of one architecture with different weights."""
    root = tmp_path_factory.mktemp("models")
    m1, m2 = make_model(1), make_model(2)
    save_version(root / "m", 1, m1)
    save_version(root / "m", 2, m2)
    return root, {1: m1, 2: m2}


@pytest.fixture(scope="module")
def server(models_root):
    """A running server for model 'm' (batching on, 2 ms timeout)."""
    from ember.serve import create_app

    root, _ = models_root
    app = create_app(str(root), model_name="m", max_batch_size=16, batch_timeout_micros=2000, poll_seconds=0.2,
                     max_body_bytes=64 * 1024, max_request_rows=100)
    with ServerThread(app) as s:
        yield s


@pytest.fixture()
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0
