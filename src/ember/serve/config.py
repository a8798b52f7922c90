"""The server's settings (one dataclass shared by the CLI, the app and the tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ServeConfig:
    """Settings of one ``ember serve`` process (one model, many versions).

    ``model_base_path`` is either the directory that holds the model's version directories
    (TF Serving's ``--model_base_path=/models/NAME``) or its parent (``/models`` with
    ``model_name="NAME"``): ``model_base_path/model_name`` is used when it is a directory.
    """

    model_base_path: str
    model_name: str | None = None
    #: dynamic batching: merge concurrent requests into one model call of at most this many rows
    batching: bool = True
    max_batch_size: int = 32
    #: how long the first request of a batch waits for others to join it
    batch_timeout_micros: int = 2000
    #: worker threads running model calls (NumPy/BLAS release the GIL)
    num_threads: int = 0
    #: seconds between scans of the model directory for new or removed versions
    poll_seconds: float = 1.0
    #: how many of the newest AVAILABLE versions stay loaded (0: all); an older version is
    #: unloaded only once enough newer ones are AVAILABLE
    keep_versions: int = 2
    #: request limits (each violation is a 4xx JSON error)
    max_body_bytes: int = 16 * 1024 * 1024
    max_request_rows: int = 4096
    #: rows waiting for a model call across all requests before new ones get 503
    max_queued_rows: int = 65536
    #: accept NaN/Infinity in inputs (JSON literals NaN, Infinity, -Infinity)
    allow_nonfinite: bool = False
    #: structured (JSON) access log lines on the ``ember.serve.access`` logger
    access_log: bool = True

    def __post_init__(self):
        self.model_base_path = os.fspath(self.model_base_path)
        if not self.num_threads:
            self.num_threads = _default_threads()
        if self.model_name is None:
            self.model_name = os.path.basename(os.path.normpath(os.path.abspath(self.model_base_path)))
        checks = [("max_batch_size", self.max_batch_size >= 1),
                  ("batch_timeout_micros", self.batch_timeout_micros >= 0),
                  ("num_threads", self.num_threads >= 1), ("poll_seconds", self.poll_seconds > 0),
                  ("keep_versions", self.keep_versions >= 0), ("max_body_bytes", self.max_body_bytes >= 1),
                  ("max_request_rows", self.max_request_rows >= 1), ("max_queued_rows", self.max_queued_rows >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"ServeConfig: {name}={getattr(self, name)!r} is out of range")
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ValueError(f"ServeConfig: model name {self.model_name!r} must be non-empty without '/' or ':'")

    @property
    def model_dir(self) -> str:
        """The directory whose numeric subdirectories are the versions."""
        nested = os.path.join(self.model_base_path, self.model_name)
        return nested if os.path.isdir(nested) else self.model_base_path
