"""ember's CPU threads: batch-parallel NumPy kernels, one thread per core.

NumPy runs copies and elementwise passes on one core, and OpenBLAS threads one GEMM at a
time. A convolution then leaves the second core idle through its im2col copies and col2im
adds. Here an op splits its batch into one contiguous range per core; each thread walks its
range in chunks small enough to stay in its core's cache. NumPy releases the GIL in copies,
ufuncs and matmul, so the threads run truly in parallel (oneDNN runs PyTorch's convolutions
the same way). Inside such a region BLAS runs on one thread per worker.

OpenBLAS's own threads must then stay out of the way: by default they spin for about 0.1 s
after each threaded call, waiting for more work, and on two cores a spinning thread halves
the speed of the worker it shares a core with (measured: region-parallel convolutions ran
slower than serial ones). So on first use ember sets OpenBLAS's idle spin to ``SPIN_EXPONENT``
(``OPENBLAS_THREAD_TIMEOUT``: 2**n cycles, about 0.1 ms) and restarts its thread pool, which
OpenBLAS re-creates on its next threaded call. A timeout the user set is left as it is.

This needs NumPy's BLAS to be OpenBLAS with its own (pthreads) thread pool, as in NumPy's
wheels, found through threadpoolctl. With any other BLAS, ember runs one thread and leaves
BLAS alone. The thread count is BLAS's (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``), so a
process limited to one thread stays on one; ``EMBER_NUM_THREADS`` overrides it.
"""

from __future__ import annotations

import os
import threading

import numpy as np

#: below this much work an op runs on the calling thread: handing a range to another thread
#: and back costs 70-100 us on these VMs. Work is counted in elements passed through a NumPy
#: loop (about 0.3 ns each); a BLAS multiply-add counts as 1/MACS_PER_ELEMENT of one
PARALLEL_MIN_WORK = 1 << 20
MACS_PER_ELEMENT = 8
#: a chunk's working set (e.g. its im2col columns): small enough to stay in one core's L2 cache
CHUNK_BYTES = 1 << 20
#: OpenBLAS's idle spin after a threaded call, 2**n cycles (its default is 2**28, ~0.1 s).
#: A thread still spinning when one of ember's regions starts takes a core from its worker: in
#: the compiled cnn step a 2x2 pooling gradient right after a dense layer's GEMM took 0.89 ms
#: on two threads against 0.33 on one. 2**18 (~0.1 ms) against 2**21, alternated in one
#: process (Zen 5): cnn step 12.0 -> 11.2 ms; lstm, gpt and mlp steps within the noise. (The
#: LSTM's recurrence no longer needs BLAS's threads: it runs its own, compiler/native.py)
SPIN_EXPONENT = 18

_STATE: dict = {}
_REGION = threading.Lock()  # one parallel region at a time: BLAS's thread count is process-wide
_SETUP = threading.Lock()


def _openblas():
    """ctypes handle of NumPy's OpenBLAS and its (get, set) thread-count functions, if it runs
    its own (pthreads) thread pool; else None."""
    try:
        import ctypes

        import numpy as np
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    # NumPy's own copy first: wheels keep it in numpy.libs/ beside the package (Linux, Windows)
    # or inside it (macOS). SciPy's wheels bring a second OpenBLAS in scipy.libs/, and
    # threadpoolctl's order between the two changes with the string hash seed
    numpy_dir = os.path.dirname(np.__file__)
    own = (numpy_dir + os.sep, numpy_dir + ".libs" + os.sep)
    found = [c for c in ThreadpoolController().select(internal_api="openblas").lib_controllers
             if getattr(c, "threading_layer", None) == "pthreads"]
    found.sort(key=lambda c: not str(c.filepath).startswith(own))
    for controller in found:
        lib = ctypes.CDLL(controller.filepath)
        pair = _symbols(lib, "openblas_get_num_threads", "openblas_set_num_threads")
        if pair is not None:
            get, set_ = pair
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            return lib, get, set_
    return None


def _symbols(lib, *names):
    """The functions ``names`` of an OpenBLAS under one of its builds' spellings (SciPy's wheels
    prefix ``scipy_``; 64-bit-integer builds suffix ``64_``), or None if it lacks any."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            found = [getattr(lib, f"{prefix}{name}{suffix}", None) for name in names]
            if all(fn is not None for fn in found):
                return found
    return None


def _shorten_spin(lib) -> bool:
    """Restart OpenBLAS's thread pool with a short idle spin; False if this OpenBLAS cannot."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return True  # the user's choice
    read_env = getattr(lib, "openblas_read_env", None)
    shutdown = getattr(lib, "blas_thread_shutdown_", None)
    if read_env is None or shutdown is None:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(SPIN_EXPONENT)
    read_env()
    shutdown()  # OpenBLAS starts its threads again, with the new timeout, on its next threaded call
    return True


