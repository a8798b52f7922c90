"""Quantized layers: one per float layer, each built from it with ``from_float``.

Weights are int8 with one symmetric scale per output channel (``weight``, ``weight_scale``
buffers); the bias stays float32. Activations are quantized per call to uint8 with a scale and
zero point computed from the batch (see ``ember.ops.quantized``). The layers hold no
Parameters: they are for inference and need no gradients.
"""

from __future__ import annotations

import numpy as np

from ..errors import OpError, ShapeError
from ..nn import Module
from ..ops.helpers import NO_ATTRS
from ..ops.quantized import QUANTIZED_CONV2D, QUANTIZED_LINEAR, quantize_per_channel_np
from ..ops.registry import apply
from ..tensor import Tensor


class QuantizationError(OpError):
    """A model or layer that ``ember.quantize`` cannot quantize (the message says why and what to do)."""


def _pair(v, what):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"QuantizedConv2d: {what} must be an int or a pair, got {v!r}")
        return tuple(int(x) for x in v)
    return (int(v), int(v))


def _layer_name(module):
    return getattr(module, "name", None) or type(module).__name__


def _float_weights(module, kind):
    """The float layer's weight as a NumPy array, with clear errors for layers that cannot be quantized."""
    if getattr(module, "built", True) is False:
        raise QuantizationError(f"ember.quantize: {kind} layer '{_layer_name(module)}' has not been built yet, so it "
                                "has no weights to quantize; call model.build(input_shape) or run a batch through "
                                "the model first")
    w = module.weight.data
    if w.dtype.kind != "f":
        raise QuantizationError(f"ember.quantize: {kind} layer '{_layer_name(module)}' has {w.dtype} weights; only "
                                "floating point layers can be quantized")
    if not np.isfinite(w).all():
        raise QuantizationError(f"ember.quantize: {kind} layer '{_layer_name(module)}' has NaN or infinite weights; "
                                "they have no int8 form")
    return w


def _check_float_input(layer, x):
    if x.data.dtype.kind != "f":
        raise OpError(f"{layer}: expects a floating point input, got {x.data.dtype}; convert it with .float()")
    return x if x.data.dtype == np.float32 else x.float()


def _int8_buffers(layer, shape, bias):
    """The buffers of a quantized layer: int8 ``weight`` of ``shape``, one float32 scale (and bias)
    per output channel."""
    layer.register_buffer("weight", Tensor._make(np.zeros(shape, np.int8)))
    layer.register_buffer("weight_scale", Tensor._make(np.ones(shape[0], np.float32)))
    layer.register_buffer("bias", Tensor._make(np.zeros(shape[0], np.float32)) if bias else None)


def _fill_from(q, module, w):
    """Quantize float weights ``w`` of ``module`` into the new layer ``q``; copy bias, name and mode."""
    q.weight.data[...], q.weight_scale.data[...] = quantize_per_channel_np(w, axis=0)
    if module.bias is not None:
        q.bias.data[...] = module.bias.data
    if isinstance(getattr(module, "name", None), str):
        object.__setattr__(q, "name", module.name)
    return q.train(module.training)


