from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _check


class Adagrad(Optimizer):
    """Adagrad: per-coordinate steps lr / (sqrt(sum of squared grads) + eps)."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False):
        _check("Adagrad", lr >= 0, "lr should be >= 0", lr)
        _check("Adagrad", lr_decay >= 0, "lr_decay should be >= 0", lr_decay)
        _check("Adagrad", initial_accumulator_value >= 0,
               "initial_accumulator_value should be >= 0", initial_accumulator_value)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def init_state(self, p):
        init = self.defaults["initial_accumulator_value"]
        return {"step": 0, "sum": Tensor._make(np.full_like(p.data, init))}

    def update(self, p, g, state, group):
        state["step"] += 1
        if group["weight_decay"]:
            g = g + p * group["weight_decay"]
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        s = state["sum"]
        s.add_(g * g)
        p.add_(g / s.sqrt().add_(group["eps"]), alpha=-clr)
