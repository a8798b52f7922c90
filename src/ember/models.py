"""Small reference models used by the examples, tests and benchmarks: a character-level GPT
and an LSTM language model. Both are ``em.Model`` subclasses (so ``fit`` and ``em.save`` work)
written in plain PyTorch style."""

from __future__ import annotations

import numpy as np

from . import nn
from .autograd.engine import no_grad
from .nn import functional as F
from .ops.movement import cat
from .random import multinomial
from .tensor import Tensor
from .training.model import Model


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP."""

    def __init__(self, d_model, n_heads, mlp_ratio=4, dropout=0.0, gelu="tanh"):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(approximate=gelu),
                                 nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(Model):
    """A character-level GPT: token + position embeddings, ``n_layers`` pre-LN blocks, a final
    LayerNorm and a vocabulary head (optionally tied to the token embedding).

    Input: int64 token ids (batch, time) with time <= context. Output: logits (batch, time, vocab).
    """

    def __init__(self, vocab_size=96, context=64, d_model=128, n_heads=4, n_layers=2, mlp_ratio=4,
                 dropout=0.0, tied=False, gelu="tanh"):
        super().__init__(name="gpt")
        self.context = context
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, mlp_ratio, dropout, gelu) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.tied = tied
        self.head = None if tied else nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"GPT: sequence length {t} exceeds the context of {self.context} tokens")
        x = self.tok(idx) + self.pos(Tensor._make(np.arange(t)))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x @ self.tok.weight.mT if self.tied else self.head(x)

    @no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sample ``max_new_tokens`` continuations of ``idx`` (batch, time)."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.context:])[:, -1] / max(temperature, 1e-6)
            if top_k is not None:
                kth = np.sort(logits.data, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
                logits = logits.masked_fill(Tensor._make(logits.data < kth), -np.inf)
            nxt = multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = cat([idx, nxt], 1)
        self.train(was_training)
        return idx


class CharLSTM(Model):
    """Embedding -> LSTM -> Linear over every step: a character language model.

    Input: int64 ids (batch, time). Output: logits (batch, time, vocab).
    """

    def __init__(self, vocab_size=96, embed_dim=64, hidden_size=256, num_layers=1, dropout=0.0):
        super().__init__(name="char_lstm")
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, state=None):
        out, _ = self.lstm(self.embed(idx), state)
        return self.head(out)

    @no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None):
        was_training = self.training
        self.eval()
        out, state = self.lstm(self.embed(idx))
        logits = self.head(out[:, -1])
        for _ in range(max_new_tokens):
            nxt = multinomial(F.softmax(logits / max(temperature, 1e-6), -1), 1, generator=generator)
            idx = cat([idx, nxt], 1)
            out, state = self.lstm(self.embed(nxt), state)
            logits = self.head(out[:, -1])
        self.train(was_training)
        return idx
