from __future__ import annotations

from .optimizer import Optimizer, _check, active, zeros_state


class RMSprop(Optimizer):
    """RMSprop (PyTorch's formulation, incl. ``centered`` and ``momentum``)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False):
        _check("RMSprop", lr >= 0, "lr should be >= 0", lr)
        _check("RMSprop", 0 <= alpha, "alpha should be >= 0", alpha)
        _check("RMSprop", eps >= 0, "eps should be >= 0", eps)
        _check("RMSprop", momentum >= 0, "momentum should be >= 0", momentum)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def init_state(self, p):
        return {"step": 0, "square_avg": zeros_state(p), "momentum_buffer": zeros_state(p),
                "grad_avg": zeros_state(p)}

    def update(self, p, g, state, group):
        state["step"] += 1
        a = group["alpha"]
        if group["weight_decay"]:
            g = g + p * group["weight_decay"]
        sq = state["square_avg"]
        sq.mul_(a).add_(g * g, alpha=1 - a)
        if group["centered"]:
            ga = state["grad_avg"]
            ga.mul_(a).add_(g, alpha=1 - a)
            avg = (sq - ga * ga).sqrt().add_(group["eps"])
        else:
            avg = sq.sqrt().add_(group["eps"])
        if active(group["momentum"]):
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(g / avg)
            p.add_(buf, alpha=-group["lr"])
        else:
            p.add_(g / avg, alpha=-group["lr"])
