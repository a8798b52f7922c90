"""The REST API over real HTTP (uvicorn on a loopback port): TF Serving's formats, status,
metadata, every error with its status code, health, metrics and access logs."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from conftest import metric, needs_web_stack, reference

needs_web_stack()

X = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]


def ok(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def err(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]


# ---- status and metadata -----------------------------------------------------------------------

def test_model_status_lists_versions_like_tf_serving(client):
    body = ok(client.get("/v1/models/m"))
    assert body == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    one = ok(client.get("/v1/models/m/versions/1"))
    assert one["model_version_status"] == [body["model_version_status"][1]]


def test_metadata_is_tf_servings_signature_def(client):
    body = ok(client.get("/v1/models/m/metadata"))
    assert body["model_spec"] == {"name": "m", "signature_name": "", "version": "2"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"] == {"input": {"dtype": "DT_FLOAT", "name": "input", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": False}}}
    assert sig["outputs"]["output"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "3", "name": ""}]
    assert ok(client.get("/v1/models/m/versions/1/metadata"))["model_spec"]["version"] == "1"


# ---- predict -----------------------------------------------------------------------------------

def test_row_format_answers_predictions_of_the_latest_version(client, models_root):
    _, models = models_root
    body = ok(client.post("/v1/models/m:predict", json={"instances": X}))
    np.testing.assert_allclose(body["predictions"], reference(models[2], X), rtol=1e-5, atol=1e-6)
    named = ok(client.post("/v1/models/m:predict", json={"instances": [{"input": r} for r in X]}))
    np.testing.assert_allclose(named["predictions"], body["predictions"], rtol=1e-5, atol=1e-6)


def test_columnar_format_answers_outputs(client, models_root):
    _, models = models_root
    body = ok(client.post("/v1/models/m:predict", json={"inputs": X}))
    assert set(body) == {"outputs"}
    np.testing.assert_allclose(body["outputs"], reference(models[2], X), rtol=1e-5, atol=1e-6)
    named = ok(client.post("/v1/models/m:predict", json={"signature_name": "serving_default", "inputs": {"input": X}}))
    np.testing.assert_allclose(named["outputs"], body["outputs"], rtol=1e-5, atol=1e-6)


def test_explicit_version(client, models_root):
    _, models = models_root
    body = ok(client.post("/v1/models/m/versions/1:predict", json={"instances": X[:1]}))
    np.testing.assert_allclose(body["predictions"], reference(models[1], X[:1]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(body["predictions"], reference(models[2], X[:1]))


# ---- errors --------------------------------------------------------------------------------------

def test_malformed_json_is_400(client):
    assert "malformed JSON" in err(client.post("/v1/models/m:predict", content=b'{"instances": [[1, 2'), 400)
    assert "empty" in err(client.post("/v1/models/m:predict", content=b""), 400)
    assert "JSON object" in err(client.post("/v1/models/m:predict", json=[1, 2, 3, 4]), 400)
    assert "neither" in err(client.post("/v1/models/m:predict", json={"instance": X}), 400)


def test_wrong_shape_says_what_is_expected_and_what_arrived(client):
    msg = err(client.post("/v1/models/m:predict", json={"instances": X[0]}), 400)
    assert "[4]" in msg and "[-1, 4]" in msg and "float32" in msg
    assert "single example without its batch axis" in msg
    msg = err(client.post("/v1/models/m:predict", json={"inputs": [[1.0, 2.0]]}), 400)
    assert "[-1, 4]" in msg and "[1, 2]" in msg


def test_wrong_dtypes_are_400(client):
    assert "strings" in err(client.post("/v1/models/m:predict", json={"instances": [["a", "b", "c", "d"]]}), 400)
    assert "booleans" in err(client.post("/v1/models/m:predict", json={"instances": [[True] * 4]}), 400)
    assert "ragged" in err(client.post("/v1/models/m:predict", json={"instances": [[1, 2, 3, 4], [1]]}), 400)


def test_nan_and_inf_are_400(client):
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"instances": [[1, 2, 3, ' + literal + b"]]}"
        assert "--allow-nonfinite" in err(client.post("/v1/models/m:predict", content=body), 400)


def test_too_many_rows_is_413(client):
    assert "at most 100" in err(client.post("/v1/models/m:predict", json={"instances": [X[0]] * 101}), 413)


def test_oversized_body_is_413_with_or_without_content_length(client):
    big = json.dumps({"instances": [[1.5] * 4] * 5000}).encode()
    assert len(big) > 64 * 1024
    assert "--max-body-bytes" in err(client.post("/v1/models/m:predict", content=big), 413)

    def chunks():  # chunked transfer encoding: no Content-Length to check up front
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    assert "--max-body-bytes" in err(client.post("/v1/models/m:predict", content=chunks()), 413)


def test_unknown_model_version_and_paths_are_404(client):
    assert "not found" in err(client.post("/v1/models/other:predict", json={"instances": X}), 404)
    assert "no version 7" in err(client.post("/v1/models/m/versions/7:predict", json={"instances": X}), 404)
    assert "no version 7" in err(client.get("/v1/models/m/versions/7"), 404)
    assert "no version 7" in err(client.get("/v1/models/m/versions/7/metadata"), 404)
    assert "not found" in err(client.get("/v1/models/other"), 404)
    assert "labels" in err(client.get("/v1/models/m/labels/stable"), 404)
    assert "unknown method" in err(client.post("/v1/models/m:explain", json={}), 404)
    assert "not found" in err(client.get("/v2/models/m"), 404)
    assert "not found" in err(client.get("/v1/models"), 404)  # no trailing-slash redirect
    assert "not found" in err(client.get("/healthz/"), 404)
    assert "integer" in err(client.get("/v1/models/m/versions/latest"), 400)
    assert "predict API only" in err(client.post("/v1/models/m:classify", json={"examples": []}), 400)


def test_wrong_methods_are_405(client):
    response = client.get("/v1/models/m:predict")
    assert "POST" in err(response, 405) and response.headers["allow"] == "POST"
    assert "GET" in err(client.post("/v1/models/m", json={}), 405)
    assert "POST is not allowed" in err(client.post("/healthz"), 405)


def test_model_errors_are_a_500_without_traceback(client, server, monkeypatch):
    mv = server.state.repository.resolve(1)

    def boom(x):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(mv.runner, "run", boom)
    msg = err(client.post("/v1/models/m/versions/1:predict", json={"instances": X}), 500)
    assert "the model broke" in msg and "version 1" in msg


# ---- health, metrics, logs ---------------------------------------------------------------------

def test_health_and_readiness(client):
    assert ok(client.get("/healthz")) == {"status": "ok"}
    assert ok(client.get("/readyz")) == {"status": "ready", "model": "m", "versions": ["1", "2"]}
    assert "POST /v1/models/m:predict" in ok(client.get("/"))["endpoints"]


def test_metrics_count_requests_latencies_and_batches(client):
    before = client.get("/metrics").text
    for _ in range(3):
        ok(client.post("/v1/models/m:predict", json={"instances": X}))
    err(client.post("/v1/models/m:predict", content=b"{"), 400)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    labels = {"endpoint": "predict", "model": "m"}
    assert metric(text, "ember_serve_requests_total", code="200", **labels) - \
        metric(before, "ember_serve_requests_total", code="200", **labels) == 3
    assert metric(text, "ember_serve_requests_total", code="400", **labels) >= 1
    assert metric(text, "ember_serve_request_duration_seconds_count", endpoint="predict") >= 4
    assert metric(text, "ember_serve_batch_size_sum", model="m", version="2") - \
        metric(before, "ember_serve_batch_size_sum", model="m", version="2") == 9
    assert metric(text, "ember_serve_model_version_available", model="m", version="2") == 1
    assert metric(text, "ember_serve_model_loads_total", model="m", result="ok") == 2
    assert "ember_serve_queued_rows" in text and "ember_serve_queue_wait_seconds_bucket" in text


def test_access_log_is_one_json_line_per_request(client, caplog):
    caplog.set_level(logging.INFO, logger="ember.serve.access")
    ok(client.post("/v1/models/m/versions/1:predict", json={"instances": X}, headers={"User-Agent": "probe"}))
    err(client.post("/v1/models/m:predict", content=b"{"), 400)
    deadline = time.monotonic() + 5  # the line is written just after the response is sent
    while True:
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ember.serve.access"]
        if {200, 400} <= {r["status"] for r in records} or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    good = next(r for r in records if r["status"] == 200)
    assert good["method"] == "POST" and good["path"] == "/v1/models/m/versions/1:predict"
    assert good["model"] == "m" and good["version"] == 1 and good["rows"] == 3 and good["format"] == "row"
    assert good["duration_ms"] > 0 and good["bytes_in"] > 0 and good["bytes_out"] > 0
    assert good["user_agent"] == "probe" and good["client"].startswith("127.0.0.1:") and "time" in good
    bad = next(r for r in records if r["status"] == 400)
    assert "malformed JSON" in bad["error"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_log_at_debug_only(client, caplog, path):
    caplog.set_level(logging.INFO, logger="ember.serve.access")
    client.get(path)
    assert not [r for r in caplog.records if r.name == "ember.serve.access" and path in r.getMessage()]
