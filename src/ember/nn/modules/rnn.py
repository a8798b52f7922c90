"""Recurrent layers: RNN, LSTM, GRU and their cells, with PyTorch's weight layout.

Each layer precomputes the input projection for all time steps with one matmul, then runs
the recurrence step by step. Weights per layer/direction are ``weight_ih_l{k}[_reverse]``
(gates*hidden, input), ``weight_hh_l{k}`` (gates*hidden, hidden) and the two biases; gate
order is PyTorch's (LSTM: i, f, g, o; GRU: r, z, n).
"""

from __future__ import annotations

import math

from ... import creation
from ...errors import ShapeError
from ...ops import movement as mv
from ...ops.rnn import lstm_sequence
from .. import functional as F
from .. import init
from ..module import Module, Parameter
from .linear import _dtype_np

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _lstm_step(xp_t, h, c, w_hh):
    gates = xp_t + F.linear(h, w_hh)
    hs = h.shape[-1]
    i = F.sigmoid(gates[..., :hs])
    f = F.sigmoid(gates[..., hs:2 * hs])
    g = F.tanh(gates[..., 2 * hs:3 * hs])
    o = F.sigmoid(gates[..., 3 * hs:])
    c = f * c + i * g
    return o * F.tanh(c), c


def _gru_step(xp_t, h, w_hh, b_hh):
    hp = F.linear(h, w_hh, b_hh)
    hs = h.shape[-1]
    r = F.sigmoid(xp_t[..., :hs] + hp[..., :hs])
    z = F.sigmoid(xp_t[..., hs:2 * hs] + hp[..., hs:2 * hs])
    n = F.tanh(xp_t[..., 2 * hs:] + r * hp[..., 2 * hs:])
    return (1 - z) * n + z * h


def _rnn_step(xp_t, h, w_hh, relu):
    pre = xp_t + F.linear(h, w_hh)
    return F.relu(pre) if relu else F.tanh(pre)


class RNNBase(Module):
    mode = "RNN_TANH"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=None):
        super().__init__()
        if proj_size:
            raise NotImplementedError(f"{type(self).__name__}(proj_size=...) is not supported")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        d = _dtype_np(dtype)
        gates = _GATES[self.mode] * hidden_size
        dirs = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * dirs
            for suffix in ["", "_reverse"][:dirs]:
                shapes = {"weight_ih": (gates, layer_in), "weight_hh": (gates, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(gates,), bias_hh=(gates,))
                for kind, shape in shapes.items():
                    self.register_parameter(f"{kind}_l{layer}{suffix}", Parameter(creation.empty(*shape, dtype=d)))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def _weights(self, layer, suffix):
        g = lambda n: getattr(self, f"{n}_l{layer}{suffix}", None)
        return g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh")

    def _run(self, x, h0, c0, layer, suffix):
        """x (L, N, I) -> outputs (L, N, H), final h (and c)."""
        w_ih, w_hh, b_ih, b_hh = self._weights(layer, suffix)
        steps = range(x.shape[0])
        if suffix:
            steps = reversed(steps)
        bias = None if b_ih is None or self.mode == "GRU" else b_ih + b_hh  # both enter additively
        if self.mode == "LSTM" and x.shape[0]:
            # one fused primitive for the whole recurrence (ops/rnn.py); it adds the bias in its
            # cell, instead of a pass over the (L, N, 4H) projection, and sums its gradient there
            packed = lstm_sequence(F.linear(x, w_ih), h0, c0, w_hh, bias, reverse=bool(suffix))
            last = 0 if suffix else x.shape[0] - 1
            return packed[:, :, 0], packed[last, :, 0], packed[last, :, 1]
        xp = F.linear(x, w_ih, b_ih if self.mode == "GRU" else bias)
        h, c = h0, c0
        outs = [None] * x.shape[0]
        for t in steps:
            if self.mode == "LSTM":
                h, c = _lstm_step(xp[t], h, c, w_hh)
            elif self.mode == "GRU":
                h = _gru_step(xp[t], h, w_hh, b_hh)
            else:
                h = _rnn_step(xp[t], h, w_hh, self.mode == "RNN_RELU")
            outs[t] = h
        return mv.stack(outs, 0), h, c

    def forward(self, input, hx=None):
        x = input
        unbatched = x.ndim == 2
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}(input_size={self.input_size}): expected input "
                             f"of shape (L, N, {self.input_size}) "
                             f"{'(batch_first: (N, L, ...))' if self.batch_first else ''} or "
                             f"(L, {self.input_size}), got {x.shape}")
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        n = x.shape[1]
        dirs = 2 if self.bidirectional else 1
        state_shape = (self.num_layers * dirs, n, self.hidden_size)
        is_lstm = self.mode == "LSTM"
        if hx is None:
            h0 = creation.zeros(*state_shape, dtype=x.dtype)
            c0 = creation.zeros(*state_shape, dtype=x.dtype) if is_lstm else None
        else:
            h0, c0 = hx if is_lstm else (hx, None)
            if unbatched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
            if h0.shape != state_shape:
                raise ShapeError(f"{type(self).__name__}: initial hidden state must have shape "
                                 f"{state_shape}, got {h0.shape}")
        hn, cn = [], []
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(["", "_reverse"][:dirs]):
                k = layer * dirs + d
                out, h, c = self._run(x, h0[k], c0[k] if is_lstm else None, layer, suffix)
                outs.append(out)
                hn.append(h)
                cn.append(c)
            x = outs[0] if dirs == 1 else mv.cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        output = x
        h_n = mv.stack(hn, 0)
        c_n = mv.stack(cn, 0) if is_lstm else None
        if unbatched:
            output = output.squeeze(1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if is_lstm else None
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if is_lstm else h_n)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(RNNBase):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype)


