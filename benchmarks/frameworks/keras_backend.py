"""Keras 3 on TensorFlow (``keras-tf``) or on JAX (``keras-jax``).

``KERAS_BACKEND`` is set in the subprocess's environment before Keras is imported. Training
uses ``model.compile(...)`` then ``model.train_on_batch(x, y)`` per step: Keras's own compiled
train function (a ``tf.function`` on TensorFlow, ``jax.jit`` on JAX; ``jit_compile="auto"``,
which Keras resolves to XLA on JAX and to no XLA on a CPU-only TensorFlow) without ``fit``'s
per-epoch data-adapter and callback set-up. Inference (``infer1``) tries ``model(x,
training=False)`` (what Keras recommends for one small batch) and ``model.predict_on_batch(x)``
during warm-up and times the faster one. Images are channels-last (28, 28, 1): TensorFlow's CPU
convolutions support only NHWC, and it is Keras's default. GELU is
``keras.activations.gelu(approximate=True)`` (tanh), LayerNormalization's epsilon is 1e-5 as in
PyTorch, and attention is ``MultiHeadAttention(use_causal_mask=True)`` (separate q, k, v
projections: the same FLOPs as one fused qkv projection).
"""

from __future__ import annotations

import importlib.util
import time
from importlib import metadata

import numpy as np


def available(options) -> tuple[bool, str]:
    backend = options["backend"]
    missing = [m for m in ("keras", backend) if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed (pip install -r benchmarks/requirements.txt)"
    return True, ""


def versions() -> dict:
    out = {"keras": metadata.version("keras")}
    for dist in ("tensorflow-cpu", "tensorflow", "jax", "jaxlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def env(options, threads: int) -> dict:
    from .jax_pure import env as jax_env

    out = {"KERAS_BACKEND": options["backend"], "TF_CPP_MIN_LOG_LEVEL": "2"}
    out.update(jax_env(options, threads))
    return out


def setup(options, threads: int) -> None:
    if options["backend"] == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _gelu_tanh(x):
    import keras

    return keras.activations.gelu(x, approximate=True)


def build_model(s):
    import keras
    from keras import layers

    name = s["name"]
    if name in ("mlp", "infer1"):
        return keras.Sequential([keras.Input((s["in_dim"],)), layers.Dense(s["hidden"], activation="relu"),
                                 layers.Dense(s["hidden"], activation="relu"), layers.Dense(s["classes"])])
    if name == "cnn":
        return keras.Sequential([
            keras.Input((s["image"], s["image"], 1)),
            layers.Conv2D(s["c1"], 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(s["c2"], 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dense(s["dense"], activation="relu"), layers.Dense(s["classes"])])
    if name == "lstm":
        return keras.Sequential([keras.Input((s["seq"],), dtype="int32"), layers.Embedding(s["vocab"], s["embed"]),
                                 layers.LSTM(s["hidden"], return_sequences=True), layers.Dense(s["vocab"])])
    if name == "gpt":
        d, t = s["d_model"], s["context"]
        init = keras.initializers.RandomNormal(0.0, 0.02)

        class PositionEmbedding(layers.Layer):
            def build(self, input_shape):
                self.table = self.add_weight(shape=(t, d), initializer=init, name="pos")

            def call(self, x):
                return x + self.table[: keras.ops.shape(x)[1]]

        idx = keras.Input((t,), dtype="int32")
        x = layers.Embedding(s["vocab"], d, embeddings_initializer=init)(idx)
        x = PositionEmbedding()(x)
        for _ in range(s["layers"]):
            y = layers.LayerNormalization(epsilon=1e-5)(x)
            y = layers.MultiHeadAttention(s["heads"], d // s["heads"], kernel_initializer=init)(
                y, y, use_causal_mask=True)
            x = x + y
            y = layers.LayerNormalization(epsilon=1e-5)(x)
            y = layers.Dense(s["mlp_ratio"] * d, activation=_gelu_tanh, kernel_initializer=init)(y)
            x = x + layers.Dense(d, kernel_initializer=init)(y)
        x = layers.LayerNormalization(epsilon=1e-5)(x)
        out = layers.Dense(s["vocab"], use_bias=False, kernel_initializer=init)(x)
        return keras.Model(idx, out)
    raise ValueError(name)


class Runner:
    def __init__(self, s, data, options):
        import keras

        keras.utils.set_random_seed(0)
        self.keras, self.spec, self.backend = keras, s, options["backend"]
        self.model = build_model(s)
        tokens = s["name"] in ("gpt", "lstm")

        def conv(x):
            if tokens:
                return x.astype(np.int32)
            return x.transpose(0, 2, 3, 1).copy() if x.ndim == 4 else x  # NCHW -> NHWC

        self.data = [(conv(x), y.astype(np.int32)) for x, y in data]
        if s["kind"] == "infer":
            self.call = None
            self.method = None
            return
        if s["optimizer"] == "adamw":
            opt = keras.optimizers.AdamW(learning_rate=s["lr"], weight_decay=s["weight_decay"])
        else:
            opt = keras.optimizers.Adam(learning_rate=s["lr"])
        self.model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        jit = self.model.jit_compile if isinstance(self.model.jit_compile, bool) else "auto"
        self.method = f"model.train_on_batch(x, y) (compile(jit_compile='auto') -> jit_compile={jit})"

    def _choose_infer(self):
        """Time both idiomatic inference calls and keep the faster one."""
        x = self.data[0][0]
        model = self.model
        candidates = {"model(x, training=False)": lambda x: model(x, training=False),
                      "model.predict_on_batch(x)": model.predict_on_batch}
        best = None
        for name, fn in candidates.items():
            for _ in range(5):
                np.asarray(fn(x))
            t0 = time.perf_counter()
            for _ in range(20):
                np.asarray(fn(x))
            dt = time.perf_counter() - t0
            if best is None or dt < best[0]:
                best = (dt, name, fn)
        self.call, self.method = best[2], best[1] + " (the faster of model(x, training=False) and predict_on_batch)"

    def step(self, i):
        x, y = self.data[i % len(self.data)]
        if self.spec["kind"] == "infer":
            if self.call is None:
                self._choose_infer()
            return np.asarray(self.call(x))
        return self.model.train_on_batch(x, y)

    def value(self, h):
        return float(np.sum(h)) if self.spec["kind"] == "infer" else float(np.ravel(h)[0])

    def sync(self, h):
        pass

    def params(self):
        return [np.array(w, copy=True) for w in self.model.get_weights()]

    def extra(self):
        return {"backend": self.keras.backend.backend()}


def build(s, data, options):
    return Runner(s, data, options)
