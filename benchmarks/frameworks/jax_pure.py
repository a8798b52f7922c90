"""Pure JAX (``jax``): the models in ``jax.numpy`` with hand-written Adam/AdamW (PyTorch's update
rule, decoupled weight decay for AdamW) and the whole train step — forward, loss, ``jax.grad``,
update — in one ``jax.jit`` with the parameters and optimizer state donated. Images are
channels-last (NHWC, HWIO kernels); the LSTM projects all inputs in one matmul and runs the
recurrence with ``lax.scan``; attention is ``jax.nn.dot_product_attention(is_causal=True)``; GELU
is ``jax.nn.gelu(approximate=True)`` (tanh). Initialisation follows PyTorch's defaults.

Threads: XLA's CPU client sizes its thread pool from the CPUs the process may run on; the
runner restricts the subprocess to N CPUs with ``sched_setaffinity`` when the machine has more
(on a 2-core machine that is all of them) and sets
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=true --xla_force_host_platform_device_count=1``.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata

import numpy as np


def available(options) -> tuple[bool, str]:
    if importlib.util.find_spec("jax") is None:
        return False, "jax is not installed (pip install -r benchmarks/requirements.txt)"
    return True, ""


def versions() -> dict:
    return {"jax": metadata.version("jax"), "jaxlib": metadata.version("jaxlib")}


def env(options, threads: int) -> dict:
    return {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --xla_force_host_platform_device_count=1",
            "JAX_PLATFORMS": "cpu"}


def setup(options, threads: int) -> None:
    pass


def _uniform(rng, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def init_params(s, seed=0):
    """NumPy parameters (PyTorch-style initialisation), a dict of arrays."""
    rng = np.random.default_rng(seed)
    name = s["name"]
    p = {}
    if name in ("mlp", "infer1"):
        dims = [s["in_dim"], s["hidden"], s["hidden"], s["classes"]]
        for i in range(3):
            p[f"w{i}"] = _uniform(rng, (dims[i], dims[i + 1]), dims[i])
            p[f"b{i}"] = _uniform(rng, (dims[i + 1],), dims[i])
    elif name == "cnn":
        flat = s["c2"] * (s["image"] // 4) ** 2
        p["k1"] = _uniform(rng, (3, 3, 1, s["c1"]), 9)
        p["c1"] = _uniform(rng, (s["c1"],), 9)
        p["k2"] = _uniform(rng, (3, 3, s["c1"], s["c2"]), 9 * s["c1"])
        p["c2"] = _uniform(rng, (s["c2"],), 9 * s["c1"])
        p["w3"] = _uniform(rng, (flat, s["dense"]), flat)
        p["b3"] = _uniform(rng, (s["dense"],), flat)
        p["w4"] = _uniform(rng, (s["dense"], s["classes"]), s["dense"])
        p["b4"] = _uniform(rng, (s["classes"],), s["dense"])
    elif name == "lstm":
        h, e, v = s["hidden"], s["embed"], s["vocab"]
        p["embed"] = rng.standard_normal((v, e)).astype(np.float32)
        p["w_ih"] = _uniform(rng, (e, 4 * h), h)
        p["w_hh"] = _uniform(rng, (h, 4 * h), h)
        p["b"] = _uniform(rng, (4 * h,), h) + _uniform(rng, (4 * h,), h)
        p["w_out"] = _uniform(rng, (h, v), h)
        p["b_out"] = _uniform(rng, (v,), h)
    elif name == "gpt":
        d, v, r = s["d_model"], s["vocab"], s["mlp_ratio"]

        def normal(*shape):
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)

        p["tok"], p["pos"] = normal(v, d), normal(s["context"], d)
        p["blocks"] = [{"ln1_g": np.ones(d, np.float32), "ln1_b": np.zeros(d, np.float32),
                        "qkv_w": normal(d, 3 * d), "qkv_b": np.zeros(3 * d, np.float32),
                        "proj_w": normal(d, d), "proj_b": np.zeros(d, np.float32),
                        "ln2_g": np.ones(d, np.float32), "ln2_b": np.zeros(d, np.float32),
                        "fc_w": normal(d, r * d), "fc_b": np.zeros(r * d, np.float32),
                        "out_w": normal(r * d, d), "out_b": np.zeros(d, np.float32)} for _ in range(s["layers"])]
        p["lnf_g"], p["lnf_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        p["head"] = normal(d, v)
    return p


def make_forward(s):
    import jax
    import jax.numpy as jnp
    from jax import lax

    name = s["name"]
    if name in ("mlp", "infer1"):
        def forward(p, x):
            x = jax.nn.relu(x @ p["w0"] + p["b0"])
            x = jax.nn.relu(x @ p["w1"] + p["b1"])
            return x @ p["w2"] + p["b2"]
    elif name == "cnn":
        def conv(x, k, b):
            y = lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jax.nn.relu(y + b)

        def pool(x):
            return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

        def forward(p, x):
            x = pool(conv(x, p["k1"], p["c1"]))
            x = pool(conv(x, p["k2"], p["c2"]))
            x = x.reshape(x.shape[0], -1)
            x = jax.nn.relu(x @ p["w3"] + p["b3"])
            return x @ p["w4"] + p["b4"]
    elif name == "lstm":
        hsz = s["hidden"]

        def forward(p, idx):
            b = idx.shape[0]
            xs = p["embed"][idx] @ p["w_ih"] + p["b"]          # (B, T, 4H): all input projections at once

            def cell(carry, xt):
                h, c = carry
                g = xt + h @ p["w_hh"]
                i, f, gg, o = jnp.split(g, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h

            zeros = jnp.zeros((b, hsz), xs.dtype)
            _, hs = lax.scan(cell, (zeros, zeros), jnp.swapaxes(xs, 0, 1))
            return jnp.swapaxes(hs, 0, 1) @ p["w_out"] + p["b_out"]
    elif name == "gpt":
        d, nh = s["d_model"], s["heads"]

        def ln(x, g, b):
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) * lax.rsqrt(var + 1e-5) * g + b

        def forward(p, idx):
            b, t = idx.shape
            x = p["tok"][idx] + p["pos"][:t]
            for blk in p["blocks"]:
                y = ln(x, blk["ln1_g"], blk["ln1_b"]) @ blk["qkv_w"] + blk["qkv_b"]
                q, k, v = jnp.split(y.reshape(b, t, 3 * nh, d // nh), 3, axis=2)   # (B, T, H, Dh) each
                y = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
                x = x + y @ blk["proj_w"] + blk["proj_b"]
                y = jax.nn.gelu(ln(x, blk["ln2_g"], blk["ln2_b"]) @ blk["fc_w"] + blk["fc_b"], approximate=True)
                x = x + y @ blk["out_w"] + blk["out_b"]
            return ln(x, p["lnf_g"], p["lnf_b"]) @ p["head"]
    else:  # pragma: no cover
        raise ValueError(name)
    return forward


class Runner:
    def __init__(self, s, data, options):
        import jax
        import jax.numpy as jnp

        self.jax, self.spec = jax, s
        forward = make_forward(s)
        params = jax.tree_util.tree_map(jnp.asarray, init_params(s))
        tokens = s["name"] in ("gpt", "lstm")

        def conv(x):
            if tokens:
                return jnp.asarray(x.astype(np.int32))
            return jnp.asarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)

        self.data = [(conv(x), jnp.asarray(y.astype(np.int32))) for x, y in data]
        if s["kind"] == "infer":
            self.params_ = params
            self.predict = jax.jit(forward)
            self.method = "jax.jit(forward)(params, x)"
            return
        lr, wd = s["lr"], s.get("weight_decay", 0.0) if s["optimizer"] == "adamw" else 0.0
        b1, b2, eps = 0.9, 0.999, 1e-8

        def loss_fn(p, x, y):
            logits = forward(p, x)
            logits = logits.reshape(-1, logits.shape[-1])
            logz = jax.nn.logsumexp(logits, axis=-1)
            picked = jnp.take_along_axis(logits, y.reshape(-1, 1), axis=-1)[:, 0]
            return jnp.mean(logz - picked)

        def train_step(p, state, x, y):
            loss, g = jax.value_and_grad(loss_fn)(p, x, y)
            m, v, t = state
            t = t + 1
            m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t

            def update(p, m, v):
                p = p * (1 - lr * wd) if wd else p
                return p - (lr / c1) * m / (jnp.sqrt(v) / jnp.sqrt(c2) + eps)

            return jax.tree_util.tree_map(update, p, m, v), (m, v, t), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        self.state = (zeros, jax.tree_util.tree_map(jnp.zeros_like, params), jnp.asarray(0.0, jnp.float32))
        self.params_ = params
        self.train_step = jax.jit(train_step, donate_argnums=(0, 1))
        self.method = ("jax.jit(train_step) (value_and_grad + hand-written "
                       f"{'AdamW' if wd else 'Adam'}), params and state donated")

    def step(self, i):
        x, y = self.data[i % len(self.data)]
        if self.spec["kind"] == "infer":
            return self.predict(self.params_, x)
        self.params_, self.state, loss = self.train_step(self.params_, self.state, x, y)
        return loss

    def value(self, h):
        return float(np.sum(np.asarray(h)))

    def sync(self, h):
        self.jax.block_until_ready(h)

    def params(self):
        return [np.array(a, copy=True) for a in self.jax.tree_util.tree_leaves(self.params_)]

    def extra(self):
        return {}


def build(s, data, options):
    return Runner(s, data, options)
