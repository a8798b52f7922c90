"""Keras's layer vocabulary over ember's ``nn`` modules.

Each layer *is* the corresponding ``nn`` module (``Dense`` is an ``nn.Linear`` subclass, so
state-dict names stay ``weight``/``bias``); it only adds Keras's constructor arguments, Keras's
default initialisers and lazy building: input sizes are read from the first input, as in Keras.
Layouts are ember's: images are channels-first (N, C, H, W).
"""

from __future__ import annotations

import math
import re

import numpy as np

from . import nn
from .autograd.engine import no_grad
from .errors import OpError
from .nn import functional as F
from .nn import init
from .tensor import Tensor

_ACTIVATIONS = {
    None: None, "linear": None, "relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh,
    "softmax": lambda x: F.softmax(x, -1), "log_softmax": lambda x: F.log_softmax(x, -1),
    "gelu": F.gelu, "silu": F.silu, "swish": F.silu, "elu": F.elu, "selu": F.selu,
    "leaky_relu": F.leaky_relu, "softplus": F.softplus, "relu6": F.relu6, "mish": F.mish,
    "hard_sigmoid": F.hardsigmoid,
}
_COUNTS: dict = {}


def get_activation(identifier):
    """An activation function from a Keras name, a callable, or None (identity)."""
    if callable(identifier):
        return identifier
    if identifier not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {identifier!r}; expected one of "
                         f"{sorted(k for k in _ACTIVATIONS if k)} or a callable")
    return _ACTIVATIONS[identifier]