def _setup():
    with _SETUP:
        if not _STATE:
            _start()
    return _STATE


def _start():
    """Find BLAS, pick the worker count and start the pool (once, under _SETUP)."""
    from concurrent.futures import ThreadPoolExecutor, wait  # here: keeps `import ember` light

    found = _openblas()
    env = os.environ.get("EMBER_NUM_THREADS")
    workers = 1
    if found is not None and found[1]() > 1 or env:
        workers = int(env) if env else found[1]()
    if workers > 1 and (found is None or not _shorten_spin(found[0])):
        workers = 1
    workers = max(1, min(workers, os.cpu_count() or 1))
    # one update: other threads read _STATE without the lock
    _STATE.update(blas=found[1:] if found else None, lib=found[0] if found else None, workers=workers, wait=wait,
                  pool=ThreadPoolExecutor(workers - 1, thread_name_prefix="ember") if workers > 1 else None)


def workers() -> int:
    """Threads a batch-parallel op uses."""
    return _setup()["workers"]


class serial_blas:
    """``with serial_blas():`` BLAS runs on the calling thread only; its setting is restored
    on exit. A no-op when ember leaves BLAS alone (one worker, or a BLAS it cannot control)."""

    __slots__ = ("saved",)

    def __enter__(self):
        state = _STATE or _setup()
        self.saved = 0
        if state["workers"] > 1:
            get, set_ = state["blas"]
            self.saved = get()
            if self.saved != 1:
                set_(1)
        return self

    def __exit__(self, *exc):
        if self.saved > 1:
            _STATE["blas"][1](self.saved)


def gemm_address(dtype):
    """(address of NumPy's OpenBLAS ``cblas_sgemm`` or ``cblas_dgemm`` for float32/float64,
    whether its integers are 64-bit), for numba kernels (compiler/native.py); None if ember
    does not control that BLAS or the dtype has no GEMM there."""
    state = _STATE or _setup()
    cache = state.setdefault("gemm", {})
    char = np.dtype(dtype).char
    if char not in cache:
        cache[char] = _find_gemm(state["lib"], char) if state["lib"] is not None and char in "fd" else None
    return cache[char]


def _find_gemm(lib, char):
    import ctypes

    pair = _symbols(lib, "cblas_sgemm" if char == "f" else "cblas_dgemm", "openblas_get_config")
    if pair is None:
        return None
    gemm, get_config = pair
    get_config.restype, get_config.argtypes = ctypes.c_char_p, []
    # the build's integer width: OpenBLAS names it in its configuration string
    return ctypes.cast(gemm, ctypes.c_void_p).value, b"USE64BITINT" in get_config()


def team(part) -> int:
    """Run ``part(index, count)`` for index 0..count-1 on ``count`` = workers() threads at the
    same time, BLAS on one thread each, and return count; the parts may wait for each other
    (all are running). Returns 0 and runs nothing with one worker or inside another region."""
    state = _STATE or _setup()
    count = state["workers"]
    if count < 2 or not _REGION.acquire(blocking=False):
        return 0
    _in_region(state, part, [(i, count) for i in range(count)])
    return count


def _in_region(state, part, args) -> list:
    """``part(*a)`` for each ``a`` of ``args`` at once, the first on the calling thread and one
    per pool thread (the pool has a thread for each other worker and is idle in a region), BLAS
    on one thread; the results in order. The caller holds _REGION: this releases it."""
    try:
        with serial_blas():
            futures = [state["pool"].submit(part, *a) for a in args[1:]]
            try:
                first = part(*args[0])
            finally:  # the region (and BLAS's limit) lasts until every worker is done
                state["wait"](futures)
            return [first] + [f.result() for f in futures]
    finally:
        _REGION.release()


def chunk_size(bytes_per_item: int) -> int:
    """Batch items per chunk so that a chunk's working set is about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // max(1, bytes_per_item))


def chunks(lo: int, hi: int, size: int):
    """Consecutive (start, stop) ranges of at most ``size`` covering [lo, hi)."""
    for a in range(lo, hi, size):
        yield a, min(a + size, hi)


def over_batch(n: int, part, work: int) -> list:
    """Run ``part(lo, hi)`` over [0, n) split into one contiguous range per worker, BLAS on one
    thread, and return the results in range order. ``work`` is the op's total work: below
    PARALLEL_MIN_WORK, or inside another region, ``part(0, n)`` runs on the calling thread."""
    state = _STATE or _setup()
    k = min(state["workers"], n)
    if k < 2 or work < PARALLEL_MIN_WORK or not _REGION.acquire(blocking=False):
        return [part(0, n)]
    return _in_region(state, part, [(i * n // k, (i + 1) * n // k) for i in range(k)])
