"""Elementwise primitives: arithmetic, math functions, activations, comparisons.

Activations with a cheap closed-form derivative (sigmoid, gelu, silu, softplus, elu...) are
primitives with their own fused NumPy forward rather than chains of smaller ops: in eager
mode each op costs a pass over memory and a graph node, and these run on every activation.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import OpError
from ..tensor import Tensor
from . import threads
from .helpers import NO_ATTRS, as_tensor, broadcast_shapes, cast, const, floating, pair
from .registry import apply, primitive

# ---- shape/dtype rules ----------------------------------------------------------------


def same_infer(x, **_):
    return x.shape, x.np_dtype


def broadcast_infer(*xs, name="elementwise"):
    return broadcast_shapes(*[x.shape for x in xs], op=name), xs[0].np_dtype


def _binary_infer(name):
    return lambda a, b: broadcast_infer(a, b, name=name)


def _compare_infer(name):
    return lambda a, b: (broadcast_shapes(a.shape, b.shape, op=name), np.dtype(np.bool_))


# ---- primitives -----------------------------------------------------------------------

CAST = primitive(
    "cast", lambda x, dtype: x.astype(dtype),
    (lambda g, out, x, dtype: cast(g, x.np_dtype),),
    infer=lambda x, dtype: (x.shape, dtype), saves=())

ADD = primitive("add", np.add, (lambda g, out, a, b: g, lambda g, out, a, b: g),
                infer=_binary_infer("add"), saves=(), broadcasts=True)
SUB = primitive("sub", np.subtract, (lambda g, out, a, b: g, lambda g, out, a, b: -g),
                infer=_binary_infer("sub"), saves=(), broadcasts=True)
MUL = primitive("mul", np.multiply, (lambda g, out, a, b: g * b, lambda g, out, a, b: g * a),
                infer=_binary_infer("mul"), saves={0: (1,), 1: (0,)}, broadcasts=True)
DIV = primitive("div", np.true_divide,
                (lambda g, out, a, b: g / b, lambda g, out, a, b: -g * a / (b * b)),
                infer=_binary_infer("div"), saves={0: (1,), 1: (0, 1)}, broadcasts=True)
POW = primitive("pow", np.power,
                (lambda g, out, a, b: g * b * a ** (b - 1),
                 lambda g, out, a, b: g * out * log(where(a > 0, a, const(1, a.data.dtype)))),
                infer=_binary_infer("pow"), uses_out=True, broadcasts=True)
MAXIMUM = primitive("maximum", np.maximum,
                    (lambda g, out, a, b: g * _tie_mask(a, b), lambda g, out, a, b: g * _tie_mask(b, a)),
                    infer=_binary_infer("maximum"), broadcasts=True)
MINIMUM = primitive("minimum", np.minimum,
                    (lambda g, out, a, b: g * _tie_mask(b, a), lambda g, out, a, b: g * _tie_mask(a, b)),
                    infer=_binary_infer("minimum"), broadcasts=True)
FLOOR_DIVIDE = primitive("floor_divide", np.floor_divide, infer=_binary_infer("floor_divide"))
REMAINDER = primitive("remainder", np.remainder,
                      (lambda g, out, a, b: g,
                       lambda g, out, a, b: -g * floor_divide(a, b).detach()),
                      infer=_binary_infer("remainder"), saves={1: (0, 1)}, broadcasts=True)


def _tie_mask(a, b):
    """1 where a wins, 0.5 on ties (PyTorch splits the gradient), 0 where b wins."""
    return where(a > b, 1.0, where(a == b, 0.5, 0.0))


def _where_np(c, a, b):
    """np.where, branch-free for large float/int arrays of one dtype: NumPy's loop branches per
    element, which costs ~6x more on the random masks of ReLU gradients and dropout. Selecting
    bit patterns with an all-ones/all-zeros mask gives exactly np.where's values (NaN included).
    Large same-shape selections run in batch ranges on ember's threads."""
    if c.size < 4096 or a.dtype != b.dtype or a.dtype.itemsize not in (4, 8) or a.dtype.kind not in "fiu" \
            or c.dtype != np.bool_:
        return np.where(c, a, b)
    shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
    if c.shape == a.shape == shape and b.size == 1 and len(shape) > 1 \
            and 4 * c.size >= threads.PARALLEL_MIN_WORK:
        out = np.empty(shape, a.dtype)
        rows = lambda lo, hi: _select_bits(c[lo:hi], a[lo:hi], b, (hi - lo,) + shape[1:], out[lo:hi])  # noqa: E731
        threads.over_batch(shape[0], rows, 4 * c.size)  # about four passes
        return out
    return _select_bits(c, a, b, shape)


