"""Prometheus metrics (one registry per app, so several servers can live in one process).

==========================================  =========  ===========================================
``ember_serve_requests_total``              counter    requests by endpoint, HTTP status code, model
``ember_serve_request_duration_seconds``    histogram  request latency by endpoint
``ember_serve_predict_rows_total``          counter    rows predicted, by model and version
``ember_serve_batch_size``                  histogram  rows per model call (merged batches)
``ember_serve_batch_requests``              histogram  requests merged into one model call
``ember_serve_batch_duration_seconds``      histogram  time of one model call
``ember_serve_queue_wait_seconds``          histogram  time a request waited to join a model call
``ember_serve_queued_rows``                 gauge      rows waiting for a model call now
``ember_serve_model_version_available``     gauge      1 while a version is AVAILABLE
``ember_serve_model_loads_total``           counter    version loads by result (ok, error)
``ember_serve_model_load_seconds``          histogram  time to load a version
==========================================  =========  ===========================================
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self, queued_rows=None):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ember_serve_requests", "HTTP requests", ["endpoint", "code", "model"], registry=r)
        self.latency = Histogram("ember_serve_request_duration_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.rows = Counter("ember_serve_predict_rows", "rows predicted", ["model", "version"], registry=r)
        self.batch_size = Histogram("ember_serve_batch_size", "rows per model call", ["model", "version"],
                                    buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("ember_serve_batch_requests", "requests merged into one model call",
                                        ["model", "version"], buckets=SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("ember_serve_batch_duration_seconds", "time of one model call",
                                       ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("ember_serve_queue_wait_seconds", "time a request waited for its model call",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.available = Gauge("ember_serve_model_version_available", "1 while a version is AVAILABLE",
                               ["model", "version"], registry=r)
        self.loads = Counter("ember_serve_model_loads", "version loads", ["model", "result"], registry=r)
        self.load_seconds = Histogram("ember_serve_model_load_seconds", "time to load a version", ["model"],
                                      buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60), registry=r)
        if queued_rows is not None:
            g = Gauge("ember_serve_queued_rows", "rows waiting for a model call", registry=r)
            g.set_function(queued_rows)

    # ---- hooks ----
    def request(self, endpoint: str, code: int, model: str, seconds: float) -> None:
        self.requests.labels(endpoint, str(code), model).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch(self, model: str, version: int, rows: int, requests: int, seconds: float) -> None:
        v = str(version)
        self.rows.labels(model, v).inc(rows)
        self.batch_size.labels(model, v).observe(rows)
        self.batch_requests.labels(model, v).observe(requests)
        self.batch_seconds.labels(model, v).observe(seconds)

    def waited(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(model).observe(seconds)

    def loaded(self, model: str, version: int, seconds: float, ok: bool) -> None:
        self.loads.labels(model, "ok" if ok else "error").inc()
        if ok:
            self.load_seconds.labels(model).observe(seconds)
            self.available.labels(model, str(version)).set(1)
        else:
            self.available.labels(model, str(version)).set(0)

    def unloaded(self, model: str, version: int) -> None:
        self.available.labels(model, str(version)).set(0)

    def render(self) -> tuple:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
