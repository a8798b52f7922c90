from __future__ import annotations

from ..compiler.trace import ACTIVE as TRACING
from ..ops.elementwise import maximum
from .fused import adam_step
from .optimizer import Optimizer, _check, zeros_state


class Adam(Optimizer):
    """Adam (Kingma & Ba). ``weight_decay`` adds an L2 term to the gradient; for decoupled
    decay use ``AdamW``.

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, fused=None):
        name = type(self).__name__
        _check(name, lr >= 0, "lr should be >= 0", lr)
        _check(name, 0 <= betas[0] < 1, "beta1 should be in [0, 1)", betas[0])
        _check(name, 0 <= betas[1] < 1, "beta2 should be in [0, 1)", betas[1])
        _check(name, eps >= 0, "eps should be >= 0", eps)
        _check(name, weight_decay >= 0, "weight_decay should be >= 0", weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))
        # PyTorch's flag: None fuses eager updates of large float parameters (same results,
        # one pass over memory, optim/fused.py); False never; True always (or raises)
        _check(name, fused in (None, True, False), "fused should be None, True or False", fused)
        _check(name, not (fused and amsgrad), "fused=True does not support amsgrad", fused)
        self.fused = fused

    def init_state(self, p):
        state = {"step": 0, "exp_avg": zeros_state(p), "exp_avg_sq": zeros_state(p)}
        if self.defaults.get("amsgrad"):
            state["max_exp_avg_sq"] = zeros_state(p)
        return state

    def update(self, p, g, state, group):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state["step"] += 1
        t = state["step"]
        if TRACING[0] is None and not group["amsgrad"] and adam_step(
                type(self).__name__, p, g, state["exp_avg"], state["exp_avg_sq"], step=t, lr=lr, betas=(b1, b2),
                eps=eps, weight_decay=wd, decoupled=self.decoupled, fused=self.fused):
            return
        if wd:
            if self.decoupled:
                p.mul_(1 - lr * wd)
            else:
                g = g + p * wd
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).add_(g * g, alpha=1 - b2)
        if group["amsgrad"]:
            vmax = state.setdefault("max_exp_avg_sq", zeros_state(p))
            vmax.copy_(maximum(vmax, v))
            v = vmax
        denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(eps)
        p.add_(m / denom, alpha=-lr / (1 - b1 ** t))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * wd each step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize, fused)