def _select_bits(c, a, b, shape, out=None):
    bits = np.dtype(f"i{a.dtype.itemsize}")
    mask = c.astype(bits)
    np.negative(mask, out=mask)  # True -> all ones
    res = np.bitwise_and(a.view(bits), mask, out=None if out is None else out.view(bits))
    b_bits = b.view(bits)
    if b.size != 1 or b_bits.reshape(-1)[0] != 0:  # b == +0.0 (or 0) adds no bits
        np.invert(mask, out=mask)
        res = np.bitwise_or(res, np.bitwise_and(b_bits, mask), out=res if res.shape == shape else None)
    if res.shape != shape:
        res = np.broadcast_to(res, shape).copy()
    return res.view(a.dtype)


def _relu_np(x):
    if x.size < threads.PARALLEL_MIN_WORK or x.ndim < 2:
        return np.maximum(x, 0)
    out = np.empty_like(x)  # large: in batch ranges on ember's threads
    threads.over_batch(x.shape[0], lambda lo, hi: np.maximum(x[lo:hi], 0, out=out[lo:hi]), x.size)
    return out


WHERE = primitive(
    "where", _where_np,
    (None,
     lambda g, out, c, a, b: where(c, g, const(0, g.data.dtype)),
     lambda g, out, c, a, b: where(c, const(0, g.data.dtype), g)),
    infer=lambda c, a, b: (broadcast_shapes(c.shape, a.shape, b.shape, op="where"), a.np_dtype),
    saves=(0,), broadcasts=True)

NEG = primitive("neg", np.negative, (lambda g, out, x: -g,), infer=same_infer, saves=())
EXP = primitive("exp", np.exp, (lambda g, out, x: g * out,), infer=same_infer, saves=(), uses_out=True)
LOG = primitive("log", np.log, (lambda g, out, x: g / x,), infer=same_infer)
LOG1P = primitive("log1p", np.log1p, (lambda g, out, x: g / (x + 1),), infer=same_infer)
EXPM1 = primitive("expm1", np.expm1, (lambda g, out, x: g * (out + 1),), infer=same_infer,
                  saves=(), uses_out=True)
SQRT = primitive("sqrt", np.sqrt, (lambda g, out, x: g * 0.5 / out,), infer=same_infer,
                 saves=(), uses_out=True)
RSQRT = primitive("rsqrt", lambda x: 1 / np.sqrt(x),
                  (lambda g, out, x: g * -0.5 * out * out * out,), infer=same_infer, saves=(),
                  uses_out=True)
ABS = primitive("abs", np.abs, (lambda g, out, x: g * sign(x),), infer=same_infer)
SIGN = primitive("sign", np.sign, (lambda g, out, x: g * 0,), infer=same_infer, saves=())
SIN = primitive("sin", np.sin, (lambda g, out, x: g * cos(x),), infer=same_infer)
COS = primitive("cos", np.cos, (lambda g, out, x: -g * sin(x),), infer=same_infer)
ASIN = primitive("asin", np.arcsin, (lambda g, out, x: g * rsqrt(1 - x * x),), infer=same_infer)
ACOS = primitive("acos", np.arccos, (lambda g, out, x: -g * rsqrt(1 - x * x),), infer=same_infer)
ATAN = primitive("atan", np.arctan, (lambda g, out, x: g / (1 + x * x),), infer=same_infer)
TANH = primitive("tanh", np.tanh, (lambda g, out, x: g * (1 - out * out),), infer=same_infer,
                 saves=(), uses_out=True)


def _sigmoid_np(x):
    # exp of a non-positive number never overflows, for either sign of x
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


