"""The one exception type the server turns into ``{"error": "..."}`` responses."""

from __future__ import annotations


class ServeError(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ServeError:
    return ServeError(400, message)


def not_found(message: str) -> ServeError:
    return ServeError(404, message)


def too_large(message: str) -> ServeError:
    return ServeError(413, message)


def unavailable(message: str) -> ServeError:
    return ServeError(503, message, {"Retry-After": "1"})