def _auto_name(cls_name):
    base = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls_name).lower().replace("2_d", "2d")
    n = _COUNTS.get(base, 0)
    _COUNTS[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


_INITIALIZERS = {"glorot_uniform", "xavier_uniform", "glorot_normal", "xavier_normal", "he_uniform",
                 "he_normal", "orthogonal", "zeros", "ones", "uniform", "normal", "torch"}


def _check_initializers(*initializers):
    """Reject an unknown initializer name at construction, not at the first call."""
    for i in initializers:
        if not callable(i) and i not in _INITIALIZERS:
            raise ValueError(f"unknown initializer {i!r}; expected one of {sorted(_INITIALIZERS)} or a "
                             "callable(tensor)")


def _initialize(tensor, initializer):
    if initializer in ("glorot_uniform", "xavier_uniform"):
        init.xavier_uniform_(tensor)
    elif initializer in ("glorot_normal", "xavier_normal"):
        init.xavier_normal_(tensor)
    elif initializer == "he_uniform":
        init.kaiming_uniform_(tensor, nonlinearity="relu")
    elif initializer == "he_normal":
        init.kaiming_normal_(tensor, nonlinearity="relu")
    elif initializer == "orthogonal":
        init.orthogonal_(tensor)
    elif initializer == "zeros":
        init.zeros_(tensor)
    elif initializer == "ones":
        init.ones_(tensor)
    elif initializer == "uniform":  # Keras's RandomUniform default
        init.uniform_(tensor, -0.05, 0.05)
    elif initializer == "normal":
        init.normal_(tensor, 0.0, 0.05)
    elif initializer == "torch":  # keep the nn module's (PyTorch's) default
        pass
    elif callable(initializer):
        initializer(tensor)
    else:
        raise ValueError(f"unknown initializer {initializer!r}")


class Layer(nn.Module):
    """Mixin for Keras-style layers: a ``name``, lazy ``build(input_shape)`` on first call."""

    built = False

    def _keras_init(self, name):
        nn.Module.__init__(self)
        self.name = name or _auto_name(type(self).__name__)

    def build(self, input_shape):
        self.built = True

    def _build_module(self, parent, *args, **kwargs):
        """Run the nn module's constructor now that sizes are known, keeping mode and hooks."""
        keep = {k: self.__dict__[k] for k in ("_forward_hooks", "_forward_pre_hooks", "training")}
        parent.__init__(self, *args, **kwargs)
        for k, v in keep.items():
            object.__setattr__(self, k, v)

    def __call__(self, *args, **kwargs):
        if not self.built:
            self.build(args[0].shape)
            self.built = True
        return super().__call__(*args, **kwargs)


class Input(Layer):
    """Declares the per-sample input shape (no batch dim), e.g. ``Input(shape=(1, 8, 8))``;
    a model starting with it is built at construction."""

    def __init__(self, shape, dtype="float32", name=None):
        self._keras_init(name)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.built = True

    def forward(self, x):
        if tuple(x.shape[1:]) != self.shape:
            raise OpError(f"Input(shape={self.shape}): got a batch of shape {x.shape}, expected "
                          f"(batch, {', '.join(map(str, self.shape))})")
        return x


class Dense(Layer, nn.Linear):
    """Fully connected layer: ``activation(x @ W.T + b)`` with ``units`` outputs."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
        self._keras_init(name)
        self.units, self.use_bias = units, use_bias
        self.activation = get_activation(activation)
        _check_initializers(kernel_initializer, bias_initializer)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, input_shape):
        self._build_module(nn.Linear, input_shape[-1], self.units, bias=self.use_bias)
        _initialize(self.weight, self.kernel_initializer)
        if self.bias is not None:
            _initialize(self.bias, self.bias_initializer)

    def forward(self, x):
        y = nn.Linear.forward(self, x)
        return y if self.activation is None else self.activation(y)


def _same_pads(size, k, s, d):
    """TensorFlow's 'same' padding: output = ceil(size / stride), extra padding at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Conv2D(Layer, nn.Conv2d):
    """2-D convolution over channels-first images (N, C, H, W) with ``filters`` outputs."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
        self._keras_init(name)
        if padding not in ("valid", "same"):
            raise ValueError(f"Conv2D: padding must be 'valid' or 'same', got {padding!r}")
        self.filters, self.kernel_size_ = filters, _pair(kernel_size)
        self.strides, self.padding_ = _pair(strides), padding
        self.dilation_rate, self.groups_ = _pair(dilation_rate), groups
        self.activation = get_activation(activation)
        self.use_bias = use_bias
        _check_initializers(kernel_initializer, bias_initializer)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise OpError(f"{self.name} (Conv2D): expects channels-first images (N, C, H, W), got "
                          f"shape {tuple(input_shape)}")
        self._build_module(nn.Conv2d, input_shape[1], self.filters, self.kernel_size_, self.strides, 0,
                           self.dilation_rate, self.groups_, self.use_bias)
        _initialize(self.weight, self.kernel_initializer)
        if self.bias is not None:
            _initialize(self.bias, self.bias_initializer)

    def forward(self, x):
        if self.padding_ == "same":
            (t, b), (lf, r) = (_same_pads(n, k, s, d) for n, k, s, d in
                               zip(x.shape[2:], self.kernel_size_, self.strides, self.dilation_rate))
            if t or b or lf or r:
                x = F.pad(x, (lf, r, t, b))
        y = nn.Conv2d.forward(self, x)
        return y if self.activation is None else self.activation(y)


class _Pool2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", name=None):
        self._keras_init(name)
        if padding not in ("valid", "same"):
            raise ValueError(f"{type(self).__name__}: padding must be 'valid' or 'same', got {padding!r}")
        self.pool_size = _pair(pool_size)
        self.strides = _pair(strides) if strides is not None else self.pool_size
        self.padding = padding
        self.built = True

    def _padded(self, x, value):
        if self.padding != "same":
            return x, None
        (t, b), (lf, r) = (_same_pads(n, k, s, 1) for n, k, s in zip(x.shape[2:], self.pool_size, self.strides))
        return F.pad(x, (lf, r, t, b), value=value), (t, b, lf, r)


class MaxPooling2D(_Pool2D):
    def forward(self, x):
        x, _ = self._padded(x, -math.inf)
        return F.max_pool2d(x, self.pool_size, self.strides)


class AveragePooling2D(_Pool2D):
    def forward(self, x):
        if self.padding != "same":
            return F.avg_pool2d(x, self.pool_size, self.strides)
        # Keras averages over the cells inside the image only
        padded, pads = self._padded(x, 0.0)
        total = F.avg_pool2d(padded, self.pool_size, self.strides, divisor_override=1)
        ones = np.ones((1, 1) + tuple(x.shape[2:]), dtype=x.data.dtype)
        t, b, lf, r = pads
        counts = np.pad(ones, ((0, 0), (0, 0), (t, b), (lf, r)))
        cnt = F.avg_pool2d(Tensor._make(counts), self.pool_size, self.strides, divisor_override=1)
        return total / cnt


class GlobalAveragePooling2D(Layer):
    def __init__(self, keepdims=False, name=None):
        self._keras_init(name)
        self.keepdims = keepdims
        self.built = True

    def forward(self, x):
        return x.mean((2, 3), keepdim=self.keepdims)


class GlobalMaxPooling2D(GlobalAveragePooling2D):
    def forward(self, x):
        return x.amax((2, 3), keepdim=self.keepdims)


class Flatten(Layer, nn.Flatten):
    def __init__(self, name=None):
        self._keras_init(name)
        self._build_module(nn.Flatten)
        self.built = True


class Reshape(Layer):
    def __init__(self, target_shape, name=None):
        self._keras_init(name)
        self.target_shape = tuple(target_shape)
        self.built = True

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.target_shape)


class Dropout(Layer, nn.Dropout):
    def __init__(self, rate, name=None):
        self._keras_init(name)
        self._build_module(nn.Dropout, rate)
        self.rate = rate
        self.built = True


class Activation(Layer):
    def __init__(self, activation, name=None):
        self._keras_init(name)
        self.activation = get_activation(activation)
        self.built = True

    def forward(self, x):
        return x if self.activation is None else self.activation(x)


class BatchNormalization(Layer, nn.BatchNorm1d):
    """Batch normalisation over the channel axis 1 (features of (N, F), channels of (N, C, ...)).

    Keras's ``momentum`` (weight of the old running value) maps to PyTorch's as 1 - momentum.
    """

    def __init__(self, axis=1, momentum=0.99, epsilon=1e-3, center=True, scale=True, name=None):
        self._keras_init(name)
        if axis not in (1, -1):
            raise ValueError("BatchNormalization: ember normalises channel axis 1 (channels-first)")
        self.axis, self.keras_momentum, self.epsilon = axis, momentum, epsilon
        self.center, self.scale = center, scale

    def build(self, input_shape):
        if self.axis == -1 and len(input_shape) > 2:
            raise ValueError("BatchNormalization(axis=-1) on images: ember is channels-first, use axis=1")
        self._build_module(nn.BatchNorm1d, input_shape[1], eps=self.epsilon, momentum=1 - self.keras_momentum)
        self._expected_dims = (len(input_shape),)
        if not self.center:
            self.bias = None
        if not self.scale:
            self.weight = None


class LayerNormalization(Layer, nn.LayerNorm):
    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, name=None):
        self._keras_init(name)
        if axis != -1:
            raise ValueError("LayerNormalization: only axis=-1 is supported")
        self.epsilon, self.center, self.scale = epsilon, center, scale

    def build(self, input_shape):
        self._build_module(nn.LayerNorm, input_shape[-1], eps=self.epsilon, bias=self.center)
        if not self.scale:
            self.weight = None


class Embedding(Layer, nn.Embedding):
    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", name=None):
        self._keras_init(name)
        self.input_dim, self.output_dim = input_dim, output_dim
        self._build_module(nn.Embedding, input_dim, output_dim)
        _initialize(self.weight, embeddings_initializer)
        self.built = True


class _Recurrent(Layer):
    _module = None

    def __init__(self, units, return_sequences=False, return_state=False, go_backwards=False,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", name=None):
        self._keras_init(name)
        self.units, self.return_sequences, self.return_state = units, return_sequences, return_state
        self.go_backwards = go_backwards
        _check_initializers(kernel_initializer, recurrent_initializer)
        self.kernel_initializer, self.recurrent_initializer = kernel_initializer, recurrent_initializer

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise OpError(f"{self.name} ({type(self).__name__}): expects (batch, time, features), got "
                          f"shape {tuple(input_shape)}")
        self._build_module(self._module, input_shape[-1], self.units, batch_first=True)
        with no_grad():
            _initialize(self.weight_ih_l0, self.kernel_initializer)
            # Keras initialises its whole (units, gates * units) recurrent kernel at once, so
            # "orthogonal" gives this (gates * units, units) transpose orthonormal columns
            _initialize(self.weight_hh_l0, self.recurrent_initializer)
            init.zeros_(self.bias_ih_l0)
            init.zeros_(self.bias_hh_l0)
            if isinstance(self, LSTM):  # unit_forget_bias
                self.bias_ih_l0.data[self.units:2 * self.units] = 1.0

    def forward(self, x, initial_state=None):
        if self.go_backwards:
            x = x.flip(1)
        hx = None
        if initial_state is not None:  # Keras passes [h, (c)] each (batch, units)
            states = [s.unsqueeze(0) for s in initial_state]
            hx = tuple(states) if isinstance(self, LSTM) else states[0]
        out, state = self._module.forward(self, x, hx)
        seq = out if self.return_sequences else out[:, -1]
        if not self.return_state:
            return seq
        states = [s[-1] for s in state] if isinstance(state, tuple) else [state[-1]]
        return (seq, *states)


class LSTM(_Recurrent, nn.LSTM):
    _module = nn.LSTM


class GRU(_Recurrent, nn.GRU):
    _module = nn.GRU


class MultiHeadAttention(Layer):
    """Keras's attention layer: ``layer(query, value, key=None, attention_mask=None)``; a bool
    ``attention_mask`` (B, T, S) marks the positions that may be attended."""

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True, output_shape=None,
                 name=None):
        self._keras_init(name)
        self.num_heads, self.key_dim = num_heads, key_dim
        self.value_dim = value_dim or key_dim
        self.dropout, self.use_bias, self.output_dim = dropout, use_bias, output_shape

    def build(self, query_shape, value_shape=None, key_shape=None):
        e_q = query_shape[-1]
        e_v = (value_shape or query_shape)[-1]
        e_k = (key_shape or value_shape or query_shape)[-1]
        h = self.num_heads
        self.query_dense = nn.Linear(e_q, h * self.key_dim, bias=self.use_bias)
        self.key_dense = nn.Linear(e_k, h * self.key_dim, bias=self.use_bias)
        self.value_dense = nn.Linear(e_v, h * self.value_dim, bias=self.use_bias)
        self.output_dense = nn.Linear(h * self.value_dim, self.output_dim or e_q, bias=self.use_bias)
        for lin in (self.query_dense, self.key_dense, self.value_dense, self.output_dense):
            _initialize(lin.weight, "glorot_uniform")
            if lin.bias is not None:
                init.zeros_(lin.bias)

    def __call__(self, query, value, key=None, attention_mask=None, return_attention_scores=False,
                 use_causal_mask=False):
        if not self.built:
            self.build(query.shape, value.shape, None if key is None else key.shape)
            self.built = True
        return nn.Module.__call__(self, query, value, key, attention_mask, return_attention_scores,
                                  use_causal_mask)

    def forward(self, query, value, key=None, attention_mask=None, return_attention_scores=False,
                use_causal_mask=False):
        key = value if key is None else key
        b, t = query.shape[:2]
        s = value.shape[1]
        h = self.num_heads
        q = self.query_dense(query).reshape(b, t, h, self.key_dim).transpose(1, 2)
        k = self.key_dense(key).reshape(b, s, h, self.key_dim).transpose(1, 2)
        v = self.value_dense(value).reshape(b, s, h, self.value_dim).transpose(1, 2)
        scores = (q @ k.mT) * (1.0 / math.sqrt(self.key_dim))
        if use_causal_mask:
            scores = scores.masked_fill(~np.tri(t, s, dtype=bool), -math.inf)
        if attention_mask is not None:
            scores = scores.masked_fill((~attention_mask.bool()).unsqueeze(1), -math.inf)
        attn = F.softmax(scores, -1)
        attn = F.dropout(attn, self.dropout, self.training)
        out = (attn @ v).transpose(1, 2).reshape(b, t, h * self.value_dim)
        out = self.output_dense(out)
        return (out, attn) if return_attention_scores else out
