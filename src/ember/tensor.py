"""The Tensor: a NumPy array plus what autograd needs to know about it.

Math methods (``+``, ``exp``, ``sum``, ``reshape``...) are attached by ``ember.ops`` from
its function table, so this file holds only the tensor's state and conversions.
"""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .autograd.engine import register_post_accumulate_grad_hook, run_backward
from .errors import GradError


class Tensor:
    __slots__ = ("data", "_node", "requires_grad", "grad", "_version", "_base", "__weakref__")
    __array_ufunc__ = None  # make NumPy defer to our reflected operators (np_array * tensor)

    def __init__(self, data, dtype=None, requires_grad=False):
        t = tensor(data, dtype=dtype, requires_grad=requires_grad)
        self.data, self._node, self.requires_grad = t.data, None, t.requires_grad
        self.grad, self._version, self._base = None, [0], None

    @classmethod
    def _make(cls, array):
        """Wrap an ndarray without copying or checks (the hot path)."""
        t = object.__new__(cls)
        t.data = array
        t._node = None
        t.requires_grad = False
        t.grad = None
        t._version = [0]
        t._base = None
        return t

    # ---- metadata -------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> _dt.DType:
        return _dt.from_numpy_dtype(self.data.dtype)

    def size(self, dim=None):
        """The shape (a tuple), or the length of dimension ``dim`` (negative counts from the end)."""
        shape = self.data.shape
        if dim is None:
            return shape
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
            raise TypeError(f"size(): dim must be an int, got {dim!r}; call size() for the whole shape")
        if not -len(shape) <= dim < len(shape):
            raise IndexError(f"size(): dim {dim} is out of range for a tensor of shape {shape} (expected "
                             f"{-len(shape)}..{len(shape) - 1})" if shape else
                             f"size(): dim {dim} given but the tensor is 0-d (shape ()); call size() instead")
        return shape[dim]

    def dim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def element_size(self) -> int:
        return self.data.itemsize

    def is_floating_point(self) -> bool:
        return self.data.dtype.kind == "f"

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        return self._node

    @property
    def device(self) -> str:
        return "cpu"

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    # ---- conversions ----------------------------------------------------------------
    def _value(self, what):
        """The array, or a clear error when this tensor is symbolic (being traced by em.jit)."""
        data = self.data
        if not isinstance(data, (np.ndarray, np.generic)):
            from .compiler.trace import value_error

            raise value_error(what)
        return data

    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            raise GradError("numpy(): this tensor requires grad; call .detach().numpy() to "
                            "get its values without the graph")
        return self._value("t.numpy()")

    def item(self):
        self._value("t.item()")
        if self.data.size != 1:
            raise ValueError(f"item(): only a tensor with one element can be converted to a "
                             f"Python scalar, got shape {self.data.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self._value("t.tolist()").tolist()

    def __float__(self):
        self._value("float(t)")
        return float(self.item())

    def __int__(self):
        self._value("int(t)")
        return int(self.item())

    def __index__(self):
        if self.data.dtype.kind not in "iub" or self.data.size != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.item())

    def __bool__(self):
        self._value("using a tensor as a Python bool (if/while/and/or on a tensor)")
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements is "
                               "ambiguous; use .any() or .all()")
        return bool(self.data.reshape(()).item())

    def __array__(self, dtype=None, copy=None):
        data = self._value("np.asarray(t)")
        return data if dtype is None else data.astype(dtype)

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def __hash__(self):
        return id(self)

    # ---- autograd -------------------------------------------------------------------
    def detach(self) -> Tensor:
        """A tensor sharing this one's data (and version counter) but not its graph. Writing to it
        writes to this tensor too, as in PyTorch; the shared version counter makes backward
        refuse values that changed after they were saved."""
        t = Tensor._make(self.data)
        t._version = self._version
        return t

    def detach_(self) -> Tensor:
        self._node = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if self._node is not None and not requires_grad:
            raise GradError("requires_grad_(False) on a non-leaf tensor; use .detach()")
        if requires_grad and self.data.dtype.kind != "f":
            raise GradError(f"only floating-point tensors can require gradients, this one is "
                            f"{self.dtype}; convert it with .float() first")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        import weakref

        if self._node is not None:
            self._node.retained = weakref.ref(self)

    def register_post_accumulate_grad_hook(self, hook):
        """PyTorch's hook: ``hook(self)`` runs each time ``backward()`` has finished accumulating
        ``self.grad`` (a leaf's), as soon as its last contribution is computed rather than at the
        end of backward. Returns a handle whose ``.remove()`` unregisters it. Not run inside
        ``em.jit`` traces, ``create_graph=True`` or ``backward(inputs=...)``."""
        if self._node is not None or not self.requires_grad:
            raise GradError("register_post_accumulate_grad_hook: only leaf tensors that require grad "
                            f"(parameters) accumulate .grad; this one is "
                            f"{'a non-leaf' if self._node is not None else 'a tensor without requires_grad'}")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        return register_post_accumulate_grad_hook(self, hook)

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` is required unless ``self`` holds a single element.
        """
        if not self.requires_grad:
            raise GradError("backward(): this tensor does not require grad and has no graph. "
                            "Did you create the parameters with requires_grad=True, or run the "
                            "forward pass under em.no_grad()?")
        if gradient is None:
            if self.data.size != 1:
                raise GradError(f"backward(): grad can be implicitly created only for scalar "
                                f"outputs; this tensor has shape {self.data.shape}. Pass "
                                f"gradient= (a tensor of the same shape) or reduce it first, "
                                f"e.g. loss.sum().backward()")
            gradient = ones_like_data(self)
        else:
            gradient = gradient if isinstance(gradient, Tensor) else tensor(gradient)
            if gradient.shape != self.shape:
                raise GradError(f"backward(): gradient has shape {gradient.shape} but the "
                                f"tensor has shape {self.shape}")
        if retain_graph is None:
            retain_graph = create_graph
        if inputs is not None:
            inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
            grads = run_backward([self], [gradient], retain_graph, create_graph, inputs=inputs)
            for t, g in zip(inputs, grads):
                if g is not None:
                    t.grad = g if t.grad is None else t.grad + g
            return
        run_backward([self], [gradient], retain_graph, create_graph)

    # ---- display --------------------------------------------------------------------
    def __repr__(self):
        body = np.array2string(self.data, separator=", ", precision=4, prefix="tensor(",
                               threshold=1000, edgeitems=3)
        extras = []
        d = self.data.dtype
        if self.data.size == 0 and self.data.shape != (0,):  # "[]" alone would hide the shape
            extras.append(f"size={self.data.shape}")
        # as PyTorch: the dtype is shown when the values cannot tell it (an empty int64 tensor shows it too)
        if d not in (np.float32, np.int64, np.bool_) or (self.data.size == 0 and d != np.float32):
            extras.append(f"dtype={self.dtype!r}")
        if self._node is not None:
            extras.append(f"grad_fn={self._node!r}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    __str__ = __repr__


def ones_like_data(t):
    """A tensor of ones shaped like ``t`` (a graph constant while tracing)."""
    from .compiler.trace import ACTIVE, Sym

    if ACTIVE[0] is not None and type(t.data) is Sym:
        return Tensor._make(Sym(ACTIVE[0].literal(np.ones(t.data.shape, t.data.dtype))))
    return Tensor._make(np.ones_like(t.data))


_SUPPORTED = ", ".join(d.name for d in _dt.ALL)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _as_array(data, dtype):
    if isinstance(data, Tensor):
        return data.data.copy() if dtype is None else data.data.astype(dtype.np)
    if isinstance(data, (np.ndarray, np.generic)):  # NumPy scalars keep their dtype, as in torch.tensor
        arr = np.asarray(data)
        _element_dtype(arr)  # rejects complex, object, strings...
        return arr.copy() if dtype is None else arr.astype(dtype.np)
    if isinstance(data, (list, tuple, bool, int, float)):
        return _sequence_array(data, dtype)
    arr = np.asarray(data)  # other array-likes (range, objects with __array__)
    if arr.dtype.kind not in "biuf" or arr.dtype not in _dt._BY_NP:
        raise TypeError(f"tensor(): cannot make a tensor from {type(data).__name__} (it gives dtype {arr.dtype}); "
                        f"pass numbers, nested lists of numbers, NumPy arrays or tensors of {_SUPPORTED}")
    if dtype is not None:
        return arr.astype(dtype.np)
    kind = arr.dtype.kind
    return arr.astype(_dt.default_float.np if kind == "f" else np.int64 if kind in "iu" else arr.dtype)


def _element_dtype(v) -> np.dtype:
    """The dtype one element of a (nested) list contributes, as torch.tensor infers it: Python numbers count as
    their default dtypes, NumPy scalars, arrays and tensors as their own."""
    if isinstance(v, (np.ndarray, np.generic)):  # before the Python types: np.float64 is a float
        if v.dtype in _dt._BY_NP:
            return v.dtype
        raise TypeError(f"tensor(): cannot make a tensor from NumPy data of dtype {v.dtype}; ember supports "
                        f"{_SUPPORTED}: convert it first, e.g. with .astype(np.float32)")
    if isinstance(v, bool):
        return np.dtype(np.bool_)
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise OverflowError(f"tensor(): the Python int {v} does not fit in int64; pass it as a float "
                                f"(e.g. {float(v):g}) or use values in [-2**63, 2**63 - 1]")
        return np.dtype(np.int64)
    if isinstance(v, float):
        return _dt.default_float.np
    if isinstance(v, Tensor):
        return v.data.dtype
    raise TypeError(f"tensor(): cannot make a tensor from {type(v).__name__} ({v!r:.40}); pass numbers, nested "
                    f"lists of numbers, NumPy arrays or tensors of {_SUPPORTED}")


def _sequence_array(data, dtype):
    """A nested list (or a Python scalar) as an array: its dtype promoted over its elements as torch.tensor does
    (``[np.float64(1.0), 2.0]`` is float64, ``[1, 2.5]`` float32), unless ``dtype`` is given."""
    flat = list(_flatten(data)) if isinstance(data, (list, tuple)) else [data]
    inferred = _dt.default_float.np if not flat else None  # torch.tensor([]) is float32
    has_tensor = False
    for v in flat:
        d = _element_dtype(v)
        inferred = d if inferred is None else _dt._promote_pair(inferred, d)
        has_tensor = has_tensor or isinstance(v, Tensor)
    if has_tensor:
        data = _unwrap_nested(data)
    try:
        return np.asarray(data, dtype=inferred if dtype is None else dtype.np)
    except ValueError:
        where = _ragged_where(data) if isinstance(data, (list, tuple)) else None
        if where is None:
            raise
        raise ValueError(f"tensor(): nested lists must be rectangular (every row the same length), but {where}; "
                         "pad the rows to one length or make one tensor per row") from None


def _ragged_where(seq, path=()):
    """Where a nested list stops being rectangular, e.g. 'data[1] has length 1 but data[0] has length 2'."""
    def describe(v):
        if isinstance(v, (list, tuple)):
            return f"length {len(v)}"
        if isinstance(v, (np.ndarray, Tensor)) and v.ndim:
            return f"shape {tuple(v.shape)}"
        return "a number"

    index = "data" + "".join(f"[{i}]" for i in path)
    for i, v in enumerate(seq[1:], 1):
        if describe(v) != describe(seq[0]):
            return f"{index}[{i}] has {describe(v)} but {index}[0] has {describe(seq[0])}"
    for i, v in enumerate(seq):
        if isinstance(v, (list, tuple)):
            found = _ragged_where(v, path + (i,))
            if found:
                return found
    return None


def _flatten(seq):
    for v in seq:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


def _unwrap_nested(seq):
    return [(_unwrap_nested(v) if isinstance(v, (list, tuple)) else
             (v.data if isinstance(v, Tensor) else v)) for v in seq]


def tensor(data, dtype=None, requires_grad=False) -> Tensor:
    """Create a tensor that owns a copy of ``data`` (nested lists, scalars, arrays, tensors).

    Python floats default to float32 and ints to int64, as in PyTorch; NumPy arrays and scalars keep
    their dtype, and a list's dtype is promoted over its elements (``[np.float64(1.0), 2.0]`` is
    float64, as with torch.tensor).
    """
    dtype = None if dtype is None else _dt.get_dtype(dtype)
    arr = _as_array(data, dtype)
    t = Tensor._make(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
    if requires_grad:
        t.requires_grad_(True)
    return t
