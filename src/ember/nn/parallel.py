"""PyTorch's spelling ``nn.parallel.DistributedDataParallel`` of ``em.distributed.DistributedDataParallel``
(looked up on first use: ember.distributed itself builds on ember.nn)."""


def __getattr__(name):
    if name == "DistributedDataParallel":
        from ..distributed.ddp import DistributedDataParallel

        return DistributedDataParallel
    raise AttributeError(f"module 'ember.nn.parallel' has no attribute '{name}'")
