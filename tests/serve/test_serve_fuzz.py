"""Hypothesis fuzz over real HTTP: whatever the body, path or method, the server answers JSON
with 2xx or 4xx (never a 5xx, never a traceback) and keeps serving."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from conftest import needs_web_stack

needs_web_stack()

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

leaves = (st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80) | st.floats() |
          st.text(max_size=4) | st.sampled_from(["NaN", "b64", "input"]))
json_values = st.recursive(leaves, lambda c: st.lists(c, max_size=5) | st.dictionaries(
    st.sampled_from(["input", "inputs", "instances", "signature_name", "b64", "x"]) | st.text(max_size=3), c,
    max_size=3), max_leaves=40)
row = st.lists(st.floats(-1e3, 1e3) | st.integers(-5, 5), min_size=3, max_size=5)
near_valid = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(row, min_size=0, max_size=4)}),
    st.fixed_dictionaries({"inputs": st.lists(row, min_size=0, max_size=4)}),
    st.fixed_dictionaries({"inputs": st.fixed_dictionaries({"input": st.lists(row, max_size=3)})}),
    st.fixed_dictionaries({"instances": st.lists(st.fixed_dictionaries({"input": row}), max_size=3)}),
)
documents = st.one_of(json_values, near_valid, st.fixed_dictionaries({"instances": json_values}),
                      st.fixed_dictionaries({"inputs": json_values}))


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def check(response):
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json() if response.text else {}
    if response.status_code >= 400:
        assert set(body) == {"error"} and "Traceback" not in response.text
    return body


@FUZZ
@given(doc=documents, version=st.sampled_from(["", "/versions/1", "/versions/2"]))
def test_fuzz_predict_json_bodies(http, doc, version):
    body = check(http.post(f"/v1/models/m{version}:predict", content=json.dumps(doc).encode()))
    if "predictions" in body or "outputs" in body:
        rows = body.get("predictions", body.get("outputs"))
        assert isinstance(rows, list) and all(len(r) == 3 for r in rows)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_predict_raw_bytes(http, raw):
    check(http.post("/v1/models/m:predict", content=raw))


path_parts = st.sampled_from(["v1", "models", "m", "versions", "1", "2", "-1", "metadata", ":predict", "m:predict",
                              "labels", "x", "%3A", "..", ""]) | st.text("abc:/.%", max_size=6)


@FUZZ
@given(parts=st.lists(path_parts, max_size=6), method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
def test_fuzz_paths_and_methods(http, parts, method):
    import httpx

    path = "/" + "/".join(parts)
    try:
        response = http.request(method, path, content=b'{"instances": [[1, 2, 3, 4]]}')
    except httpx.InvalidURL:  # a path httpx itself refuses to send is not the server's concern
        reject()
    check(response)


def test_server_still_healthy_after_fuzzing(http):
    assert http.get("/healthz").status_code == 200
    r = http.post("/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
