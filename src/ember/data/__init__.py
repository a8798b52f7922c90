"""Data loading (PyTorch's names): datasets, samplers, ``DataLoader``; ``datasets`` has real data
readers (digits, MNIST, Fashion-MNIST, CIFAR-10, the Python stdlib as text)."""

from . import datasets  # noqa: F401
from .dataset import (  # noqa: F401
    BatchSampler,
    ConcatDataset,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    random_split,
)
from .loader import DataLoader, default_collate  # noqa: F401
