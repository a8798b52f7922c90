"""``ember serve``: a TF-Serving-compatible HTTP server for ember model files.

``main(argv)`` runs the command, ``build_parser()`` is its argument parser (``add_arguments``
adds the same arguments to another parser), ``create_app(config)`` is the ASGI app for embedding
or tests. The web stack (Starlette, uvicorn, prometheus-client) is the optional ``serve`` extra and
is imported only when an app is created or the server runs. See docs/serving.md.
"""

from .cli import add_arguments, build_parser, main, run  # noqa: F401
from .config import ServeConfig  # noqa: F401


def create_app(config=None, **settings):
    """The Starlette app for ``config`` (a ServeConfig, or a model base path and ServeConfig
    fields as keywords)."""
    from .app import create_app as _create_app

    return _create_app(config, **settings)
