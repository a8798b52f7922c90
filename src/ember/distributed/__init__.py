"""Data-parallel training over MPI (``mpirun -np N python train.py``), as torch.distributed / Horovod.

One process per rank; every rank holds the whole model and trains on its shard of the data,
and gradients are averaged over the ranks during backward. Without a launcher everything works
as a group of one process. See docs/distributed.md.
"""

from .comm import (  # noqa: F401
    DistributedError,
    DistributedTimeoutError,
    Work,
    all_reduce,
    barrier,
    broadcast,
    get_timeout,
    init,
    is_initialized,
    is_main_process,
    rank,
    world_size,
)
from .ddp import DistributedDataParallel, GradientReducer, broadcast_parameters  # noqa: F401
from .sampler import DistributedSampler  # noqa: F401
