"""Fused eager optimizer updates: one numba loop per parameter instead of a dozen NumPy passes.

An eager Adam step written with tensor ops (``adam.py``) walks each parameter's memory about
twelve times (m, v, g*g, sqrt, divide, scale, add...), which made ``opt.step()`` half of a
training step for the mlp workload. The kernel here does the same arithmetic, in the same
order and in the parameter's own dtype, in one pass: its results are bitwise those of the op
path (tests/optim/test_fused.py). It is used only in eager mode, for large enough
floating-point parameters; em.jit traces the op path and fuses it itself.

The kernel's source goes through the compiler's on-disk kernel cache, so numba compiles it
once per machine and is imported only on the first fused step.
"""

from __future__ import annotations

from ..ops.helpers import numba_module

#: below this many elements the op path is as fast and keeps numba out of small programs
FUSED_MIN_ELEMENTS = 1 << 14

_ADAM_SOURCE = '''# ember fused optimizer kernels (format 1)
import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def adam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bias2_sqrt, eps, step_size, decay, l2):
    # the order of operations is adam.py's: any change there must be made here too
    for i in range(p.size):
        pi = p[i]
        gi = g[i]
        if l2 != 0:
            gi = gi + pi * l2
        if decay != 1:
            pi = pi * decay
        mi = m[i] * b1 + gi * one_minus_b1
        vi = v[i] * b2 + (gi * gi) * one_minus_b2
        denom = np.sqrt(vi) / bias2_sqrt + eps
        m[i] = mi
        v[i] = vi
        p[i] = pi + (mi / denom) * step_size
'''

def _kernels():
    return numba_module(_ADAM_SOURCE)


def _fusable(arrays, min_elements) -> bool:
    first = arrays[0]
    return (first.dtype.kind == "f" and first.dtype.itemsize >= 4 and first.size >= min_elements
            and all(a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous for a in arrays)
            and all(a.flags.writeable for i, a in enumerate(arrays) if i != 1))


def adam_step(name, p, g, m, v, *, step, lr, betas, eps, weight_decay, decoupled, fused) -> bool:
    """Update tensors ``p``, ``m``, ``v`` (any shape) in place from gradient ``g`` in one loop.

    Returns False, having changed nothing, when ``fused=None`` and the arrays do not qualify
    (float32/float64, one shape and dtype, C-contiguous, at least FUSED_MIN_ELEMENTS);
    ``fused=True`` raises instead of falling back.
    """
    if fused is False:
        return False
    arrays = (p.data, g.data, m.data, v.data)
    plain = all(isinstance(x, (int, float)) for x in (step, lr, *betas, eps, weight_decay))
    if not plain or not _fusable(arrays, 1 if fused else FUSED_MIN_ELEMENTS):
        if fused:
            raise ValueError(f"{name}(fused=True): the fused update needs float32/float64 C-contiguous "
                             "parameter, gradient and state of one shape and dtype, and plain-number "
                             f"hyperparameters; got arrays {[(a.dtype.name, a.shape) for a in arrays]} "
                             f"(contiguous: {[a.flags.c_contiguous for a in arrays]}); use fused=None")
        return False
    b1, b2 = betas
    dtype = arrays[0].dtype.type
    # the scalars in the parameter's dtype: NumPy casts a Python float operand the same way
    scalars = [dtype(x) for x in (b1, 1 - b1, b2, 1 - b2, (1 - b2 ** step) ** 0.5, eps, -lr / (1 - b1 ** step),
                                  1 - lr * weight_decay if weight_decay and decoupled else 1.0,
                                  weight_decay if weight_decay and not decoupled else 0.0)]
    _kernels().adam(*(a.reshape(-1) for a in arrays), *scalars)
    for t in (p, m, v):
        t._version[0] += 1
    return True
