"""MultiheadAttention, TransformerEncoderLayer, TransformerEncoder (PyTorch layout and names)."""

from __future__ import annotations

import copy
import math

import numpy as np

from ... import creation
from ...errors import ShapeError
from ...ops import elementwise as ew
from ...ops import movement as mv
from .. import functional as F
from .. import init
from ..module import Module, Parameter
from .activation import Dropout
from .container import ModuleList
from .linear import Linear, _dtype_np
from .normalization import LayerNorm


def _float_mask(mask, dtype, what):
    """PyTorch's mask convention for MHA: bool True = NOT allowed; floats are added."""
    if mask is None:
        return None
    if mask.dtype.name == "bool":
        return ew.where(mask, -np.inf, 0.0).astype(dtype)
    if not mask.dtype.is_floating_point:
        raise ShapeError(f"MultiheadAttention: {what} must be bool or float, got {mask.dtype}")
    return mask.astype(dtype)


class MultiheadAttention(Module):
    """Multi-head attention. Inputs (L, N, E) — or (N, L, E) with ``batch_first`` — returns
    (output, weights averaged over heads or None)."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv/add_zero_attn are not "
                                      "supported by ember")
        d = _dtype_np(dtype)
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first = batch_first
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(creation.empty(3 * embed_dim, embed_dim, dtype=d))
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.q_proj_weight = Parameter(creation.empty(embed_dim, embed_dim, dtype=d))
            self.k_proj_weight = Parameter(creation.empty(embed_dim, self.kdim, dtype=d))
            self.v_proj_weight = Parameter(creation.empty(embed_dim, self.vdim, dtype=d))
            self.register_parameter("in_proj_weight", None)
        self.in_proj_bias = Parameter(creation.empty(3 * embed_dim, dtype=d)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self._reset_parameters()

    def _reset_parameters(self):
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def _project(self, query, key, value):
        e = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if query is key and key is value:  # self-attention: one matmul for q, k and v
                q, k, v = mv.chunk(F.linear(query, w, b), 3, -1)
                return q, k, v
            wq, wk, wv = w[:e], w[e:2 * e], w[2 * e:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            same_kv = key is value
            same_qk = query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        if query.shape[-1] != self.embed_dim:
            raise ShapeError(f"MultiheadAttention(embed_dim={self.embed_dim}): query has "
                             f"{query.shape[-1]} features (shape {query.shape})")
        n, tgt, _ = query.shape
        src = key.shape[1]
        h, hd = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)
        q = q.reshape(n, tgt, h, hd).transpose(1, 2)  # (N, h, L, d)
        k = k.reshape(n, src, h, hd).transpose(1, 2)
        v = v.reshape(n, src, h, hd).transpose(1, 2)

        mask = _float_mask(attn_mask, q.dtype, "attn_mask")
        if mask is not None and mask.ndim == 3:  # (N*h, L, S)
            mask = mask.reshape(n, h, tgt, src)
        if is_causal and attn_mask is None:
            mask = creation.tensor(np.triu(np.full((tgt, src), -np.inf, dtype=q.data.dtype), 1))
        kpm = _float_mask(key_padding_mask, q.dtype, "key_padding_mask")
        if kpm is not None:
            kpm = kpm.reshape(n, 1, 1, src)
            mask = kpm if mask is None else mask + kpm

        scores = (q @ k.mT) * (1.0 / math.sqrt(hd))
        if mask is not None:
            scores = scores + mask
        attn = F.softmax(scores, -1)
        if self.dropout and self.training:
            attn = F.dropout(attn, self.dropout, True)
        out = (attn @ v).transpose(1, 2).reshape(n, tgt, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.mean(1) if average_attn_weights else attn
        return out, (weights.squeeze(0) if unbatched else weights)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _activation(act):
    if callable(act):
        return act
    if act == "relu":
        return F.relu
    if act == "gelu":
        return F.gelu
    raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {act!r}")


class TransformerEncoderLayer(Module):
    """Self-attention + feed-forward block (post-norm by default, ``norm_first`` for pre-norm)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True, dtype=None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class TransformerEncoder(Module):
    """A stack of ``num_layers`` copies of ``encoder_layer`` (and an optional final norm)."""

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True):
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return x if self.norm is None else self.norm(x)