SIGMOID = primitive("sigmoid", _sigmoid_np, (lambda g, out, x: g * out * (1 - out),),
                    infer=same_infer, saves=(), uses_out=True)
RELU = primitive("relu", _relu_np,
                 (lambda g, out, x: where(out > 0, g, 0),), infer=same_infer, saves=(),
                 uses_out=True)
LEAKY_RELU = primitive(
    "leaky_relu", lambda x, slope: np.where(x > 0, x, x * np.asarray(slope, x.dtype)),
    (lambda g, out, x, slope: where(x > 0, g, g * slope),), infer=same_infer)
ELU = primitive(
    "elu", lambda x, alpha: np.where(x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(np.minimum(x, 0))),
    (lambda g, out, x, alpha: where(x > 0, g, g * (out + alpha)),), infer=same_infer, uses_out=True)
SOFTPLUS = primitive(
    "softplus",
    lambda x, beta, threshold: np.where(
        x * beta > threshold, x,
        (np.logaddexp(0, x * np.asarray(beta, x.dtype)) / np.asarray(beta, x.dtype))).astype(x.dtype),
    (lambda g, out, x, beta, threshold: where(x * beta > threshold, g, g * sigmoid(x * beta)),),
    infer=same_infer)
SILU = primitive(
    "silu", lambda x: x * _sigmoid_np(x),
    (lambda g, out, x: _silu_grad(g, x),), infer=same_infer)


def _silu_grad(g, x):
    s = sigmoid(x)
    return g * (s * (1 + x * (1 - s)))


_ERF = None


def _erf_np(x):
    """erf elementwise. SciPy's when installed; else math.erf, exact but slower."""
    global _ERF
    if _ERF is None:
        try:
            from scipy.special import erf as scipy_erf

            _ERF = scipy_erf
        except ImportError:
            _vec = np.frompyfunc(math.erf, 1, 1)
            _ERF = lambda a: _vec(a).astype(a.dtype)  # noqa: E731
    return _ERF(x).astype(x.dtype, copy=False)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)

ERF = primitive("erf", _erf_np,
                (lambda g, out, x: g * (2 / math.sqrt(math.pi)) * exp(-(x * x)),), infer=same_infer)


def _gelu_np(x, approximate):
    dt = x.dtype
    if approximate == "tanh":
        inner = np.asarray(_SQRT_2_OVER_PI, dt) * (x + np.asarray(0.044715, dt) * x * x * x)
        return np.asarray(0.5, dt) * x * (1 + np.tanh(inner))
    return np.asarray(0.5, dt) * x * (1 + _erf_np(x * np.asarray(_INV_SQRT2, dt)))


def _gelu_grad(g, out, x, approximate):
    if approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        t = tanh(inner)
        dinner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner)
    cdf = 0.5 * (1 + erf(x * _INV_SQRT2))
    pdf = exp(-0.5 * x * x) * _INV_SQRT_2PI
    return g * (cdf + x * pdf)


GELU = primitive("gelu", _gelu_np, (_gelu_grad,), infer=same_infer)
CLAMP = primitive(
    "clamp", lambda x, lo, hi: np.clip(x, lo, hi),
    (lambda g, out, x, lo, hi: where(_in_range(x, lo, hi), g, 0),), infer=same_infer)


def _in_range(x, lo, hi):
    if lo is None:
        return x <= hi
    if hi is None:
        return x >= lo
    return logical_and(x >= lo, x <= hi)


def _nograd(name, fn, infer):
    return primitive(name, fn, infer=infer)


