"""``nn.Module`` and ``nn.Parameter``, with PyTorch's registration rules and state-dict names."""

from __future__ import annotations

import functools
from collections import OrderedDict, namedtuple

import numpy as np

from ..autograd.engine import no_grad
from ..compiler.trace import ACTIVE as TRACING
from ..errors import ShapeError
from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor that a ``Module`` registers as a trainable parameter (requires grad)."""

    __slots__ = ()

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            arr = np.empty((0,), np.float32)
        elif isinstance(data, Tensor):
            arr = data.data
        else:
            arr = np.asarray(data)
            if arr.dtype == np.float64 and not isinstance(data, np.ndarray):
                arr = arr.astype(np.float32)
        self.data = arr
        self._node = None
        self.grad = None
        self._version = [0]
        self._base = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self):
        return "Parameter containing:\n" + Tensor.__repr__(self)

    def __reduce_ex__(self, protocol):
        return (Parameter, (self.data, self.requires_grad))


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


#: every Module subclass by "module.QualName", so a saved architecture can name its classes
#: and loading only ever instantiates classes this process has already imported
MODULE_CLASSES: dict = {}


class Module:
    """Base class for layers and models: assign Parameters, Modules and buffers as attributes
    and they are registered, named and found by ``parameters()``, ``state_dict()`` etc."""

    training: bool

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODULE_CLASSES[f"{cls.__module__}.{cls.__qualname__}"] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            # the outermost constructor call records its arguments: the architecture config
            if "_init_args" not in self.__dict__:
                object.__setattr__(self, "_init_args", (args, kw))
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ---------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} '{name}' before "
                                     f"Module.__init__() call (call super().__init__() first)")
            object.__setattr__(self, name, value)
            return
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter '{name}' "
                                "(nn.Parameter or None expected)")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module '{name}' "
                                "(nn.Module or None expected)")
            modules[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer '{name}' "
                                "(Tensor or None expected)")
            buffers[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: '{name}' must be a Parameter or None")
        self._parameters[name] = param
        object.__setattr__(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor saved in the state dict (unless persistent=False) but not trained."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: '{name}' must be a Tensor or None")
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    def register_module(self, name, module):
        self.__setattr__(name, module)

    add_module = register_module

    def get_submodule(self, target: str):
        mod = self
        for part in target.split(".") if target else []:
            if part not in mod._modules:
                raise AttributeError(f"{type(mod).__name__} has no submodule '{part}'")
            mod = mod._modules[part]
        return mod

    # ---- traversal ------------------------------------------------------------------
    def named_modules(self, memo=None, prefix=""):
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named(self, attr, prefix, recurse):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, t in getattr(m, attr).items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mprefix}.{name}" if mprefix else name), t

    def named_parameters(self, prefix="", recurse=True):
        yield from self._named("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes and utilities -------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        from ..autograd.engine import zero_grads

        zero_grads(self.parameters(), set_to_none)

    def apply(self, fn):
        """Call ``fn`` on every submodule (children first) and on self, e.g. for init."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def to(self, *args, **kwargs):
        """Convert parameters and floating-point buffers to a dtype (``model.to(em.float64)``)."""
        from ..dtypes import DType, get_dtype

        dtype = kwargs.get("dtype")
        for a in args:
            if isinstance(a, DType) or (isinstance(a, str) and a not in ("cpu",)):
                if isinstance(a, str) and a.startswith(("cuda", "mps")):
                    raise RuntimeError(f"to({a!r}): ember runs on the CPU only")
                dtype = a
        if dtype is None:
            return self
        npd = get_dtype(dtype).np
        if npd.kind != "f":
            raise TypeError(f"Module.to: only floating-point dtypes are allowed, got {dtype}")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.data.dtype.kind == "f":
                    p.data = p.data.astype(npd)
                    if p.grad is not None:
                        p.grad = Tensor._make(p.grad.data.astype(npd))
            for b in m._buffers.values():
                if b is not None and b.data.dtype.kind == "f":
                    b.data = b.data.astype(npd)
        return self

    def float(self):
        from ..dtypes import float32

        return self.to(float32)

    def double(self):
        from ..dtypes import float64

        return self.to(float64)

    def half(self):
        from ..dtypes import float16

        return self.to(float16)

    def cpu(self):
        return self

    def num_parameters(self, trainable_only=False):
        return int(sum(p.data.size for p in self.parameters()
                       if p.requires_grad or not trainable_only))

    # ---- state ------------------------------------------------------------------------
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """Ordered name -> tensor for every parameter and persistent buffer (PyTorch's names)."""
        out = OrderedDict() if destination is None else destination
        for name, p in self._parameters.items():
            if p is not None:
                out[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                out[prefix + name] = b if keep_vars else b.detach()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(out, prefix + name + ".", keep_vars)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (ember tensors, NumPy arrays, or anything with ``__array__``, such as a
        PyTorch state dict's tensors) into this module's parameters and buffers in place."""
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {missing}")
            if unexpected:
                parts.append(f"unexpected keys: {unexpected}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        with no_grad():
            for k, target in own.items():
                if k not in state_dict:
                    continue
                v = state_dict[k]
                arr = v.data if isinstance(v, Tensor) else np.asarray(
                    v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                if tuple(arr.shape) != target.shape:
                    raise ShapeError(f"load_state_dict: '{k}' has shape {tuple(arr.shape)} in the "
                                     f"state dict but {target.shape} in the model")
                np.copyto(target.data, arr, casting="unsafe")
                target._version[0] += 1
        return IncompatibleKeys(missing, unexpected)

    # ---- calling ----------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args, **kwargs):
        tracer = TRACING[0]
        if tracer is not None:  # a compiled graph is only valid for the same train/eval mode
            tracer.guard(("training", id(self)), f"{type(self).__name__}.training",
                         lambda m=self: m.training)
            tracer.enter_module(self)
            try:
                return self._call(args, kwargs)
            finally:
                tracer.exit_module()
        return self._call(args, kwargs)

    def _call(self, args, kwargs):
        if self._forward_pre_hooks:
            for hook in list(self._forward_pre_hooks.values()):
                res = hook(self, args)
                if res is not None:
                    args = res if isinstance(res, tuple) else (res,)
        out = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                res = hook(self, args, out)
                if res is not None:
                    out = res
        return out

    def register_forward_hook(self, hook):
        return _HookHandle(self._forward_hooks, hook)

    def register_forward_pre_hook(self, hook):
        return _HookHandle(self._forward_pre_hooks, hook)

    # ---- display ----------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if extra:
            lines = extra.split("\n")
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        main = type(self).__name__ + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def __dir__(self):
        return sorted(set(super().__dir__()))

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)


class _HookHandle:
    _next = 0

    def __init__(self, table, hook):
        _HookHandle._next += 1
        self.id = _HookHandle._next
        self.table = table
        table[self.id] = hook

    def remove(self):
        self.table.pop(self.id, None)
