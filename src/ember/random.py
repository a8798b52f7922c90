"""Random numbers: one global NumPy Generator (PCG64), seeded by ``manual_seed``.

Every random op in ember (init, dropout, shuffling) draws from ``default_generator`` unless
given its own ``Generator``, so ``em.manual_seed(s)`` makes a whole run reproducible, and
``get_rng_state``/``set_rng_state`` let a checkpoint resume the exact stream.
"""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .ops.helpers import norm_size
from .ops.registry import primitive
from .tensor import Tensor

RANDOM = primitive("random", lambda kind, shape, dtype, params, generator: _draw(kind, shape, dtype, params, generator),
                   infer=lambda kind, shape, dtype, params, generator: (tuple(shape), np.dtype(dtype)))


class Generator:
    """A random stream (PyTorch's torch.Generator): ``Generator().manual_seed(0)``."""

    def __init__(self, seed=None):
        # no seed: a fresh one from the OS, remembered so that initial_seed() can reproduce the run
        self.manual_seed(np.random.SeedSequence().entropy % 2 ** 64 if seed is None else seed)

    def manual_seed(self, seed: int) -> Generator:
        """Restart the stream from ``seed``: any int in [-2**63, 2**64); negative seeds wrap to their unsigned
        64-bit value, as in PyTorch."""
        seed = int(seed)
        if not -(2 ** 63) <= seed < 2 ** 64:
            raise ValueError(f"manual_seed: the seed must fit in 64 bits ([-2**63, 2**64)), got {seed}")
        self._seed = seed % 2 ** 64
        self.np = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def initial_seed(self):
        return self._seed

    def get_state(self) -> dict:
        return self.np.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.np.bit_generator.state = state


default_generator = Generator(None)


def manual_seed(seed: int) -> Generator:
    """Seed the global generator (makes initialisation, dropout and shuffling reproducible)."""
    return default_generator.manual_seed(seed)


seed = manual_seed


def initial_seed() -> int:
    """The seed the global generator was last seeded with."""
    return default_generator.initial_seed()


def get_rng_state() -> dict:
    return default_generator.get_state()


def set_rng_state(state: dict) -> None:
    default_generator.set_state(state)


def _gen(generator):
    return (generator or default_generator).np


def _draw(kind, shape, dtype, params, generator):
    """The NumPy draw behind every random tensor (also the RANDOM primitive's forward)."""
    g = _gen(generator)
    dtype = np.dtype(dtype)
    fast = dtype in (np.float32, np.float64)
    if kind == "uniform":
        lo, hi = params
        if (lo, hi) == (0.0, 1.0):
            if fast:
                return g.random(shape, dtype=dtype)
            # float16 (as torch): a random 11-bit mantissa, so that rounding never gives 1.0
            return (g.integers(0, 2 ** 11, size=shape) * 2.0 ** -11).astype(dtype)
        return _below(g.uniform(lo, hi, size=shape).astype(dtype), hi)
    if kind == "normal":
        mean, std = params
        z = g.standard_normal(shape, dtype=dtype) if fast else g.standard_normal(shape).astype(dtype)
        return z if (mean, std) == (0.0, 1.0) else (z * std + mean).astype(dtype)
    if kind == "randint":
        return g.integers(params[0], params[1], size=shape).astype(dtype)
    # the draws of em.uniform / em.normal / em.bernoulli / em.randperm (float64, then cast),
    # so that inside em.jit they are graph nodes drawing the same numbers as eager mode
    if kind == "uniform64":
        return _below(g.uniform(params[0], params[1], size=shape).astype(dtype), params[1])
    if kind == "normal64":
        return g.standard_normal(shape).astype(dtype)
    if kind == "permutation":
        return g.permutation(params[0]).astype(dtype)
    if kind == "dropout":  # keep with probability 1 - p, scaled by 1 / (1 - p)
        p = params[0]
        return (g.random(shape, dtype=np.float32) >= p) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
    raise ValueError(f"unknown random kind {kind!r}")


def _below(values, high):
    """Samples of [low, high) that rounding to a narrower dtype carried up to ``high``, moved one ulp below it."""
    top = np.asarray(high, values.dtype)
    if values.size and values.max() >= top:
        values = np.where(values >= top, np.nextafter(top, np.asarray(-np.inf, values.dtype)), values)
    return values


def _random_tensor(kind, shape, dtype, params, generator):
    """Eager: draws now. Inside em.jit: a graph node that draws fresh numbers at every run."""
    from .ops.registry import apply

    return apply(RANDOM, (), {"kind": kind, "shape": tuple(shape), "dtype": np.dtype(dtype),
                              "params": tuple(params), "generator": generator})


def dropout_mask(shape, p, dtype, generator=None):
    """Keep-mask for dropout: 1/(1-p) with probability 1-p, else 0."""
    return _random_tensor("dropout", shape, dtype, (float(p),), generator)


def _tracing():
    from .compiler.trace import ACTIVE

    return ACTIVE[0] is not None


def _float_dtype(dtype, op):
    d = _dt.default_float if dtype is None else _dt.get_dtype(dtype)
    if not d.is_floating_point:
        raise TypeError(f"{op}: expected a floating-point dtype, got {d}; draw floats and convert them (e.g. "
                        f".long()), or use randint for integers")
    return d.np