EQ = _nograd("eq", np.equal, _compare_infer("eq"))
NE = _nograd("ne", np.not_equal, _compare_infer("ne"))
LT = _nograd("lt", np.less, _compare_infer("lt"))
LE = _nograd("le", np.less_equal, _compare_infer("le"))
GT = _nograd("gt", np.greater, _compare_infer("gt"))
GE = _nograd("ge", np.greater_equal, _compare_infer("ge"))
LOGICAL_AND = _nograd("logical_and", np.logical_and, _compare_infer("logical_and"))
LOGICAL_OR = _nograd("logical_or", np.logical_or, _compare_infer("logical_or"))
LOGICAL_XOR = _nograd("logical_xor", np.logical_xor, _compare_infer("logical_xor"))
LOGICAL_NOT = _nograd("logical_not", np.logical_not, lambda x: (x.shape, np.dtype(np.bool_)))
ISNAN = _nograd("isnan", np.isnan, lambda x: (x.shape, np.dtype(np.bool_)))
ISINF = _nograd("isinf", np.isinf, lambda x: (x.shape, np.dtype(np.bool_)))
ISFINITE = _nograd("isfinite", np.isfinite, lambda x: (x.shape, np.dtype(np.bool_)))
FLOOR = primitive("floor", np.floor, (lambda g, out, x: g * 0,), infer=same_infer, saves=())
CEIL = primitive("ceil", np.ceil, (lambda g, out, x: g * 0,), infer=same_infer, saves=())
ROUND = primitive("round", np.round, (lambda g, out, x: g * 0,), infer=same_infer, saves=())
BITWISE_NOT = _nograd("bitwise_not", np.invert, same_infer)


# ---- public functions -----------------------------------------------------------------

def add(a, b, alpha=None):
    """a + alpha * b, broadcasting."""
    if alpha is not None and alpha != 1:
        b = mul(b, alpha)
    return apply(ADD, pair(a, b), NO_ATTRS)


def sub(a, b, alpha=None):
    if alpha is not None and alpha != 1:
        b = mul(b, alpha)
    if _is_bool(a) or _is_bool(b):  # as PyTorch: `1 - mask` on a bool mask is almost always a mistake for `~mask`
        raise OpError(f"sub: subtraction with a bool operand is not supported (got {_describe(a)} - {_describe(b)}); "
                      "to invert a mask use ~mask or logical_not(), to count use mask.long() first")
    return apply(SUB, pair(a, b), NO_ATTRS)


def mul(a, b):
    return apply(MUL, pair(a, b), NO_ATTRS)


def div(a, b, rounding_mode=None):
    """True division; integer inputs give float32 (as PyTorch). rounding_mode='floor'|'trunc'."""
    a, b = pair(a, b)
    if rounding_mode == "floor":
        return floor_divide(a, b)
    if rounding_mode == "trunc":
        return cast(trunc(div(a, b)), a.data.dtype)
    if a.data.dtype.kind != "f":
        a, b = floating(a), floating(b)
    return apply(DIV, (a, b), NO_ATTRS)


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_)) or (isinstance(v, Tensor) and v.data.dtype == np.bool_)


def _describe(v) -> str:
    return f"{v.dtype} tensor of shape {v.shape}" if isinstance(v, Tensor) else repr(v)


def _no_bool_arithmetic(op, a, b):
    """Promoted to bool, NumPy would compute // % ** in int8; PyTorch has no such kernels."""
    if a.data.dtype == np.bool_:
        raise OpError(f"{op}: not defined for two bool operands (got {_describe(a)} and {_describe(b)}); "
                      "convert them with .long() or .float() first")
    return a, b


def floor_divide(a, b):
    return apply(FLOOR_DIVIDE, _no_bool_arithmetic("floor_divide", *pair(a, b)), NO_ATTRS)


def remainder(a, b):
    return apply(REMAINDER, _no_bool_arithmetic("remainder", *pair(a, b)), NO_ATTRS)


def pow(a, b):  # noqa: A001  (PyTorch's name)
    a, b = _no_bool_arithmetic("pow", *pair(a, b))
    if a.data.dtype.kind in "iu" and (b.data < 0).any():
        raise OpError("pow: integers to negative integer powers are not allowed; "
                      "convert the base to float first")
    return apply(POW, (a, b), NO_ATTRS)


def maximum(a, b):
    return apply(MAXIMUM, pair(a, b), NO_ATTRS)


def minimum(a, b):
    return apply(MINIMUM, pair(a, b), NO_ATTRS)


def where(condition, a, b):
    """Elementwise ``a`` where ``condition`` else ``b`` (broadcasting all three)."""
    c = as_tensor(condition)
    if c.data.dtype != np.bool_:
        c = cast(c, np.bool_)
    a, b = pair(a, b)
    return apply(WHERE, (c, a, b), NO_ATTRS)


