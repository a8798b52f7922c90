"""The workload models written once in PyTorch style and built with either ``torch`` or
``ember`` (whose ``nn``, ``nn.functional`` and ``optim`` follow PyTorch's API), so ember-eager,
ember-jit, torch and torch-compile run line-for-line the same code."""

from __future__ import annotations


def build_model(lib, s: dict):
    """``lib`` is the ``torch`` or ``ember`` module; returns an ``nn.Module`` for spec ``s``."""
    nn, F = lib.nn, lib.nn.functional
    name = s["name"]
    if name in ("mlp", "infer1"):
        return nn.Sequential(nn.Linear(s["in_dim"], s["hidden"]), nn.ReLU(),
                             nn.Linear(s["hidden"], s["hidden"]), nn.ReLU(),
                             nn.Linear(s["hidden"], s["classes"]))
    if name == "cnn":
        flat = s["c2"] * (s["image"] // 4) ** 2
        return nn.Sequential(nn.Conv2d(1, s["c1"], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(s["c1"], s["c2"], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(flat, s["dense"]), nn.ReLU(),
                             nn.Linear(s["dense"], s["classes"]))
    if name == "lstm":
        class CharLSTM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(s["vocab"], s["embed"])
                self.lstm = nn.LSTM(s["embed"], s["hidden"], batch_first=True)
                self.head = nn.Linear(s["hidden"], s["vocab"])

            def forward(self, idx):
                out, _ = self.lstm(self.embed(idx))
                return self.head(out)

        return CharLSTM()
    if name == "gpt":
        d, h = s["d_model"], s["heads"]

        class CausalSelfAttention(nn.Module):
            def __init__(self):
                super().__init__()
                self.qkv = nn.Linear(d, 3 * d)
                self.proj = nn.Linear(d, d)

            def forward(self, x):
                b, t, _ = x.shape
                q, k, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return self.proj(y.transpose(1, 2).reshape(b, t, d))

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln1 = nn.LayerNorm(d)
                self.attn = CausalSelfAttention()
                self.ln2 = nn.LayerNorm(d)
                self.mlp = nn.Sequential(nn.Linear(d, s["mlp_ratio"] * d), nn.GELU(approximate="tanh"),
                                         nn.Linear(s["mlp_ratio"] * d, d))

            def forward(self, x):
                x = x + self.attn(self.ln1(x))
                return x + self.mlp(self.ln2(x))

        class GPT(nn.Module):
            def __init__(self):
                super().__init__()
                self.tok = nn.Embedding(s["vocab"], d)
                self.pos = nn.Embedding(s["context"], d)
                self.blocks = nn.ModuleList([Block() for _ in range(s["layers"])])
                self.ln_f = nn.LayerNorm(d)
                self.head = nn.Linear(d, s["vocab"], bias=False)
                for m in self.modules():
                    if isinstance(m, (nn.Linear, nn.Embedding)):
                        nn.init.normal_(m.weight, 0.0, 0.02)
                        if isinstance(m, nn.Linear) and m.bias is not None:
                            nn.init.zeros_(m.bias)

            def forward(self, idx):
                x = self.tok(idx) + self.pos(lib.arange(idx.shape[1]))
                for block in self.blocks:
                    x = block(x)
                return self.head(self.ln_f(x))

        return GPT()
    raise ValueError(name)


def make_optimizer(lib, s: dict, params):
    if s["optimizer"] == "adamw":
        return lib.optim.AdamW(params, lr=s["lr"], weight_decay=s["weight_decay"])
    return lib.optim.Adam(params, lr=s["lr"])


def loss_fn(lib, out, y):
    return lib.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