def _finish(arr, requires_grad):
    t = Tensor._make(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def rand(*shape, dtype=None, generator=None, requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1)."""
    t = _random_tensor("uniform", norm_size(shape, "rand"), _float_dtype(dtype, "rand"), (0.0, 1.0), generator)
    return t.requires_grad_(True) if requires_grad else t


def randn(*shape, dtype=None, generator=None, requires_grad=False) -> Tensor:
    """Standard normal samples."""
    t = _random_tensor("normal", norm_size(shape, "randn"), _float_dtype(dtype, "randn"), (0.0, 1.0), generator)
    return t.requires_grad_(True) if requires_grad else t


def randint(low, high=None, size=(), dtype=None, generator=None) -> Tensor:
    """Integers in [low, high) (int64 unless ``dtype``); randint(high, size) also works."""
    if high is None or isinstance(high, (tuple, list)):  # randint(high) or randint(high, size), as PyTorch
        low, high, size = 0, low, (size if high is None else high)
    low, high = int(low), int(high)
    if low >= high:
        raise ValueError(f"randint: low must be less than high (values are drawn from [low, high)), got low={low}, "
                         f"high={high}")
    d = _dt.int64.np if dtype is None else _dt.get_dtype(dtype).np
    size = norm_size((size,), "randint")
    return _random_tensor("randint", size, d, (low, high), generator)


def normal(mean=0.0, std=1.0, size=None, dtype=None, generator=None, requires_grad=False) -> Tensor:
    """Normal samples; ``mean``/``std`` may be tensors (their broadcast shape is used)."""
    m = mean.data if isinstance(mean, Tensor) else mean
    s = std.data if isinstance(std, Tensor) else std
    if isinstance(s, (int, float, np.ndarray, np.generic)) and np.any(np.asarray(s) < 0):
        raise ValueError(f"normal: std must be >= 0, got {s}")
    if size is None:
        size = np.broadcast_shapes(np.shape(m), np.shape(s))
    d = _float_dtype(dtype if dtype is not None else
                     (mean.dtype if isinstance(mean, Tensor) else None), "normal")
    if _tracing():  # a graph node drawing fresh numbers at every run (not baked in)
        z = _random_tensor("normal64", tuple(size), np.float64, (), generator)
        m = mean.detach() if isinstance(mean, Tensor) else mean
        s = std.detach() if isinstance(std, Tensor) else std
        t = (z * s + m).astype(d)
        return t.requires_grad_(True) if requires_grad else t
    arr = (_gen(generator).standard_normal(tuple(size)) * s + m).astype(d)
    return _finish(arr, requires_grad)


def uniform(low=0.0, high=1.0, size=(), dtype=None, generator=None, requires_grad=False) -> Tensor:
    """Samples from [low, high) of shape ``size`` (float32 unless ``dtype``)."""
    if not low <= high:
        raise ValueError(f"uniform: low must be <= high, got low={low}, high={high}")
    d = _float_dtype(dtype, "uniform")
    size = norm_size((size,), "uniform")
    if _tracing():
        t = _random_tensor("uniform64", size, d, (float(low), float(high)), generator)
        return t.requires_grad_(True) if requires_grad else t
    arr = _below(_gen(generator).uniform(low, high, size=size).astype(d), high)
    return _finish(arr, requires_grad)


def randperm(n, dtype=None, generator=None) -> Tensor:
    d = _dt.int64.np if dtype is None else _dt.get_dtype(dtype).np
    if _tracing():
        return _random_tensor("permutation", (int(n),), d, (int(n),), generator)
    return Tensor._make(_gen(generator).permutation(n).astype(d))


def bernoulli(p, generator=None) -> Tensor:
    """1.0 with probability ``p`` (a tensor of probabilities), else 0.0."""
    if _tracing():
        pt = p.detach() if isinstance(p, Tensor) else Tensor._make(np.asarray(p, dtype=np.float32))
        u = _random_tensor("uniform64", pt.shape, np.float64, (0.0, 1.0), generator)
        return (u < pt).astype(pt.dtype)
    pa = p.data if isinstance(p, Tensor) else np.asarray(p, dtype=np.float32)
    return Tensor._make((_gen(generator).random(pa.shape) < pa).astype(pa.dtype))


def multinomial(probs, num_samples, replacement=False, generator=None) -> Tensor:
    """Sample category indices from (unnormalised) ``probs`` of shape (C,) or (B, C)."""
    p = np.asarray(probs.data if isinstance(probs, Tensor) else probs, dtype=np.float64)
    g = _gen(generator)
    rows = p.reshape(-1, p.shape[-1])
    if (rows < 0).any() or not np.isfinite(rows).all() or (rows.sum(1) <= 0).any():
        raise ValueError("multinomial: probabilities must be finite, non-negative and not all zero")
    out = np.stack([g.choice(rows.shape[1], size=num_samples, replace=replacement,
                             p=r / r.sum()) for r in rows])
    return Tensor._make(out.reshape(p.shape[:-1] + (num_samples,)).astype(np.int64))


def rand_like(x, dtype=None, generator=None) -> Tensor:
    return rand(x.shape, dtype=dtype or x.dtype, generator=generator)


def randn_like(x, dtype=None, generator=None) -> Tensor:
    return randn(x.shape, dtype=dtype or x.dtype, generator=generator)