def neg(x):
    x = as_tensor(x)
    if x.data.dtype == np.bool_:
        raise OpError("neg: negation of a bool tensor is not supported; use logical_not()")
    return apply(NEG, (x,), NO_ATTRS)


def _unary_float(op):
    def fn(x):
        return apply(op, (floating(as_tensor(x)),), NO_ATTRS)

    fn.__name__ = op.name
    fn.__doc__ = f"Elementwise {op.name}; integer inputs are computed in float32."
    return fn


exp = _unary_float(EXP)
log = _unary_float(LOG)
log1p = _unary_float(LOG1P)
expm1 = _unary_float(EXPM1)
sqrt = _unary_float(SQRT)
rsqrt = _unary_float(RSQRT)
sin = _unary_float(SIN)
cos = _unary_float(COS)
asin = _unary_float(ASIN)
acos = _unary_float(ACOS)
atan = _unary_float(ATAN)
tanh = _unary_float(TANH)
sigmoid = _unary_float(SIGMOID)
silu = _unary_float(SILU)
erf = _unary_float(ERF)


def abs(x):  # noqa: A001
    return apply(ABS, (as_tensor(x),), NO_ATTRS)


def sign(x):
    x = as_tensor(x)
    if x.data.dtype == np.bool_:  # sign(True) is True, as in PyTorch
        return logical_or(x, x)
    return apply(SIGN, (x,), NO_ATTRS)


def floor(x):
    x = as_tensor(x)
    return x if x.data.dtype.kind in "iub" else apply(FLOOR, (x,), NO_ATTRS)


def ceil(x):
    x = as_tensor(x)
    return x if x.data.dtype.kind in "iub" else apply(CEIL, (x,), NO_ATTRS)


def round(x):  # noqa: A001
    x = as_tensor(x)
    return x if x.data.dtype.kind in "iub" else apply(ROUND, (x,), NO_ATTRS)


def trunc(x):
    x = as_tensor(x)
    if x.data.dtype.kind in "iub":
        return x
    return where(x >= 0, floor(x), ceil(x))


def relu(x):
    return apply(RELU, (as_tensor(x),), NO_ATTRS)


def leaky_relu(x, negative_slope=0.01):
    return apply(LEAKY_RELU, (floating(as_tensor(x)),), {"slope": float(negative_slope)})


def elu(x, alpha=1.0):
    return apply(ELU, (floating(as_tensor(x)),), {"alpha": float(alpha)})


def softplus(x, beta=1.0, threshold=20.0):
    return apply(SOFTPLUS, (floating(as_tensor(x)),), {"beta": float(beta), "threshold": float(threshold)})


def gelu(x, approximate="none"):
    """GELU: x * Phi(x) exactly (erf), or with ``approximate='tanh'`` the tanh formula."""
    if approximate not in ("none", "tanh"):
        raise OpError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply(GELU, (floating(as_tensor(x)),), {"approximate": approximate})


def clamp(x, min=None, max=None):  # noqa: A002
    """Clip to [min, max] (either may be None). Tensor bounds broadcast."""
    x = as_tensor(x)
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        if min is not None:
            x = maximum(x, min)
        if max is not None:
            x = minimum(x, max)
        return x
    if min is None and max is None:
        raise OpError("clamp: at least one of min and max must be given")
    if x.data.dtype.kind in "iub" and any(isinstance(v, float) for v in (min, max)):
        x = floating(x)
    return apply(CLAMP, (x,), {"lo": min, "hi": max})


clip = clamp


def _compare(op):
    def fn(a, b):
        return apply(op, pair(a, b), NO_ATTRS)

    fn.__name__ = op.name
    return fn


eq = _compare(EQ)
ne = _compare(NE)
lt = _compare(LT)
le = _compare(LE)
gt = _compare(GT)
ge = _compare(GE)
logical_and = _compare(LOGICAL_AND)
logical_or = _compare(LOGICAL_OR)
logical_xor = _compare(LOGICAL_XOR)


def logical_not(x):
    return apply(LOGICAL_NOT, (as_tensor(x),), NO_ATTRS)


def isnan(x):
    return apply(ISNAN, (as_tensor(x),), NO_ATTRS)


def isinf(x):
    return apply(ISINF, (as_tensor(x),), NO_ATTRS)


