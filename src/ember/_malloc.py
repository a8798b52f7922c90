"""Keep NumPy's large temporaries out of fresh mmaps (glibc only).

Every eager op and every node of a compiled graph allocates its result with malloc. glibc
serves blocks above its mmap threshold (dynamic, 128 KiB at first) with a fresh ``mmap`` and
unmaps them on free, and trims the heap's free top down to a small threshold; either way the
next step's arrays land on pages the kernel must fault in and zero again. For a GPT training
step on these machines that is ~40% of eager time and ~20% of jitted time. Raising both
thresholds once lets freed activations be reused like a framework's caching allocator would.
Set ``EMBER_MALLOC_TUNING=0`` to leave malloc alone.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold
TRIM_THRESHOLD = 256 << 20


def tune() -> bool:
    """Apply the thresholds; True if they were set (glibc, not disabled)."""
    if os.environ.get("EMBER_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; musl and others have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


TUNED = tune()
