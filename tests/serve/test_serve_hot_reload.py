"""A new version directory is picked up while the server answers traffic, without a restart;
the old version answers until the new one is AVAILABLE, and stays addressable."""

from __future__ import annotations

import threading
import time

import numpy as np

from conftest import ServerThread, make_model, needs_web_stack, reference, save_version

needs_web_stack()

X = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


def test_new_version_is_served_without_restart_and_no_request_fails(tmp_path):
    import httpx

    from ember.serve import create_app

    base = tmp_path / "m"
    v1, v2 = make_model(11), make_model(22)
    save_version(base, 1, v1)
    expected = {1: reference(v1, X), 2: reference(v2, X)}
    app = create_app(str(base), poll_seconds=0.1)
    failures, answered_by, stop = [], [], threading.Event()

    def traffic(url):
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                r = c.post("/v1/models/m:predict", json={"instances": X})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                out = np.asarray(r.json()["predictions"])
                answered_by.append(next((v for v, e in expected.items() if np.allclose(out, e, atol=1e-5)), None))

    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        threads = [threading.Thread(target=traffic, args=(server.url,)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        (base / "2").mkdir()  # an empty directory is not a version yet
        time.sleep(0.3)
        assert [s["version"] for s in client.get("/v1/models/m").json()["model_version_status"]] == ["1"]
        save_version(base, 2, v2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in client.get("/v1/models/m").json()["model_version_status"]}
            if states.get("2") == "AVAILABLE":
                break
            time.sleep(0.05)
        assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        assert None not in answered_by
        assert answered_by[0] == 1 and answered_by[-1] == 2
        switch = answered_by.index(2)
        assert set(answered_by[switch:]) == {2}  # once switched, the newest answers
        # the previous version stays addressable
        old = client.post("/v1/models/m/versions/1:predict", json={"instances": X}).json()["predictions"]
        np.testing.assert_allclose(old, expected[1], atol=1e-5)
        assert client.get("/v1/models/m/metadata").json()["model_spec"]["version"] == "2"


def test_broken_new_version_is_reported_and_the_old_one_keeps_serving(tmp_path):
    import httpx

    from ember.serve import create_app

    base = tmp_path / "m"
    save_version(base, 1, make_model(1))
    with ServerThread(create_app(str(base), poll_seconds=0.1)) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        (base / "2").mkdir()
        (base / "2" / "model.onnx").write_bytes(b"this is not an onnx file")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            statuses = client.get("/v1/models/m").json()["model_version_status"]
            if statuses[0]["version"] == "2" and statuses[0]["state"] == "END":
                break
            time.sleep(0.05)
        assert statuses[0]["state"] == "END" and statuses[0]["status"]["error_code"] != "OK"
        assert "model.onnx" in statuses[0]["status"]["error_message"]
        assert client.post("/v1/models/m:predict", json={"instances": X}).status_code == 200
        r = client.post("/v1/models/m/versions/2:predict", json={"instances": X})
        assert r.status_code == 404 and "failed to load" in r.json()["error"]
        assert client.get("/readyz").status_code == 200


def test_keep_one_version_swaps_without_failed_requests(tmp_path):
    import httpx

    from ember.serve import create_app

    base = tmp_path / "m"
    save_version(base, 1, make_model(1))
    failures, count, stop = [], [0], threading.Event()

    def traffic(url):
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                r = c.post("/v1/models/m:predict", json={"inputs": X})
                count[0] += 1
                if r.status_code != 200:
                    failures.append(r.text)

    with ServerThread(create_app(str(base), poll_seconds=0.05, keep_versions=1)) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        threads = [threading.Thread(target=traffic, args=(server.url,)) for _ in range(4)]
        for t in threads:
            t.start()
        for v in (2, 3):
            time.sleep(0.3)
            save_version(base, v, make_model(v))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in client.get("/v1/models/m").json()["model_version_status"]}
            if states == {"3": "AVAILABLE", "2": "END", "1": "END"}:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        assert states == {"3": "AVAILABLE", "2": "END", "1": "END"}
        assert count[0] > 20 and not failures, failures[:3]
        r = client.post("/v1/models/m/versions/1:predict", json={"inputs": X})
        assert r.status_code == 404 and "not loaded" in r.json()["error"]
