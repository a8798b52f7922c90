"""Embedding."""

from __future__ import annotations

from ... import creation
from .. import functional as F
from .. import init
from ..module import Module, Parameter
from .linear import _dtype_np


class Embedding(Module):
    """A lookup table: integer indices (any shape) -> rows of weight (num_embeddings, dim)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 _weight=None, dtype=None):
        super().__init__()
        if max_norm is not None:
            raise NotImplementedError("Embedding(max_norm=...) is not supported by ember; "
                                      "renormalise the weight explicitly instead")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} must be within "
                                 f"num_embeddings ({num_embeddings})")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        if _weight is not None:
            self.weight = Parameter(_weight)
        else:
            self.weight = Parameter(creation.empty(num_embeddings, embedding_dim, dtype=_dtype_np(dtype)))
            self.reset_parameters()

    def reset_parameters(self):
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None):
        n, d = embeddings.shape
        m = cls(n, d, padding_idx=padding_idx, _weight=embeddings.data.copy()
                if hasattr(embeddings, "data") else embeddings)
        m.weight.requires_grad = not freeze
        return m

    def forward(self, idx):
        return F.embedding(idx, self.weight, self.padding_idx)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
