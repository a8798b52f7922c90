"""The process group: MPI ``COMM_WORLD`` through mpi4py, or a single process without MPI.

Every collective is started nonblocking (``Iallreduce``, ``Ibcast``, ``Ibarrier``) and then
polled with a deadline, so a rank that died or got stuck makes the others raise
``DistributedTimeoutError`` naming the collective after ``EMBER_DIST_TIMEOUT`` seconds instead
of hanging forever. Once a job has more than one rank, an uncaught exception in any rank
prints its traceback and calls ``MPI_Abort``, which ends every rank of the job.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

DEFAULT_TIMEOUT = 300.0

# environment variables that MPI launchers (MPICH's hydra, Open MPI's prte, Slurm's PMI) set
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


class DistributedError(RuntimeError):
    """A collective operation or the process group failed."""


class DistributedTimeoutError(DistributedError, TimeoutError):
    """A collective did not complete within the timeout: another rank died, hangs, or called a
    different collective."""


class _Group:
    comm = None          # mpi4py's COMM_WORLD, or None for a single process without MPI
    rank = 0
    size = 1
    timeout = DEFAULT_TIMEOUT
    initialized = False


_G = _Group()


def _timeout_from_env():
    raw = os.environ.get("EMBER_DIST_TIMEOUT")
    if raw is None or raw == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"init: EMBER_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def init(timeout: float | None = None) -> None:
    """Join the job's process group (``mpirun -np N python train.py``); a no-op if already joined.

    Without a launcher this is a group of one process (rank 0, world size 1), with or without
    mpi4py installed. ``timeout`` (seconds; default ``EMBER_DIST_TIMEOUT`` or 300) bounds how
    long any collective waits for the other ranks.
    """
    if _G.initialized:
        if timeout is not None:
            _G.timeout = _check_timeout(timeout)
        return
    _G.timeout = _timeout_from_env() if timeout is None else _check_timeout(timeout)
    try:
        from mpi4py import MPI
    except ImportError:
        if any(v in os.environ for v in _LAUNCHER_VARS):
            raise DistributedError(
                "init: this process was started by an MPI launcher, but mpi4py is not installed; "
                "install it with `pip install 'ember[distributed]'` (mpi4py and the mpich wheel)") from None
        MPI = None
    if MPI is not None:
        _G.comm = MPI.COMM_WORLD
        _G.rank, _G.size = _G.comm.Get_rank(), _G.comm.Get_size()
    _G.initialized = True
    if _G.size > 1:
        _install_abort_on_uncaught_exception()


def _check_timeout(timeout):
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise DistributedError(f"init: timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _install_abort_on_uncaught_exception():
    previous = sys.excepthook

    def abort_job(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.write(f"ember.distributed: rank {_G.rank} of {_G.size} failed; aborting the MPI job\n")
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(0.5)  # MPI_Abort tears down the launcher's output forwarding: let it deliver the traceback
        _G.comm.Abort(1)

    sys.excepthook = abort_job


def _group() -> _Group:
    if not _G.initialized:
        init()
    return _G


def is_initialized() -> bool:
    """Whether ``init()`` has run (the functions below call it on first use)."""
    return _G.initialized


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1."""
    return _group().rank


def world_size() -> int:
    """The number of processes in the job (1 when not launched by mpirun)."""
    return _group().size


def is_main_process() -> bool:
    """True on rank 0: the rank that prints and writes files."""
    return _group().rank == 0


def get_timeout() -> float:
    return _group().timeout


# ---- waiting with a deadline ------------------------------------------------------------------

