"""The graph compiler behind ``em.jit``: tracing (``trace``), the IR (``ir``), passes
(``passes``, ``fusion``) and code generation (``codegen``, ``kernels``).

Only ``trace`` is imported with ember (the op gateway checks it); the rest loads on first use.
"""


def __getattr__(name):
    if name in ("jit", "JitFunction"):
        from . import jit as _jit

        return getattr(_jit, name)
    if name == "TraceError":
        from .trace import TraceError

        return TraceError
    raise AttributeError(f"module 'ember.compiler' has no attribute {name!r}")
