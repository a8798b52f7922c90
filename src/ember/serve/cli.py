"""``ember serve MODEL_BASE_PATH --model-name NAME --port 8501`` (also ``python -m ember.serve``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

DESCRIPTION = """\
Serve an ember model over HTTP with TF Serving's REST API. MODEL_BASE_PATH holds numbered
version directories (1/, 2/, ...), each with one ember model file (em.save / model.save) or
.onnx file; it may also be their parent, with MODEL_BASE_PATH/NAME holding them. The newest
loaded version answers; new version directories are picked up without a restart."""

EPILOG = """\
examples:
  ember serve models/ --model-name digits --port 8501
  curl localhost:8501/v1/models/digits
  curl localhost:8501/v1/models/digits/metadata
  curl -d '{"instances": [[0, 0, 5, 13, ...]]}' localhost:8501/v1/models/digits:predict

see docs/serving.md for the API, the layout and every option"""


def parse_size(text: str) -> int:
    """``1048576``, ``512K``, ``16M``/``16MiB``, ``1G``: bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1048576, 512K, 16M, 1G)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``ember serve``'s arguments to ``parser`` (for wiring it in as a subcommand)."""
    from .config import ServeConfig

    d = ServeConfig.__dataclass_fields__
    parser.add_argument("model_base_path", metavar="MODEL_BASE_PATH",
                        help="directory of version directories 1/, 2/, ... (or their parent: see --model-name)")
    parser.add_argument("--model-name", default=None,
                        help="the model's name in URLs (/v1/models/NAME); default: the last component of "
                             "MODEL_BASE_PATH. When MODEL_BASE_PATH/NAME is a directory, it holds the versions")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8501, help="HTTP port (default 8501, TF Serving's REST port)")
    batching = parser.add_argument_group("dynamic batching")
    batching.add_argument("--max-batch-size", type=_positive_int, default=d["max_batch_size"].default,
                          help="merge concurrent requests into model calls of at most this many rows (default "
                               "%(default)s)")
    batching.add_argument("--batch-timeout-micros", type=_non_negative_int,
                          default=d["batch_timeout_micros"].default,
                          help="how long a request waits for others to share its model call, in microseconds "
                               "(default %(default)s)")
    batching.add_argument("--no-batching", action="store_true",
                          help="run every request as its own model call")
    batching.add_argument("--num-threads", type=_positive_int, default=None,
                          help="worker threads running the model (default: CPUs, at most 4)")
    versions = parser.add_argument_group("versions")
    versions.add_argument("--poll-seconds", type=_positive_float, default=d["poll_seconds"].default,
                          help="how often to look for new or removed version directories (default %(default)s)")
    versions.add_argument("--keep-versions", type=_non_negative_int, default=d["keep_versions"].default,
                          help="how many of the newest available versions stay loaded and addressable by "
                               "/versions/N (default %(default)s; 0 keeps all)")
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-body-bytes", type=parse_size, default=d["max_body_bytes"].default,
                        help="largest request body; larger ones get 413 (default 16M)")
    limits.add_argument("--max-request-rows", type=_positive_int, default=d["max_request_rows"].default,
                        help="most examples in one request; more get 413 (default %(default)s)")
    limits.add_argument("--max-queued-rows", type=_positive_int, default=d["max_queued_rows"].default,
                        help="rows waiting for the model across all requests before new ones get 503 "
                             "(default %(default)s)")
    limits.add_argument("--allow-nonfinite", action="store_true",
                        help="accept NaN and Infinity in inputs (rejected with 400 by default)")
    other = parser.add_argument_group("other")
    other.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (it defines custom layers or models the files name); repeatable")
    other.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="log level (default info)")
    other.add_argument("--no-access-log", action="store_true", help="no JSON access-log line per request")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember serve", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def config_from_args(args):
    from .config import ServeConfig

    return ServeConfig(
        model_base_path=args.model_base_path, model_name=args.model_name, batching=not args.no_batching,
        max_batch_size=args.max_batch_size, batch_timeout_micros=args.batch_timeout_micros,
        num_threads=args.num_threads or 0, poll_seconds=args.poll_seconds, keep_versions=args.keep_versions,
        max_body_bytes=args.max_body_bytes, max_request_rows=args.max_request_rows,
        max_queued_rows=args.max_queued_rows, allow_nonfinite=args.allow_nonfinite,
        access_log=not args.no_access_log)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: str) -> None:
    """Server messages as text, access-log lines as the JSON they are, both on stderr."""
    server, access = logging.getLogger("ember.serve"), logging.getLogger("ember.serve.access")
    if not any(isinstance(h, _StderrHandler) for h in server.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        server.addHandler(h)
    if not any(isinstance(h, _StderrHandler) for h in access.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(h)
    access.propagate = False  # each line once, as bare JSON
    server.setLevel(level.upper())
    access.setLevel(level.upper())


def run(args) -> int:
    """Run the server for parsed ``args`` until interrupted; returns the exit status."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        print(f"ember serve: missing dependency ({e}); install it with: pip install 'ember[serve]'", file=sys.stderr)
        return 1
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in args.imports:
        try:
            importlib.import_module(name)
        except Exception as e:
            print(f"ember serve: --import {name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"ember serve: {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(config.model_dir):
        print(f"ember serve: {config.model_base_path} is not a directory (it should hold version directories "
              f"1/, 2/, ... of model '{config.model_name}')", file=sys.stderr)
        return 2
    from .app import create_app

    configure_logging(args.log_level)
    try:
        uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                    lifespan="on", server_header=False)
    except KeyboardInterrupt:  # some uvicorn versions re-raise Ctrl-C after shutting down gracefully
        pass
    return 0


def main(argv=None) -> int:
    """``ember serve ...`` with ``argv`` (default: sys.argv[1:])."""
    return run(build_parser().parse_args(argv))
