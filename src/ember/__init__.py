"""ember: write it like PyTorch, train it like Keras, compile and ship it like TensorFlow.

``import ember as em`` gives tensors with autograd, the op library and factories here;
``em.nn``, ``em.optim``, ``em.data`` and the rest load on first use to keep import fast.
"""

from __future__ import annotations

import importlib

from . import _malloc  # noqa: F401  (before any array is allocated)
from . import ops as _ops  # noqa: F401  (binds Tensor methods)
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401
from .autograd.functional import grad_fn as grad  # noqa: F401
from .autograd.functional import value_and_grad  # noqa: F401
from .creation import (  # noqa: F401
    arange,
    as_tensor,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    logspace,
    ones,
    ones_like,
    zeros,
    zeros_like,
)
from .dtypes import (  # noqa: F401
    DType,
    float16,
    float32,
    float64,
    get_dtype,
    int8,
    int16,
    int32,
    int64,
    uint8,
    uint16,
    uint32,
    uint64,
)
from .dtypes import bool_ as bool  # noqa: A001, F401
from .errors import GradError, IndexingError, OpError, ShapeError  # noqa: F401
from .ops.elementwise import (  # noqa: F401
    abs,
    acos,
    add,
    asin,
    astype,
    atan,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    ceil,
    clamp,
    clip,
    cos,
    div,
    elu,
    eq,
    erf,
    exp,
    expm1,
    floor,
    floor_divide,
    ge,
    gelu,
    gt,
    isfinite,
    isinf,
    isnan,
    le,
    leaky_relu,
    lerp,
    log,
    log1p,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    lt,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pow,
    reciprocal,
    relu,
    remainder,
    round,
    rsqrt,
    sigmoid,
    sign,
    silu,
    sin,
    softplus,
    sqrt,
    square,
    sub,
    tanh,
    tril,
    triu,
    trunc,
    where,
)
from .ops.indexing import (  # noqa: F401
    gather,
    index_add,
    index_select,
    masked_fill,
    masked_select,
    nonzero,
    scatter,
    scatter_add,
    take,
    take_along_dim,
)
from .ops.linalg import bmm, dot, einsum, matmul, mm, outer, tensordot  # noqa: F401
from .ops.movement import (  # noqa: F401
    broadcast_tensors,
    broadcast_to,
    cat,
    chunk,
    clone,
    concat,
    concatenate,
    expand,
    flatten,
    flip,
    movedim,
    narrow,
    permute,
    repeat_interleave,
    reshape,
    roll,
    split,
    squeeze,
    stack,
    swapaxes,
    t,
    tile,
    transpose,
    unbind,
    unflatten,
    unsqueeze,
)
from .ops.nn import log_softmax, one_hot, softmax  # noqa: F401
from .ops.reduce import (  # noqa: F401
    all,
    amax,
    amin,
    any,
    argmax,
    argmin,
    count_nonzero,
    cumprod,
    cumsum,
    logsumexp,
    max,
    mean,
    min,
    norm,
    prod,
    std,
    sum,
    var,
    var_mean,
)
from .random import (  # noqa: F401
    Generator,
    bernoulli,
    get_rng_state,
    initial_seed,
    manual_seed,
    multinomial,
    normal,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    seed,
    set_rng_state,
    uniform,
)
from .tensor import Tensor, tensor  # noqa: F401

__version__ = "0.1.0"

float = float32  # noqa: A001  (torch.float)
double = float64
half = float16
long = int64

# Heavier subpackages load on first attribute access: `em.nn`, `em.optim`, ...
_LAZY = {"nn": "ember.nn", "optim": "ember.optim", "data": "ember.data", "layers": "ember.layers",
         "training": "ember.training", "saving": "ember.saving", "utils": "ember.utils",
         "callbacks": "ember.training.callbacks", "compiler": "ember.compiler", "onnx": "ember.onnx",
         "quantize": "ember.quantize", "distributed": "ember.distributed",
         "metrics": "ember.training.metrics", "losses": "ember.training.losses", "cli": "ember.cli"}
_LAZY_ATTRS = {
    "Model": ("ember.training.model", "Model"),
    "Sequential": ("ember.training.model", "Sequential"),
    "save": ("ember.saving", "save"),
    "load": ("ember.saving", "load"),
    "save_weights": ("ember.saving", "save_weights"),
    "load_weights": ("ember.saving", "load_weights"),
    "save_checkpoint": ("ember.saving", "save_checkpoint"),
    "load_checkpoint": ("ember.saving", "load_checkpoint"),
    "load_state_dict_from": ("ember.saving", "load_state_dict_from"),
    "jit": ("ember.compiler.jit", "jit"),
    "TraceError": ("ember.compiler.trace", "TraceError"),
}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in _LAZY_ATTRS:
        mod, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
