"""The optimizer contract: a subclass validates hyperparameters and implements
``init_state(param)`` and ``update(param, grad, state, group)``; this base class owns the
parameter groups, the per-parameter state, ``step``, ``zero_grad`` and (de)serialisation.

Updates are written with ember's in-place tensor ops under ``no_grad``, so they run as NumPy
ufuncs writing into the parameters' buffers.
"""

from __future__ import annotations

import numpy as np

from ..autograd.engine import no_grad
from ..compiler.trace import ACTIVE as TRACING
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
        from ..autograd.engine import zero_grads

        zero_grads((p for g in self.param_groups for p in g["params"]), set_to_none)

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
        tracer = TRACING[0]
        for index, group in enumerate(self.param_groups):
            if tracer is not None:
                group = self._traced_group(tracer, index, group)
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
                if tracer is not None and isinstance(state.get("step"), int):
                    # a compiled step must count at run time, not bake in this call's count
                    state["step"] = Tensor._make(np.asarray(state["step"], dtype=np.float32))
                if tracer is not None:
                    # the traced update depends on which state exists (SGD's first momentum step
                    # differs from later ones) and reads these very arrays (load_state_dict
                    # replaces them): a change retraces
                    tracer.guard(("optimizer state", id(self), id(p)),
                                 f"{type(self).__name__}'s state for a parameter of shape {p.shape}",
                                 lambda p=p: _state_signature(p, self.state.get(p)))
                self.update(p, grad, state, group)
        return loss

    #: hyperparameters that schedulers change between steps: read at every run of a compiled step
    DYNAMIC = ("lr", "betas", "momentum")

    def _traced_group(self, tracer, index, group):
        """The group as a compiled step sees it: scheduled hyperparameters become values read
        from ``param_groups`` at each run; everything else is guarded (a change retraces)."""
        def static(g=group):
            out = []
            for k, v in sorted(g.items()):
                if k in ("params", "initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"):
                    continue
                if k in self.DYNAMIC:  # only whether it is zero changes the code path
                    v = tuple(x == 0 for x in v) if isinstance(v, tuple) else v == 0
                out.append((k, v))
            return tuple(out)

        tracer.guard(("optimizer", id(self), index), f"{type(self).__name__}.param_groups[{index}]", static)
        traced = dict(group)
        for k in self.DYNAMIC:
            v = group.get(k)
            if isinstance(v, tuple):
                traced[k] = tuple(x if x == 0 else self._runtime_scalar(tracer, index, k, i)
                                  for i, x in enumerate(v))
            elif isinstance(v, (int, float)) and v != 0 and not isinstance(v, bool):
                traced[k] = self._runtime_scalar(tracer, index, k, None)
        return traced

    def _runtime_scalar(self, tracer, index, key, position):
        from ..compiler.trace import Sym

        groups = self.param_groups
        if position is None:
            reader = lambda: groups[index][key]  # noqa: E731
        else:
            reader = lambda: groups[index][key][position]  # noqa: E731
        return Tensor._make(Sym(tracer.scalar(reader)))

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


def _state_signature(p, state):
    """Which state entries exist and which arrays (by id) they and the parameter are: a guard
    of compiled steps, checked at every call."""
    if not state:
        return (id(p.data),)
    return (id(p.data),) + tuple((k, id(v.data)) if type(v) is Tensor else (k, v)
                                 for k, v in state.items() if v is not None)


def _check(name, cond, what, value):
    if not cond:
        raise ValueError(f"{name}: {what}, {value!r} was provided instead")


def active(value) -> bool:
    """Whether a hyperparameter is switched on. In a compiled step a scheduled value is a
    tensor read at run time, and it is only a tensor when it was nonzero when traced."""
    return isinstance(value, Tensor) or bool(value)


def zeros_state(p):
    # from shape and dtype only: inside em.jit the parameter may already be symbolic (updated
    # earlier in the traced step), and new state is always a concrete array
    return Tensor._make(np.zeros(p.data.shape, p.data.dtype))
