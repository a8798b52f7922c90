"""Many concurrent HTTP clients: every caller gets its own rows back, and with dynamic batching
the server really merges requests (seen in /metrics)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest import ServerThread, metric, needs_web_stack, reference

needs_web_stack()


async def _hammer(url, n_clients, requests_each, seed):
    """``n_clients`` concurrent connections, each sending distinct rows; returns (inputs, outputs)."""
    import httpx

    rng = np.random.default_rng(seed)
    sent, got = [], []

    async def one_client(i, client):
        for j in range(requests_each):
            rows = rng.normal(size=(1 + (i + j) % 3, 4)).round(3)
            fmt = "instances" if (i + j) % 2 else "inputs"
            r = await client.post("/v1/models/m:predict", json={fmt: rows.tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            sent.append(rows)
            got.append(np.asarray(body["predictions" if fmt == "instances" else "outputs"]))

    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(one_client(i, client) for i in range(n_clients)))
    return sent, got


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_clients_each_get_their_own_rows(models_root, batching):
    from ember.serve import create_app

    root, models = models_root
    app = create_app(str(root), model_name="m", batching=batching, max_batch_size=32, batch_timeout_micros=5000)
    with ServerThread(app) as server:
        sent, got = asyncio.run(_hammer(server.url, n_clients=48, requests_each=4, seed=int(batching)))
        import httpx

        text = httpx.get(server.url + "/metrics").text
    assert len(sent) == 48 * 4
    for rows, out in zip(sent, got):
        assert out.shape == (len(rows), 3)
        np.testing.assert_allclose(out, reference(models[2], rows), rtol=1e-4, atol=1e-5)
    calls = metric(text, "ember_serve_batch_requests_count", model="m", version="2")
    merged = metric(text, "ember_serve_batch_requests_sum", model="m", version="2")
    rows_total = metric(text, "ember_serve_predict_rows_total", model="m", version="2")
    assert merged == 48 * 4 and rows_total == sum(len(r) for r in sent)
    largest_single = metric(text, "ember_serve_batch_requests_bucket", model="m", version="2", le="1.0")
    if batching:
        assert calls < merged, "no two requests were ever merged into one model call"
        assert largest_single < calls  # some model calls served more than one request
        assert metric(text, "ember_serve_batch_size_bucket", model="m", version="2", le="32.0") == calls  # <= max
    else:
        assert calls == merged == largest_single  # one model call per request
