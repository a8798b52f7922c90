from __future__ import annotations

from .optimizer import Optimizer, _check, active, zeros_state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay
    (PyTorch's formulation: the first momentum buffer is the gradient itself)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False):
        _check("SGD", lr >= 0, "lr should be >= 0", lr)
        _check("SGD", momentum >= 0, "momentum should be >= 0", momentum)
        _check("SGD", weight_decay >= 0, "weight_decay should be >= 0", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + p * group["weight_decay"]
        mom = group["momentum"]
        if active(mom):
            buf = state.get("momentum_buffer")
            if buf is None:  # the first buffer is the gradient itself (state arrays are always ours)
                buf = state["momentum_buffer"] = zeros_state(p)
                buf.copy_(g)
            else:
                buf.mul_(mom).add_(g, alpha=1 - group["dampening"])
            g = g + buf * mom if group["nesterov"] else buf
        p.add_(g, alpha=-group["lr"])