def isfinite(x):
    return apply(ISFINITE, (as_tensor(x),), NO_ATTRS)


def bitwise_not(x):
    x = as_tensor(x)
    if x.data.dtype == np.bool_:
        return logical_not(x)
    return apply(BITWISE_NOT, (x,), NO_ATTRS)


def astype(x, dtype):
    """A copy of ``x`` converted to ``dtype`` (differentiable between float dtypes)."""
    from ..dtypes import get_dtype

    return cast(as_tensor(x), get_dtype(dtype).np)


def square(x):
    return mul(x, x)


def reciprocal(x):
    return div(1.0, x)


def lerp(a, b, weight):
    return add(a, mul(weight, sub(b, a)))


def tril(x, diagonal=0):
    """Lower triangle of the last two dims (the rest set to zero)."""
    x = as_tensor(x)
    n, m = x.shape[-2], x.shape[-1]
    return where(np.tri(n, m, diagonal, dtype=bool), x, const(0, x.data.dtype))


def triu(x, diagonal=0):
    """Upper triangle of the last two dims (the rest set to zero)."""
    x = as_tensor(x)
    n, m = x.shape[-2], x.shape[-1]
    return where(~np.tri(n, m, diagonal - 1, dtype=bool), x, const(0, x.data.dtype))


BITWISE_AND = _nograd("bitwise_and", np.bitwise_and, _binary_infer("bitwise_and"))
BITWISE_OR = _nograd("bitwise_or", np.bitwise_or, _binary_infer("bitwise_or"))
BITWISE_XOR = _nograd("bitwise_xor", np.bitwise_xor, _binary_infer("bitwise_xor"))


def _bitwise(op, logical):
    def fn(a, b):
        a, b = pair(a, b)
        if a.data.dtype == np.bool_:
            return logical(a, b)
        if a.data.dtype.kind not in "iu":
            raise OpError(f"{op.name}: expects integer or bool tensors, got {a.dtype}")
        return apply(op, (a, b), NO_ATTRS)

    fn.__name__ = op.name
    return fn


bitwise_and = _bitwise(BITWISE_AND, logical_and)
bitwise_or = _bitwise(BITWISE_OR, logical_or)
bitwise_xor = _bitwise(BITWISE_XOR, logical_xor)


# ---- per-element forms, for the compiler's fused kernels ------------------------------------
# Each entry gives the op on single elements as an expression in numba-compatible Python
# (``math`` and ``np`` are available). Ops listed here can be fused by ``em.jit``.
# Other transcendental functions (log, erf, pow, sin...) are deliberately not listed: numba
# calls scalar libm for them, 5-30x slower than NumPy's SIMD loops on this CPU, more than the
# memory pass that fusing them would save. exp, tanh, sigmoid and the tanh GELU fuse in
# float32 only, where the compiler has vectorizable versions (compiler/fastmath.py).

def _typed(expr, dtype):
    return f"np.{np.dtype(dtype).name}({expr})"


