"""Convolutions: Conv1d, Conv2d, ConvTranspose2d (NCHW, PyTorch names and init)."""

from __future__ import annotations

import math

from ... import creation
from .. import functional as F
from .. import init
from ..module import Module, Parameter
from .linear import _dtype_np


def _ntuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _ConvNd(Module):
    _ndim = 2
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", output_padding=0, dtype=None):
        super().__init__()
        n = self._ndim
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: in_channels ({in_channels}) and "
                             f"out_channels ({out_channels}) must be divisible by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{type(self).__name__}: unknown padding_mode {padding_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _ntuple(kernel_size, n)
        self.stride = _ntuple(stride, n)
        self.padding = padding if isinstance(padding, str) else _ntuple(padding, n)
        self.dilation = _ntuple(dilation, n)
        self.output_padding = _ntuple(output_padding, n)
        self.groups, self.padding_mode = groups, padding_mode
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        d = _dtype_np(dtype)
        self.weight = Parameter(creation.empty(*shape, dtype=d))
        self.bias = Parameter(creation.empty(out_channels, dtype=d)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in else 0
            init.uniform_(self.bias, -bound, bound)

    def _pad_input(self, x):
        """Non-zero padding modes pad explicitly; returns (x, padding for the conv)."""
        if self.padding_mode == "zeros" or isinstance(self.padding, str):
            return x, self.padding
        pads = []
        for p in reversed(self.padding):
            pads += [p, p]
        return F.pad(x, pads, mode=self.padding_mode), 0

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self._ndim:
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1,) * self._ndim:
            s += f", dilation={self.dilation}"
        if self._transposed and self.output_padding != (0,) * self._ndim:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W); weight (out, in/groups, kh, kw)."""

    def forward(self, x):
        if x.ndim in (3, 4) and x.shape[-3] != self.in_channels:
            from ...errors import ShapeError

            raise ShapeError(f"{type(self).__name__}({self.in_channels}, {self.out_channels}): "
                             f"input has {x.shape[-3]} channels (shape {x.shape}), expected "
                             f"{self.in_channels} in dim -3 of (N, C, H, W)")
        x, padding = self._pad_input(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L); weight (out, in/groups, k)."""

    _ndim = 1

    def forward(self, x):
        if x.ndim in (2, 3) and x.shape[-2] != self.in_channels:
            from ...errors import ShapeError

            raise ShapeError(f"Conv1d({self.in_channels}, {self.out_channels}): input has "
                             f"{x.shape[-2]} channels (shape {x.shape}), expected "
                             f"{self.in_channels} in dim -2 of (N, C, L)")
        x, padding = self._pad_input(x)
        p = padding if isinstance(padding, str) else _ntuple(padding, 1)[0]
        return F.conv1d(x, self.weight, self.bias, self.stride[0], p, self.dilation[0], self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution; weight (in, out/groups, kh, kw)."""

    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 dtype=None):
        if padding_mode != "zeros":
            raise ValueError("ConvTranspose2d only supports padding_mode='zeros'")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, output_padding, dtype)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)