class LSTM(RNNBase):
    """Long short-term memory; returns (output, (h_n, c_n))."""

    mode = "LSTM"


class GRU(RNNBase):
    """Gated recurrent unit; returns (output, h_n)."""

    mode = "GRU"


class _CellBase(Module):
    mode = "LSTM"

    def __init__(self, input_size, hidden_size, bias=True, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        gates = _GATES[self.mode] * hidden_size
        d = _dtype_np(dtype)
        self.weight_ih = Parameter(creation.empty(gates, input_size, dtype=d))
        self.weight_hh = Parameter(creation.empty(gates, hidden_size, dtype=d))
        self.bias_ih = Parameter(creation.empty(gates, dtype=d)) if bias else None
        self.bias_hh = Parameter(creation.empty(gates, dtype=d)) if bias else None
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}"


class LSTMCell(_CellBase):
    mode = "LSTM"

    def forward(self, x, hx=None):
        if hx is None:
            z = creation.zeros(*x.shape[:-1], self.hidden_size, dtype=x.dtype)
            hx = (z, z)
        b = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        return _lstm_step(F.linear(x, self.weight_ih, b), hx[0], hx[1], self.weight_hh)


class GRUCell(_CellBase):
    mode = "GRU"

    def forward(self, x, hx=None):
        if hx is None:
            hx = creation.zeros(*x.shape[:-1], self.hidden_size, dtype=x.dtype)
        return _gru_step(F.linear(x, self.weight_ih, self.bias_ih), hx, self.weight_hh, self.bias_hh)


class RNNCell(_CellBase):
    mode = "RNN_TANH"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=None):
        super().__init__(input_size, hidden_size, bias, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, x, hx=None):
        if hx is None:
            hx = creation.zeros(*x.shape[:-1], self.hidden_size, dtype=x.dtype)
        b = None if self.bias_ih is None else self.bias_ih + self.bias_hh
        return _rnn_step(F.linear(x, self.weight_ih, b), hx, self.weight_hh, self.nonlinearity == "relu")
