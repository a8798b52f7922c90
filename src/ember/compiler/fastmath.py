"""exp and tanh for the fused kernels, written so that LLVM vectorizes them.

Numba calls libm's ``expf``/``tanhf`` once per element (this numba has no SVML), about 5x
slower than NumPy's SIMD loops, so kernels could not contain them and every exp, tanh,
sigmoid or GELU cost its own NumPy pass. These float32 versions are plain arithmetic and
selects, with no calls and no branches, so a kernel's loop over them vectorizes to AVX-512
like the rest of its body (as XLA's CPU backend and Eigen do):

  exp   Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for
        e^r (Cephes' expf), and 2^n applied as two exponent-field scalings, so that results
        in the subnormal range and overflow to inf are as NumPy's;
  tanh  the odd polynomial of Cephes' tanhf for |x| < 0.625, else 1 - 2 / (e^2|x| + 1);
  sigmoid  from e^-|x|, as NumPy's.

Measured against float64 NumPy over all float32 magnitudes: exp within 1.5 ulps, tanh
within 2, sigmoid within 3 (NumPy's float32 sigmoid formula: 3.4), in
tests/compiler/test_fastmath.py. float64 arguments call libm (math.exp, math.tanh).
Importing this module imports numba: only the compiler's kernels do.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits`` (a free register reinterpretation)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


_LN2_HI = np.float32(0.693359375)        # ln 2 split so that n * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_LOG2E = np.float32(1.44269504088896341)


@numba.njit(nogil=True, error_model="numpy")
def _exp32(x):
    # beyond these e^x is inf, or below the smallest subnormal; clamping keeps n in range
    y = min(max(x, np.float32(-104.0)), np.float32(89.0))
    # below -104 e^x rounds to 0: a select gives it, and the lane computes e^0 meanwhile. Computed,
    # its last scaling underflows, and Intel cores take a microcode assist for every operation
    # whose result is subnormal or underflows: a causal softmax, whose masked half is -inf, ran
    # 2.5x slower (AMD's cores take no such assist)
    underflows = x < np.float32(-104.0)
    y = np.float32(0.0) if underflows else y
    n = np.floor(y * _LOG2E + np.float32(0.5))
    r = y - n * _LN2_HI
    r = r - n * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    k = np.int32(n)
    half = k >> 1  # 2^n as 2^half * 2^(n - half): each factor a normal float32 for n in [-150, 129]
    scaled = p * _float32_from_bits((half + np.int32(127)) << 23) * \
        _float32_from_bits((k - half + np.int32(127)) << 23)
    scaled = np.float32(0.0) if underflows else scaled
    return scaled if x == x else x  # NaN stays NaN


@numba.njit(nogil=True, error_model="numpy")
def _tanh32(x):
    a = abs(x)
    z = x * x
    small = (((((np.float32(-5.70498872745e-3) * z + np.float32(2.06390887954e-2)) * z
                - np.float32(5.37397155531e-2)) * z + np.float32(1.33314422036e-1)) * z
              - np.float32(3.33332819422e-1)) * z) * x + x
    e = _exp32(np.float32(2.0) * min(a, np.float32(10.0)))  # tanh(10) is 1 in float32
    large = np.float32(1.0) - np.float32(2.0) / (e + np.float32(1.0))
    large = large if x >= 0 else -large
    out = small if a < np.float32(0.625) else large
    out = x if a < np.float32(2.0 ** -12) else out  # tanh(x) rounds to x there; keeps -0.0
    return out if x == x else x


@numba.njit(nogil=True, error_model="numpy")
def _sigmoid32(x):
    # e^-|x| never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below (as NumPy's sigmoid)
    e = _exp32(-abs(x))
    return (np.float32(1.0) if x >= 0 else e) / (np.float32(1.0) + e)


@numba.njit(nogil=True, error_model="numpy")
def _sigmoid64(x):
    e = math.exp(-abs(x))
    return (1.0 if x >= 0 else e) / (1.0 + e)


def fast_exp(x):
    """e^x (usable inside numba kernels)."""
    return math.exp(x)


def fast_tanh(x):
    """tanh(x) (usable inside numba kernels)."""
    return math.tanh(x)


def fast_sigmoid(x):
    """1 / (1 + e^-x) (usable inside numba kernels)."""
    return _sigmoid64(x)


@overload(fast_sigmoid)
def _fast_sigmoid(x):
    if x == types.float32:
        return lambda x: _sigmoid32(x)
    return lambda x: _sigmoid64(x)


@overload(fast_exp)
def _fast_exp(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


@overload(fast_tanh)
def _fast_tanh(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: math.tanh(x)