_SCALAR = {
    ADD: lambda a, b: f"({a} + {b})",
    SUB: lambda a, b: f"({a} - {b})",
    MUL: lambda a, b: f"({a} * {b})",
    DIV: lambda a, b: f"({a} / {b})",
    # np.maximum/np.minimum/np.floor on scalars (as NumPy: NaN propagates, floor stays a float)
    MAXIMUM: lambda a, b: f"np.maximum({a}, {b})",
    MINIMUM: lambda a, b: f"np.minimum({a}, {b})",
    WHERE: lambda c, a, b: f"({a} if {c} else {b})",
    NEG: lambda x: f"(-{x})",
    SQRT: lambda x: f"np.sqrt({x})",  # stays in the input's precision (math.sqrt is float64)
    RSQRT: lambda x: f"(1.0 / math.sqrt({x}))",
    ABS: lambda x: f"abs({x})",
    RELU: lambda x: f"np.maximum({x}, 0)",
    LEAKY_RELU: lambda x, slope: f"({x} if {x} > 0 else {slope!r} * {x})",
    CLAMP: lambda x, lo, hi: (f"min(max({x}, {lo!r}), {hi!r})" if lo is not None and hi is not None
                              else f"max({x}, {lo!r})" if lo is not None else f"min({x}, {hi!r})"),
    CAST: lambda x, dtype: _typed(x, dtype),
    EQ: lambda a, b: f"({a} == {b})",
    NE: lambda a, b: f"({a} != {b})",
    LT: lambda a, b: f"({a} < {b})",
    LE: lambda a, b: f"({a} <= {b})",
    GT: lambda a, b: f"({a} > {b})",
    GE: lambda a, b: f"({a} >= {b})",
    LOGICAL_AND: lambda a, b: f"(bool({a}) and bool({b}))",
    LOGICAL_OR: lambda a, b: f"(bool({a}) or bool({b}))",
    LOGICAL_NOT: lambda x: f"(not {x})",
    ISNAN: lambda x: f"math.isnan({x})",
    ISINF: lambda x: f"math.isinf({x})",
    FLOOR: lambda x: f"np.floor({x})",
    CEIL: lambda x: f"np.ceil({x})",
    SIGN: lambda x: f"(1.0 if {x} > 0 else (-1.0 if {x} < 0 else 0.0 * {x}))",
}
for _op, _fn in _SCALAR.items():
    _op.scalar = _fn


def _f32(value):
    return f"np.float32({float(np.float32(value))!r})"


def _gelu_scalar(x, approximate):
    if approximate != "tanh":
        return None  # erf has no vectorizable form here: exact GELU stays a NumPy call
    # the operations of _gelu_np, in its order
    inner = f"({_f32(_SQRT_2_OVER_PI)} * ({x} + {_f32(0.044715)} * {x} * {x} * {x}))"
    return f"({_f32(0.5)} * {x} * ({_f32(1)} + fast_tanh({inner})))"


_SCALAR_FLOAT32 = {
    EXP: lambda x: f"fast_exp({x})",
    TANH: lambda x: f"fast_tanh({x})",
    SIGMOID: lambda x: f"fast_sigmoid({x})",
    GELU: _gelu_scalar,
}
for _op, _fn in _SCALAR_FLOAT32.items():
    _op.scalar, _op.scalar_dtypes = _fn, ("float32",)


# ---- ONNX mappings (read by em.onnx.export): ctx emits ONNX nodes, returns the result's name --

def _onnx_simple(op_type, **attrs):
    return lambda ctx, n: ctx.emit(op_type, [ctx.input(n, k) for k in range(len(n.inputs))], **attrs)


def _onnx_gelu(ctx, n):
    x = ctx.input(n, 0)
    dt = n.output.dtype
    half = ctx.const(np.asarray(0.5, dt))
    one = ctx.const(np.asarray(1.0, dt))
    if n.attrs["approximate"] == "tanh":
        cubic = ctx.emit("Mul", [ctx.emit("Mul", [x, x]), x])
        inner = ctx.emit("Add", [x, ctx.emit("Mul", [cubic, ctx.const(np.asarray(0.044715, dt))])])
        t = ctx.emit("Tanh", [ctx.emit("Mul", [inner, ctx.const(np.asarray(_SQRT_2_OVER_PI, dt))])])
    else:
        t = ctx.emit("Erf", [ctx.emit("Mul", [x, ctx.const(np.asarray(_INV_SQRT2, dt))])])
    return ctx.emit("Mul", [ctx.emit("Mul", [x, half]), ctx.emit("Add", [one, t])])


def _onnx_softplus(ctx, n):
    x, beta = ctx.input(n, 0), n.attrs["beta"]
    if beta == 1.0:
        return ctx.emit("Softplus", [x])
    b = ctx.const(np.asarray(beta, n.output.dtype))
    return ctx.emit("Div", [ctx.emit("Softplus", [ctx.emit("Mul", [x, b])]), b])


def _onnx_clamp(ctx, n):
    dt = n.output.dtype
    lo = "" if n.attrs["lo"] is None else ctx.const(np.asarray(n.attrs["lo"], dt))
    hi = "" if n.attrs["hi"] is None else ctx.const(np.asarray(n.attrs["hi"], dt))
    return ctx.emit("Clip", [ctx.input(n, 0), lo, hi])


