"""Gradient clipping and parameter/vector conversion (``nn.utils``)."""

from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients together so their joint norm is at most ``max_norm``; returns the
    norm before clipping (as a 0-d tensor)."""
    params = _grads(parameters)
    if not params:
        return Tensor._make(np.asarray(0.0, dtype=np.float32))
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        total = max(float(np.abs(p.grad.data).max()) if p.grad.data.size else 0.0 for p in params)
    else:
        total = sum(float(np.sum(np.abs(p.grad.data.astype(np.float64)) ** norm_type))
                    for p in params) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} is {total}; "
                           "gradients are not finite")
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad.data *= np.asarray(coef, dtype=p.grad.data.dtype)
            p.grad._version[0] += 1
    return Tensor._make(np.asarray(total, dtype=params[0].grad.data.dtype))


def clip_grad_value_(parameters, clip_value):
    for p in _grads(parameters):
        np.clip(p.grad.data, -clip_value, clip_value, out=p.grad.data)
        p.grad._version[0] += 1


def parameters_to_vector(parameters):
    return Tensor._make(np.concatenate([p.data.reshape(-1) for p in parameters]))


def vector_to_parameters(vec, parameters):
    v = vec.data if isinstance(vec, Tensor) else np.asarray(vec)
    i = 0
    for p in parameters:
        n = p.data.size
        p.data[...] = v[i:i + n].reshape(p.shape)
        p._version[0] += 1
        i += n
