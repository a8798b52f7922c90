"""The ASGI app (Starlette): TF Serving's REST API, health, metrics and access logs.

=============================================================  ======  ===============================
``/v1/models/NAME[/versions/N]``                                GET     version status
``/v1/models/NAME[/versions/N]/metadata``                       GET     signature (inputs, outputs)
``/v1/models/NAME[/versions/N]:predict``                        POST    predictions
``/healthz``                                                    GET     liveness: the process answers
``/readyz``                                                     GET     readiness: a version is AVAILABLE
``/metrics``                                                    GET     Prometheus metrics
=============================================================  ======  ===============================

Every error is ``{"error": "..."}`` with a 4xx/5xx status; no traceback ever reaches a client
(unexpected errors are logged with their traceback and answered with a 500 that says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .batcher import Batcher, DirectRunner, RunnerClosed
from .config import ServeConfig
from .errors import ServeError, bad_request, not_found, too_large
from .metrics import Metrics
from .repository import Repository
from .signature import SIGNATURE_NAME, encode_predictions, parse_predict

log = logging.getLogger("ember.serve")
access_log = logging.getLogger("ember.serve.access")

#: bodies above this are parsed, and large responses encoded, in a worker thread
_OFFLOAD_BYTES = 256 * 1024
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]*)|/labels/(?P<label>[^/:]*))?"
                         r"(?P<meta>/metadata)?(?::(?P<verb>[^/:]*))?$")


def json_response(doc, status=200, headers=None) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(status: int, message: str, headers=None) -> Response:
    return json_response({"error": message}, status, headers)


class ServerState:
    """What the endpoints share: settings, the repository, metrics, the worker threads."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.queued = {"rows": 0}
        self.metrics = Metrics(queued_rows=lambda: self.queued["rows"])
        self.repository = Repository(config, self._make_runner, self.metrics)
        self.executor: ThreadPoolExecutor | None = None

    def _make_runner(self, servable, version):
        name, m = self.config.model_name, self.metrics
        on_batch = lambda rows, requests, seconds: m.batch(name, version, rows, requests, seconds)
        if self.config.batching and servable.fixed_batch is None:
            return Batcher(servable.run, self.executor, self.config.max_batch_size,
                           self.config.batch_timeout_micros / 1e6, on_batch=on_batch,
                           on_wait=lambda seconds: m.waited(name, seconds), counter=self.queued,
                           max_queued_rows=self.config.max_queued_rows)
        return DirectRunner(servable.run, self.executor, on_batch=on_batch, counter=self.queued,
                            max_queued_rows=self.config.max_queued_rows)

    async def start(self):
        self.executor = ThreadPoolExecutor(self.config.num_threads, thread_name_prefix="ember-serve")
        log.info("serving model '%s' from %s (batching %s)", self.config.model_name, self.config.model_dir,
                 f"up to {self.config.max_batch_size} rows / {self.config.batch_timeout_micros} us"
                 if self.config.batching else "off")
        await self.repository.start()
        if not self.repository.available():
            log.warning("no version of model '%s' is available yet: %s", self.config.model_name,
                        self.repository.summary())

    async def stop(self):
        await self.repository.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


# ---- plumbing ---------------------------------------------------------------------------------

def _info(request: Request) -> dict:
    return request.scope.setdefault("ember.info", {"endpoint": "other", "model": ""})


