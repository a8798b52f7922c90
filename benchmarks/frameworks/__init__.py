"""The frameworks the runner knows: name -> (adapter module, options, pip packages it needs).

An adapter module has ``available(options)``, ``versions()``, optionally ``env(options,
threads)`` (environment for its subprocess, set before anything is imported), ``setup(options,
threads)`` (thread settings after import) and ``build(spec, data, options)`` returning a runner
(see ``benchmarks/harness.py``).
"""

from __future__ import annotations

import importlib

FRAMEWORKS = {
    "ember-eager": ("ember_eager", {}),
    "ember-jit": ("ember_eager", {"jit": True}),
    "torch": ("torch_eager", {}),
    "torch-compile": ("torch_eager", {"compile": True}),
    "keras-tf": ("keras_backend", {"backend": "tensorflow"}),
    "keras-jax": ("keras_backend", {"backend": "jax"}),
    "jax": ("jax_pure", {}),
}


def adapter(name: str):
    module, options = FRAMEWORKS[name]
    return importlib.import_module(f"{__name__}.{module}"), dict(options)