class QuantizedLinear(Module):
    """``y = activation(dequant(quant(x) @ W_q.T) + bias)`` with int8 per-output-channel weights.

    Args:
        in_features, out_features: sizes, as ``nn.Linear``.
        bias: whether the layer adds a (float32) bias.
        activation: optional function applied to the output (set for Keras ``Dense`` layers).

    Shapes: x (..., in_features) float -> (..., out_features) float32.
    Buffers: ``weight`` int8 (out, in), ``weight_scale`` float32 (out,), ``bias`` float32 (out,).
    """

    def __init__(self, in_features, out_features, bias=True, activation=None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"QuantizedLinear: feature sizes must be positive, got in_features={in_features}, "
                             f"out_features={out_features}")
        self.in_features, self.out_features = in_features, out_features
        _int8_buffers(self, (out_features, in_features), bias)
        self.activation = activation

    @classmethod
    def from_float(cls, module):
        """A QuantizedLinear computing what ``module`` (an ``nn.Linear`` or ``em.layers.Dense``) computes."""
        w = _float_weights(module, "Linear")
        q = cls(module.in_features, module.out_features, bias=module.bias is not None,
                activation=getattr(module, "activation", None))
        return _fill_from(q, module, w)

    def forward(self, x):
        if x.shape[-1:] != (self.in_features,):
            raise ShapeError(f"{self._describe()}: input has shape {x.shape}, expected the last dim to be "
                             f"{self.in_features}")
        x = _check_float_input(self._describe(), x)
        inputs = (x, self.weight, self.weight_scale) + (() if self.bias is None else (self.bias,))
        y = apply(QUANTIZED_LINEAR, inputs, NO_ATTRS)
        return y if self.activation is None else self.activation(y)

    def _describe(self):
        return f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features})"

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                "weights=int8 per-channel, activations=uint8 dynamic")


class QuantizedConv2d(Module):
    """2-D convolution over (N, C, H, W) with int8 per-output-channel weights.

    Args as ``nn.Conv2d`` (``padding``: int, pair, 'valid' or 'same'; 'same' puts the odd pixel
    at the end, as PyTorch and Keras do, and works with any stride as in Keras), plus
    ``activation``, an optional function applied to the output (Keras ``Conv2D``).

    Shapes: x (N, C, H, W) float -> (N, out_channels, H', W') float32.
    Buffers: ``weight`` int8 (out, in/groups, kh, kw), ``weight_scale`` float32 (out,), ``bias`` float32 (out,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", activation=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"QuantizedConv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                             f"be divisible by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"QuantizedConv2d: unknown padding_mode {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("valid", "same"):
            raise ValueError(f"QuantizedConv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups) + self.kernel_size
        _int8_buffers(self, shape, bias)
        self.activation = activation

    @classmethod
    def from_float(cls, module):
        """A QuantizedConv2d computing what ``module`` (an ``nn.Conv2d`` or ``em.layers.Conv2D``) computes."""
        from ..layers import Conv2D

        w = _float_weights(module, "Conv2d")
        # Keras's Conv2D pads itself ('same' with TensorFlow's split) and builds nn.Conv2d with padding 0
        padding = module.padding_ if isinstance(module, Conv2D) else module.padding
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, padding, module.dilation,
                module.groups, module.bias is not None, module.padding_mode, getattr(module, "activation", None))
        return _fill_from(q, module, w)

    def _pads(self, size):
        """(top, bottom, left, right) zero padding for an input of spatial ``size``."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":  # output = ceil(size / stride); the extra pixel goes at the end
            pads = []
            for n, k, s, d in zip(size, self.kernel_size, self.stride, self.dilation):
                total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        (ph, pw) = self.padding
        return (ph, ph, pw, pw)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"{self._describe()}: input has shape {x.shape}, expected (N, {self.in_channels}, H, W)")
        x = _check_float_input(self._describe(), x)
        pads = self._pads(x.shape[2:])
        if self.padding_mode != "zeros" and not isinstance(self.padding, str) and any(pads):
            # as nn.Conv2d: a non-zero padding mode pads the float input explicitly (string paddings pad zeros)
            from ..nn import functional as F

            top, bottom, left, right = pads
            x = F.pad(x, (left, right, top, bottom), mode=self.padding_mode)
            pads = (0, 0, 0, 0)
        inputs = (x, self.weight, self.weight_scale) + (() if self.bias is None else (self.bias,))
        y = apply(QUANTIZED_CONV2D, inputs, {"stride": self.stride, "padding": pads, "dilation": self.dilation,
                                             "groups": int(self.groups)})
        return y if self.activation is None else self.activation(y)

    def _describe(self):
        return f"QuantizedConv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size})"

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + ", weights=int8 per-channel, activations=uint8 dynamic"