class Work:
    """A started collective (PyTorch's ``Work``): ``wait()`` blocks until it is done, raising
    ``DistributedTimeoutError`` after the group's timeout."""

    __slots__ = ("request", "what", "done", "on_done")

    def __init__(self, request, what, on_done=None):
        self.request, self.what, self.done, self.on_done = request, what, request is None, on_done
        if self.done and on_done is not None:
            on_done()

    def test(self) -> bool:
        """Drive MPI's progress engine once; True if the collective has completed."""
        if not self.done and self.request.Test():
            self._complete()
        return self.done

    def wait(self) -> None:
        if self.done:
            return
        if self.request.Test():
            self._complete()
            return
        deadline = time.monotonic() + _G.timeout
        spins, pause = 0, 0.0
        while not self.request.Test():
            if spins < 200:  # short collectives finish within microseconds: poll without sleeping
                spins += 1
                continue
            if time.monotonic() > deadline:
                self._timed_out()
            time.sleep(pause)
            pause = min(pause * 2 or 2e-5, 5e-4)
        self._complete()

    def _complete(self):
        self.done = True
        if self.on_done is not None:
            self.on_done()

    def _timed_out(self):
        message = (f"{self.what}: rank {_G.rank} of {_G.size} timed out after {_G.timeout:g} s "
                   f"(EMBER_DIST_TIMEOUT) waiting for the other ranks. A rank has probably died or is "
                   f"stuck, or the ranks called collectives in different orders (for example a "
                   f"different number of batches per rank).")
        sys.stderr.write(f"ember.distributed: {message}\n")
        sys.stderr.flush()
        raise DistributedTimeoutError(message)


# ---- collectives ------------------------------------------------------------------------------

_OPS = ("sum", "mean", "max", "min")


def _buffer(tensor, what):
    """The contiguous ndarray behind ``tensor`` (an ember Tensor or a NumPy array)."""
    from ..tensor import Tensor

    if isinstance(tensor, Tensor):
        arr = tensor.data
    elif isinstance(tensor, np.ndarray):
        arr = tensor
    else:
        raise TypeError(f"{what}: expected an ember Tensor or a NumPy array, got {type(tensor).__name__}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise DistributedError(f"{what}: the tensor must be contiguous and writable (shape {arr.shape}, "
                               f"strides {arr.strides}); pass tensor.contiguous() / a copy")
    if arr.dtype.kind not in "fiu":
        raise DistributedError(f"{what}: dtype {arr.dtype} is not supported; use a float or integer tensor")
    return arr


def _bump_version(tensor):
    version = getattr(tensor, "_version", None)
    if version is not None:  # an in-place change: autograd must not reuse a saved old value
        version[0] += 1


def all_reduce(tensor, op: str = "sum", async_op: bool = False):
    """Reduce ``tensor`` over all ranks in place (``op``: "sum", "mean", "max" or "min").

    Returns the tensor, or with ``async_op=True`` a ``Work`` whose ``wait()`` finishes it
    (the tensor holds the result only after that).
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
    arr = _buffer(tensor, "all_reduce")
    if op == "mean" and arr.dtype.kind != "f":
        raise DistributedError(f"all_reduce: op='mean' needs a floating-point tensor, got {arr.dtype}; "
                               "use op='sum' and divide, or convert with .float()")
    g = _group()
    _bump_version(tensor)
    if g.size == 1:
        work = Work(None, "all_reduce")
    else:
        from mpi4py import MPI

        mpi_op = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        finish = (lambda: np.multiply(arr, 1.0 / g.size, out=arr)) if op == "mean" else None
        work = Work(g.comm.Iallreduce(MPI.IN_PLACE, arr, op=mpi_op), f"all_reduce(op={op!r}, shape={arr.shape}, "
                    f"dtype={arr.dtype})", finish)
    if async_op:
        return work
    work.wait()
    return tensor


def broadcast(tensor, src: int = 0, async_op: bool = False):
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every rank, in place."""
    g = _group()
    if not (isinstance(src, int) and 0 <= src < g.size):
        raise ValueError(f"broadcast: src must be a rank in [0, {g.size}), got {src!r}")
    arr = _buffer(tensor, "broadcast")
    _bump_version(tensor)
    if g.size == 1:
        work = Work(None, "broadcast")
    else:
        work = Work(g.comm.Ibcast(arr, root=src), f"broadcast(src={src}, shape={arr.shape}, dtype={arr.dtype})")
    if async_op:
        return work
    work.wait()
    return tensor


def barrier() -> None:
    """Block until every rank has reached this call."""
    g = _group()
    if g.size > 1:
        Work(g.comm.Ibarrier(), "barrier").wait()


def shared_seed(seed: int, src: int = 0) -> int:
    """Rank ``src``'s integer ``seed``, on every rank (for shuffles that must agree across ranks)."""
    box = np.array([seed], dtype=np.int64)
    broadcast(box, src)
    return int(box[0])
