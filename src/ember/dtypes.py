"""ember's dtypes and PyTorch's type-promotion rules.

A DType wraps a NumPy dtype. Tensors store NumPy arrays, so ``Tensor.dtype`` is a dict
lookup from the array's dtype to one of the singletons below.
"""

from __future__ import annotations

import numpy as np

_BOOL, _INT, _FLOAT = 0, 1, 2  # promotion categories, lowest first


class DType:
    __slots__ = ("name", "np", "category", "itemsize")

    def __init__(self, name: str, np_dtype, category: int):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.category = category
        self.itemsize = self.np.itemsize

    @property
    def is_floating_point(self) -> bool:
        return self.category == _FLOAT

    def __repr__(self) -> str:
        return f"ember.{self.name}"

    def __reduce__(self):  # dtypes are singletons, also across processes
        return (get_dtype, (self.name,))


bool_ = DType("bool", np.bool_, _BOOL)
uint8 = DType("uint8", np.uint8, _INT)
uint16 = DType("uint16", np.uint16, _INT)
uint32 = DType("uint32", np.uint32, _INT)
uint64 = DType("uint64", np.uint64, _INT)
int8 = DType("int8", np.int8, _INT)
int16 = DType("int16", np.int16, _INT)
int32 = DType("int32", np.int32, _INT)
int64 = DType("int64", np.int64, _INT)
float16 = DType("float16", np.float16, _FLOAT)
float32 = DType("float32", np.float32, _FLOAT)
float64 = DType("float64", np.float64, _FLOAT)

ALL = (bool_, uint8, int8, int16, int32, int64, uint16, uint32, uint64, float16, float32, float64)
_BY_NP = {d.np: d for d in ALL}
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"bool_": bool_, "float": float32, "double": float64, "half": float16,
                 "long": int64, "int": int32, "short": int16})

default_float = float32
default_int = int64


def get_dtype(spec) -> DType:
    """Return the ember DType for an ember DType, NumPy dtype, Python type (float -> float64, int -> int64,
    bool -> bool, as in PyTorch) or name ("float32", "float" = float32, "long"...)."""
    if isinstance(spec, DType):
        return spec
    if spec is float:  # as torch and NumPy: Python's float is a double (em.float is float32)
        return float64
    if spec is int:
        return default_int
    if spec is bool:
        return bool_
    if isinstance(spec, str):
        d = _BY_NAME.get(spec)
        if d is None:
            raise TypeError(f"unknown dtype {spec!r}; expected one of {sorted(_BY_NAME)}")
        return d
    try:
        return _BY_NP[np.dtype(spec)]
    except (TypeError, KeyError):
        raise TypeError(f"unsupported dtype {spec!r}; ember supports "
                        f"{', '.join(d.name for d in ALL)}") from None


def from_numpy_dtype(np_dtype) -> DType:
    d = _BY_NP.get(np_dtype)
    if d is None:
        raise TypeError(f"NumPy dtype {np_dtype} has no ember equivalent; "
                        f"convert the array to one of {', '.join(d.name for d in ALL)}")
    return d


def _promote_pair(a: np.dtype, b: np.dtype) -> np.dtype:
    """PyTorch's promote_types for two tensor dtypes (no float64 from int64+float32)."""
    if a == b:
        return a
    ca, cb = _BY_NP[a].category, _BY_NP[b].category
    if ca != cb:
        return a if ca > cb else b
    if ca == _FLOAT or ca == _INT:
        # within a category the wider type wins; uint8+int8 -> int16 as in PyTorch
        if {a, b} == {np.dtype(np.uint8), np.dtype(np.int8)}:
            return np.dtype(np.int16)
        return np.promote_types(a, b)
    return a


def scalar_category(value) -> int:
    if isinstance(value, (bool, np.bool_)):
        return _BOOL
    if isinstance(value, (int, np.integer)):
        return _INT
    return _FLOAT


_DEFAULT_FOR_CATEGORY = {_BOOL: np.dtype(np.bool_), _INT: np.dtype(np.int64), _FLOAT: np.dtype(np.float32)}


def result_type(tensors_np_dtypes, ndims, scalars=()) -> np.dtype:
    """Promotion over tensor dtypes (with their ndims) and Python scalars, as PyTorch does.

    Dimensioned tensors outrank 0-d tensors, which outrank Python scalars; a lower tier only
    matters when it is of a higher category (e.g. int tensor * 2.5 -> float32).
    """
    dimmed = None
    zerod = None
    for dt, nd in zip(tensors_np_dtypes, ndims):
        if nd:
            dimmed = dt if dimmed is None else _promote_pair(dimmed, dt)
        else:
            zerod = dt if zerod is None else _promote_pair(zerod, dt)
    result = dimmed
    if zerod is not None and (result is None or _BY_NP[zerod].category > _BY_NP[result].category):
        result = zerod
    if scalars:
        cat = max(scalar_category(s) for s in scalars)
        if result is None:
            result = _DEFAULT_FOR_CATEGORY[cat]
        elif cat > _BY_NP[result].category:
            result = np.dtype(default_float.np) if cat == _FLOAT else _DEFAULT_FOR_CATEGORY[cat]
    return result
