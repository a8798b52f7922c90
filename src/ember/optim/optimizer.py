"""The optimizer contract: a subclass validates hyperparameters and implements
``init_state(param)`` and ``update(param, grad, state, group)``; this base class owns the
parameter groups, the per-parameter state, ``step``, ``zero_grad`` and (de)serialisation.

Updates are written with ember's in-place tensor ops under ``no_grad``, so they run as NumPy
ufuncs writing into the parameters' buffers.
"""

from __future__ import annotations

import numpy as np

from ..autograd.engine import no_grad
from ..errors import OpError
from ..tensor import Tensor


class Optimizer:
    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}
        self.param_groups: list = []
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, group: dict):
        group = dict(group)
        ps = group["params"]
        group["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameters must be tensors, got "
                                f"{type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} does "
                                 "not require grad")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = Tensor._make(np.zeros_like(p.grad.data))

    def init_state(self, param) -> dict:
        return {}

    def update(self, param, grad, state, group):
        raise NotImplementedError

    @no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient. ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            from ..autograd.engine import enable_grad

            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.shape != p.shape:
                    raise OpError(f"{type(self).__name__}: gradient shape {grad.shape} does not "
                                  f"match parameter shape {p.shape}")
                if group.get("maximize"):
                    grad = -grad
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = self.init_state(p)
                self.update(p, grad, state, group)
        return loss

    # ---- serialisation ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{'state': {index: {...}}, 'param_groups': [{..., 'params': [index...]}]}``."""
        index, groups, i = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index[id(p)] = i
                ids.append(i)
                i += 1
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: (v.detach().clone() if isinstance(v, Tensor) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("load_state_dict: the saved optimizer has a different number of "
                             "parameter groups or parameters than this one")
        params = [p for g in self.param_groups for p in g["params"]]
        for g_saved, g in zip(groups, self.param_groups):
            for k, v in g_saved.items():
                if k != "params":
                    g[k] = v
        self.state = {}
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            restored = {}
            for k, v in st.items():
                if isinstance(v, Tensor) or isinstance(v, np.ndarray) or hasattr(v, "__array__") \
                        and not isinstance(v, (int, float)):
                    arr = np.array(v.data if isinstance(v, Tensor) else np.asarray(v))
                    if arr.shape == p.shape and arr.dtype.kind == "f":
                        arr = arr.astype(p.data.dtype)
                    restored[k] = Tensor._make(arr)
                else:
                    restored[k] = v
            self.state[p] = restored

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


def _check(name, cond, what, value):
    if not cond:
        raise ValueError(f"{name}: {what}, {value!r} was provided instead")


def zeros_state(p):
    return Tensor._make(np.zeros_like(p.data))
