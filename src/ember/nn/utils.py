"""Gradient clipping and parameter/vector conversion (``nn.utils``)."""

from __future__ import annotations

import math

import numpy as np

from ..ops.registry import TRACING
from ..tensor import Tensor


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients together so their joint norm is at most ``max_norm``; returns the
    norm before clipping (as a 0-d tensor).

    Written with tensor ops and no Python branch on the norm (the scale is
    ``min(1, max_norm / (norm + 1e-6))``, as PyTorch computes it), so it also compiles inside
    ``em.jit``."""
    import ember as em

    params = _grads(parameters)
    if not params:
        return Tensor._make(np.asarray(0.0, dtype=np.float32))
    norm_type = float(norm_type)
    with em.no_grad():
        grads = [p.grad for p in params if p.grad.numel()]
        if not grads:
            return Tensor._make(np.asarray(0.0, dtype=params[0].grad.data.dtype))
        if math.isinf(norm_type):
            total = em.stack([g.abs().amax() for g in grads]).amax().double()
        else:
            total = em.stack([(g.double().abs() ** norm_type).sum() for g in grads]).sum() ** (1.0 / norm_type)
        if error_if_nonfinite and not math.isfinite(float(total)):
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} is {float(total)}; "
                               "gradients are not finite (pass error_if_nonfinite=False to scale them anyway)")
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        tracing = TRACING[0] is not None
        for p in params:
            if not p.grad.numel():
                continue
            if tracing:  # a traced gradient may be a view, which the graph cannot update in place
                p.grad = p.grad * coef.astype(p.grad.dtype)
            else:
                p.grad.mul_(coef.astype(p.grad.dtype))
    return total.astype(params[0].grad.dtype)


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
