"""Numba kernels for fused elementwise groups, cached on disk.

A group of elementwise nodes over one iteration shape becomes one loop nest: each element
of each output is computed from the inputs' elements (broadcast by index), every
intermediate staying in registers. The kernel source is written to a file under the cache
directory (``$EMBER_CACHE_DIR`` or ``~/.cache/ember/kernels``) named by its hash, so numba's
own on-disk cache lets a second process load the compiled code instead of compiling again.
Numba is imported here only, i.e. only when something is compiled.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import threading

import numpy as np

from ..ops import threads

# Kernels split their leading dim over ember's threads (ops/threads.py) from
# THREADED_MIN_ELEMENTS on. numba's own parallel loop (PARALLEL_MIN_ELEMENTS) is left for a
# kernel whose leading dim is 1: numba's thread pool and OpenBLAS's spinning threads contend
# for the two cores, which costs more than a second thread gains.
THREADED_MIN_ELEMENTS = 1 << 19
PARALLEL_MIN_ELEMENTS = 1 << 21
_LOADED: dict = {}
_LOADING = threading.Lock()


def cache_dir():
    root = os.environ.get("EMBER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ember")
    path = os.path.join(root, "kernels")
    os.makedirs(path, exist_ok=True)
    return path


def _literal_expr(a):
    value = a.reshape(()).item()
    if a.dtype == np.bool_:
        return repr(bool(value))
    if isinstance(value, float) and not np.isfinite(value):
        value = "np.nan" if np.isnan(value) else ("np.inf" if value > 0 else "-np.inf")
        return f"np.{a.dtype.name}({value})"
    return f"np.{a.dtype.name}({value!r})"


def element_body(shape, inputs, members, outputs, aliases=None):
    """The loop body computing one element of every output of a fused group, as lines of
    source: (lines to hoist before the loops, lines inside them). The loop indices are
    ``a0, a1, ...`` over ``shape``; input ``x`` is read from ``x_arr`` (broadcast by index),
    output ``t`` is written to ``out_t``. Arguments as in ``kernel_source``."""
    nd = max(len(shape), 1)
    loops = [f"a{k}" for k in range(nd)]
    aliases = aliases or {}  # input position -> output position: the input is that output's array
    body = []
    hoisted = []  # one-element inputs (scalars, Adam's hyperparameters) are read once, before the
    #               loops: read inside, LLVM must assume an output store may change them and
    #               neither hoists them nor vectorizes the loop
    for position, (name, ishape, lit) in enumerate(inputs):
        if ishape is None:
            body.append(f"{name} = {_literal_expr(lit)}")
            continue
        ishape = tuple(ishape) or (1,)  # 0-d inputs arrive reshaped to (1,)
        # right-aligned broadcasting: size-1 (or missing) dims read index 0
        idx = []
        offset = nd - max(len(ishape), 1)
        for k in range(max(len(ishape), 1)):
            size = ishape[k] if ishape else 1
            full = shape[offset + k] if shape else 1
            idx.append("0" if size == 1 and full != 1 else loops[offset + k])
        # a state array updated in place is read through its output argument: two arguments that
        # alias make LLVM's runtime overlap check fail, and the loop runs unvectorized (5x slower)
        source = f"out_{outputs[aliases[position]]}" if position in aliases else f"{name}_arr"
        (hoisted if all(i == "0" for i in idx) else body).append(f"{name} = {source}[{', '.join(idx)}]")
    body += [f"{name} = {expr}" for name, expr in members]
    body += [f"out_{o}[{', '.join(loops)}] = {o}" for o in outputs]
    return hoisted, body


def kernel_parameters(inputs, outputs, aliases=None):
    """The array parameters of a fused group's kernel, in call order: inputs (``x_arr``) then
    outputs (``out_t``); an input aliased to an output is read through that output."""
    aliases = aliases or {}
    return [f"{name}_arr" for k, (name, ishape, _) in enumerate(inputs) if ishape is not None and k not in aliases] + \
        [f"out_{o}" for o in outputs]


def kernel_source(shape, inputs, members, outputs, aliases=None):
    """Source of a module with ``kernel`` (parallel) and ``kernel_serial`` functions.

    shape: the iteration shape; inputs: list of (name, shape or None for an inlined literal,
    literal array); members: list of (name, expression); outputs: list of member names.
    """
    loops = [f"a{k}" for k in range(max(len(shape), 1))]
    params = kernel_parameters(inputs, outputs, aliases)
    hoisted, body = element_body(shape, inputs, members, outputs, aliases)

    def function(fname, parallel):
        lines = [f"@numba.njit(parallel={parallel}, cache=True, nogil=True, error_model='numpy', fastmath=False)",
                 f"def {fname}({', '.join(params)}):"]
        ref = f"out_{outputs[0]}"
        indent = "    "
        lines += [indent + h for h in hoisted]
        for k, var in enumerate(loops):
            rng = "numba.prange" if (k == 0 and parallel) else "range"
            lines.append(f"{indent}for {var} in {rng}({ref}.shape[{k}]):")
            indent += "    "
        lines += [indent + b for b in body]
        return "\n".join(lines)

    return "\n".join(["# ember fused kernel (format 3)", *kernel_imports(members), "", "",
                      function("kernel", True), "", "", function("kernel_serial", False), ""])


def kernel_imports(members):
    """The import lines of a kernel module whose expressions are ``members``."""
    lines = ["import math", "import numba", "import numpy as np"]
    if any("fast_" in expr for _, expr in members):  # only then: other kernels' sources stay as they were
        lines.append("from ember.compiler.fastmath import fast_exp, fast_sigmoid, fast_tanh")
    return lines


#: the modules kernel sources import numba functions from. numba's disk cache of a kernel is
#: keyed on its own file only, so their sources are part of every kernel's name: a change to
#: them (a new ember) compiles the kernels again instead of loading code built from the old ones
_KERNEL_HELPERS = ("fastmath.py", "native.py")


@functools.cache
def _helpers_digest():
    h = hashlib.sha256()
    for name in _KERNEL_HELPERS:
        with open(os.path.join(os.path.dirname(__file__), name), "rb") as f:
            h.update(f.read())
    return h.digest()


def load_kernel_module(source):
    digest = hashlib.sha256(_helpers_digest() + source.encode()).hexdigest()[:24]
    mod = _LOADED.get(digest)
    if mod is not None:
        return mod
    with _LOADING:  # threads compiling their first calls at once load each module once
        mod = _LOADED.get(digest)
        if mod is None:
            mod = _LOADED[digest] = _load(digest, source)
    return mod


def _load(digest, source):
    path = os.path.join(cache_dir(), f"k_{digest}.py")
    if not os.path.exists(path):  # never rewrite: numba's cache is keyed on the file's timestamp
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    name = f"ember_kernel_{digest}"  # top-level: numba's cache re-imports the module by name
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_kernel(shape, inputs, members, outputs, out_dtypes, out_buffers=None, aliases=None):
    """A callable ``f(*input_arrays) -> tuple of output arrays`` running the fused group.

    ``out_buffers[i]``: an array to write output i into (a state array updated in place, or a
    buffer reused by every run), or None for a new array per run.
    """
    size = int(np.prod(shape)) if shape else 1
    full_shape = tuple(shape)
    # every input either full-size or one element (Adam's update, activations and their
    # gradients): one flat loop, which LLVM vectorizes; a loop nest per dimension it often does not
    flat = (len(full_shape) > 1 and all(ishape is None or tuple(ishape) == full_shape or int(np.prod(ishape)) == 1
                                        for _, ishape, _ in inputs)
            and all(b is None or b.flags.c_contiguous for b in (out_buffers or ())))
    if flat:
        shape = (size,)
        inputs = [(name, ishape if ishape is None else ((size,) if tuple(ishape) == full_shape else ()), lit)
                  for name, ishape, lit in inputs]
    aliases = aliases or {}
    source = kernel_source(shape, inputs, members, outputs, aliases)
    array_positions = [k for k, (_, ishape, _) in enumerate(inputs) if ishape is not None]
    # run() receives every array input; those read through an output argument are dropped
    passed = [i for i, k in enumerate(array_positions) if k not in aliases]
    drop = len(passed) != len(array_positions)
    mod = load_kernel_module(source)
    run_shape = tuple(shape) if shape else (1,)
    lead, nd = run_shape[0], len(run_shape)
    # large kernels split their leading dim (the flat range, or a loop nest's first axis) over
    # ember's threads; an input spanning that dim is sliced with it, a broadcast one is shared
    threaded = size >= THREADED_MIN_ELEMENTS and lead > 1
    fn = mod.kernel if size >= PARALLEL_MIN_ELEMENTS and not threaded else mod.kernel_serial
    dtypes = [np.dtype(d) for d in out_dtypes]
    scalar_out = not shape

    full = full_shape if flat else tuple(run_shape)

    buffers = list(out_buffers or [None] * len(dtypes))
    fixed = [None if b is None else b.reshape(run_shape) for b in buffers]

    def run(*arrays):
        # 0-d inputs become (1,); full-size inputs in another memory order (e.g. a transposed
        # gradient) are copied to C order, since the loop nest walks memory in C order
        arrays = tuple(a.reshape(1) if a.ndim == 0 else
                       (np.ascontiguousarray(a) if a.shape == full and not a.flags.c_contiguous else a)
                       for a in arrays)
        if drop:
            arrays = tuple(arrays[i] for i in passed)
        if flat:
            arrays = tuple(a.reshape(-1) for a in arrays)
        outs = tuple(np.empty(run_shape, d) if f is None else f for f, d in zip(fixed, dtypes))
        if threaded:
            threads.over_batch(lead, lambda lo, hi: fn(*[x[lo:hi] if x.ndim == nd and x.shape[0] == lead else x
                                                         for x in arrays], *[o[lo:hi] for o in outs]), size)
        else:
            fn(*arrays, *outs)
        if scalar_out:
            return tuple(o.reshape(()) for o in outs)
        if flat:  # a reused buffer goes back as the very array it is (its full-shape original)
            return tuple(o.reshape(full_shape) if b is None else b for o, b in zip(outs, buffers))
        return outs

    run.source = source
    run.numba_function = fn
    return run