def _onnx_with_one(op_type, combine):
    def mapping(ctx, n):
        x = ctx.input(n, 0)
        one = ctx.const(np.asarray(1.0, n.output.dtype))
        return ctx.emit(combine, [ctx.emit(op_type, [x]), one]) if combine == "Sub" else \
            ctx.emit(op_type, [ctx.emit(combine, [x, one])])
    return mapping


for _op, _mapping in {
    ADD: _onnx_simple("Add"), SUB: _onnx_simple("Sub"), MUL: _onnx_simple("Mul"), DIV: _onnx_simple("Div"),
    POW: _onnx_simple("Pow"), MAXIMUM: _onnx_simple("Max"), MINIMUM: _onnx_simple("Min"),
    WHERE: _onnx_simple("Where"), NEG: _onnx_simple("Neg"), EXP: _onnx_simple("Exp"), LOG: _onnx_simple("Log"),
    SQRT: _onnx_simple("Sqrt"), ABS: _onnx_simple("Abs"), SIGN: _onnx_simple("Sign"), SIN: _onnx_simple("Sin"),
    COS: _onnx_simple("Cos"), ASIN: _onnx_simple("Asin"), ACOS: _onnx_simple("Acos"), ATAN: _onnx_simple("Atan"),
    TANH: _onnx_simple("Tanh"), SIGMOID: _onnx_simple("Sigmoid"),
    RELU: _onnx_simple("Relu"), ERF: _onnx_simple("Erf"), FLOOR: _onnx_simple("Floor"),
    CEIL: _onnx_simple("Ceil"), ROUND: _onnx_simple("Round"), EQ: _onnx_simple("Equal"), LT: _onnx_simple("Less"),
    LE: _onnx_simple("LessOrEqual"), GT: _onnx_simple("Greater"), GE: _onnx_simple("GreaterOrEqual"),
    LOGICAL_AND: _onnx_simple("And"), LOGICAL_OR: _onnx_simple("Or"), LOGICAL_XOR: _onnx_simple("Xor"),
    LOGICAL_NOT: _onnx_simple("Not"), ISNAN: _onnx_simple("IsNaN"), ISINF: _onnx_simple("IsInf"),
    REMAINDER: _onnx_simple("Mod", fmod=0),
    NE: lambda ctx, n: ctx.emit("Not", [ctx.emit("Equal", [ctx.input(n, 0), ctx.input(n, 1)])]),
    ISFINITE: lambda ctx, n: ctx.emit("Not", [ctx.emit("Or", [ctx.emit("IsNaN", [ctx.input(n, 0)]),
                                                              ctx.emit("IsInf", [ctx.input(n, 0)])])]),
    RSQRT: lambda ctx, n: ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.input(n, 0)])]),
    LOG1P: _onnx_with_one("Log", "Add"), EXPM1: _onnx_with_one("Exp", "Sub"),
    LEAKY_RELU: lambda ctx, n: ctx.emit("LeakyRelu", [ctx.input(n, 0)], alpha=n.attrs["slope"]),
    ELU: lambda ctx, n: ctx.emit("Elu", [ctx.input(n, 0)], alpha=n.attrs["alpha"]),
    SILU: lambda ctx, n: ctx.emit("Mul", [ctx.input(n, 0), ctx.emit("Sigmoid", [ctx.input(n, 0)])]),
    GELU: _onnx_gelu, SOFTPLUS: _onnx_softplus, CLAMP: _onnx_clamp,
    CAST: lambda ctx, n: ctx.emit("Cast", [ctx.input(n, 0)], to=ctx.dtype(n.attrs["dtype"])),
    # integers: (a - a mod b) / b is exact, and Mod with fmod=0 floors like NumPy
    FLOOR_DIVIDE: lambda ctx, n: (ctx.emit("Floor", [ctx.emit("Div", [ctx.input(n, 0), ctx.input(n, 1)])])
                                  if n.output.dtype.kind == "f" else
                                  ctx.emit("Div", [ctx.emit("Sub", [ctx.input(n, 0), ctx.emit(
                                      "Mod", [ctx.input(n, 0), ctx.input(n, 1)], fmod=0)]), ctx.input(n, 1)])),
}.items():
    _op.onnx = _mapping