def _endpoint(allowed, label):
    """Wrap a handler: method check, ServeError -> JSON, anything else -> logged 500."""

    def wrap(fn):
        async def handler(request: Request):
            info = _info(request)
            info["endpoint"] = label
            try:
                if request.method not in allowed:
                    raise ServeError(405, f"{request.method} is not allowed on {request.url.path}; use "
                                          f"{' or '.join(m for m in allowed if m != 'HEAD')}",
                                     {"Allow": ", ".join(allowed)})
                return await fn(request, info)
            except ServeError as e:
                info["error"] = e.message
                return error_response(e.status, e.message, e.headers)
            except ClientDisconnect:
                info["error"] = "client disconnected"
                return Response(status_code=499)
            except Exception:
                log.exception("internal error answering %s %s", request.method, request.url.path)
                info["error"] = "internal error"
                return error_response(500, "internal server error; the server log has the details")

        handler.__name__ = fn.__name__
        return handler

    return wrap


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad_request(f"invalid Content-Length header {declared[:40]!r}")
        if int(declared) > limit:
            raise too_large(f"the request body is {int(declared)} bytes; this server accepts at most {limit} "
                            "(--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"the request body is larger than {limit} bytes, the most this server accepts "
                            "(--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


# ---- endpoints ----------------------------------------------------------------------------------

def create_app(config: ServeConfig | str | None = None, **settings) -> Starlette:
    """The Starlette app serving ``config`` (a ServeConfig, or a model base path plus
    ServeConfig fields as keywords). Its lifespan loads the versions and starts polling."""
    if not isinstance(config, ServeConfig):
        config = ServeConfig(config if config is not None else settings.pop("model_base_path"), **settings)
    elif settings:
        raise TypeError("create_app: pass either a ServeConfig or a path with settings, not both")
    state = ServerState(config)
    repo = state.repository

    @_endpoint(["GET", "HEAD", "POST"], "model")
    async def models(request: Request, info: dict):
        rest = request.path_params["rest"]
        m = _MODEL_PATH.match(rest)
        if m is None:
            raise not_found(f"no such endpoint: {request.url.path[:200]}; the API is /v1/models/NAME"
                            "[/versions/N][/metadata | :predict]")
        name, version, label, meta, verb = m.group("name", "version", "label", "meta", "verb")
        info["endpoint"] = "predict" if verb is not None else "metadata" if meta else "status"
        if meta and verb is not None:
            raise not_found(f"no such endpoint: {request.url.path[:200]}")
        if name != repo.name:
            raise not_found(f"model '{name[:100]}' not found; this server serves '{repo.name}'")
        info["model"] = name
        if label is not None:
            raise not_found("version labels are not configured on this server; address a version by number: "
                            f"/v1/models/{name}/versions/N")
        if version is not None:
            if not version.isdigit():
                raise bad_request(f"version must be a non-negative integer; got '{version[:40]}'")
            version = int(version)
        if verb is not None:
            if request.method != "POST":
                raise ServeError(405, f"':{verb[:40]}' takes POST with a JSON body", {"Allow": "POST"})
            if verb in ("classify", "regress"):
                raise bad_request(f"this server implements the predict API only; POST to /v1/models/{name}"
                                  f"{'' if version is None else f'/versions/{version}'}:predict")
            if verb != "predict":
                raise not_found(f"unknown method ':{verb[:40]}'; use ':predict'")
            return await predict(request, info, version)
        if request.method == "POST":
            raise ServeError(405, f"POST is for :predict (/v1/models/{name}:predict); this endpoint takes GET",
                             {"Allow": "GET"})
        if meta:
            mv = repo.resolve(version)
            info["version"] = mv.version
            return json_response({
                "model_spec": {"name": name, "signature_name": "", "version": str(mv.version)},
                "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: mv.servable.signature.to_tf()}}}})
        if version is None:
            if not repo.versions:
                raise not_found(f"could not find any versions of model '{name}' ({repo.summary()})")
            return json_response({"model_version_status": repo.statuses()})
        mv = repo.versions.get(version)
        if mv is None:
            raise not_found(f"model '{name}' has no version {version}")
        return json_response({"model_version_status": [mv.status()]})

    async def predict(request: Request, info: dict, version):
        repo.resolve(version)  # unknown version or nothing loaded: answer before reading the body
        body = await read_body(request, config.max_body_bytes)
        for attempt in range(3):
            mv = repo.resolve(version)
            info["version"] = mv.version
            servable, runner = mv.servable, mv.runner  # fixed for this request even if mv is unloaded meanwhile
            context = f"model '{repo.name}' version {mv.version}"
            parse = functools.partial(parse_predict, body, servable.signature, max_rows=config.max_request_rows,
                                      allow_nonfinite=config.allow_nonfinite, context=context)
            x, fmt = await asyncio.to_thread(parse) if len(body) > _OFFLOAD_BYTES else parse()
            info["rows"], info["format"] = len(x), fmt
            try:
                outputs = await runner.submit(x)
                break
            except RunnerClosed:
                # unloaded between resolve and submit (possible for large bodies, parsed off the loop):
                # the newest version answers instead; an explicitly requested one cannot
                if version is not None or attempt == 2:
                    raise
            except ServeError:
                raise
            except Exception as e:
                detail = f"{type(e).__name__}: {str(e)[:1000]}"
                if servable.signature.input.shape is None:  # no signature to check against: the input's fault
                    raise bad_request(f"{context} cannot run on this input: {detail}") from None
                log.exception("%s failed on a batch", context)
                raise ServeError(500, f"{context} failed on this input: {detail}") from None
        if x.size > _OFFLOAD_BYTES // 8:
            content = await asyncio.to_thread(encode_predictions, outputs, fmt)
        else:
            content = encode_predictions(outputs, fmt)
        return Response(content, media_type="application/json")

    @_endpoint(["GET", "HEAD"], "health")
    async def healthz(request: Request, info: dict):
        return json_response({"status": "ok"})

    @_endpoint(["GET", "HEAD"], "ready")
    async def readyz(request: Request, info: dict):
        avail = repo.available()
        if not avail:
            raise ServeError(503, f"not ready: no version of model '{repo.name}' is available ({repo.summary()})")
        return json_response({"status": "ready", "model": repo.name, "versions": [str(v.version) for v in avail]})

    @_endpoint(["GET", "HEAD"], "metrics")
    async def metrics(request: Request, info: dict):
        content, content_type = state.metrics.render()
        return Response(content, headers={"Content-Type": content_type})

    @_endpoint(["GET", "HEAD"], "index")
    async def index(request: Request, info: dict):
        n = repo.name
        return json_response({"model": n, "endpoints": [
            f"GET /v1/models/{n}", f"GET /v1/models/{n}/metadata", f"POST /v1/models/{n}:predict",
            f"POST /v1/models/{n}/versions/N:predict", "GET /healthz", "GET /readyz", "GET /metrics"]})

    async def http_error(request: Request, exc: HTTPException):
        # routing errors (unknown path); the endpoints answer their own errors
        detail = "not found" if exc.status_code == 404 else str(exc.detail)
        message = f"{detail}: {request.url.path[:200]}" if exc.status_code == 404 else detail
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception):
        log.error("unhandled error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error; the server log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    routes = [Route("/v1/models/{rest:path}", models, methods=_ALL_METHODS),
              Route("/healthz", healthz, methods=_ALL_METHODS),
              Route("/readyz", readyz, methods=_ALL_METHODS),
              Route("/metrics", metrics, methods=_ALL_METHODS),
              Route("/", index, methods=_ALL_METHODS)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Observe, state=state)],
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.router.redirect_slashes = False  # /v1/models -> a JSON 404, not a redirect to /v1/models/
    app.state.ember = state
    return app


class Observe:
    """ASGI middleware: per-request metrics and one JSON access-log line per request."""

    QUIET = ("health", "ready", "metrics")  # logged at DEBUG: probes and scrapes are frequent

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        info = scope.setdefault("ember.info", {"endpoint": "other", "model": ""})
        started = time.perf_counter()
        sent = {"status": 500, "bytes": 0}

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - started
            self.state.metrics.request(info["endpoint"], sent["status"], info["model"], seconds)
            if self.state.config.access_log:
                level = logging.DEBUG if info["endpoint"] in self.QUIET else logging.INFO
                if access_log.isEnabledFor(level):
                    access_log.log(level, json.dumps(_access_record(scope, info, sent, seconds)))


def _access_record(scope, info, sent, seconds) -> dict:
    client = scope.get("client")
    headers = dict(scope.get("headers") or [])
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "method": scope.get("method"),
        "path": scope.get("path", "")[:200],
        "status": sent["status"],
        "duration_ms": round(seconds * 1000, 3),
        "bytes_in": int(headers[b"content-length"]) if headers.get(b"content-length", b"").isdigit() else None,
        "bytes_out": sent["bytes"],
        "endpoint": info["endpoint"],
    }
    for key in ("model", "version", "rows", "format", "error"):
        if info.get(key) not in (None, ""):
            record[key] = info[key] if key != "error" else str(info[key])[:300]
    user_agent = headers.get(b"user-agent")
    if user_agent:
        record["user_agent"] = user_agent.decode("latin-1")[:120]
    return record
