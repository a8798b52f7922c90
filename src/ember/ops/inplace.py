"""In-place ops (``add_``, ``+=``, ``zero_``...).

Without autograd involvement (optimizer steps, ``no_grad`` code) they write straight into the
tensor's buffer with a NumPy ufunc. When the op must be recorded, the out-of-place op is
computed, written back into the buffer, and the tensor takes the new graph node; the version
counter makes any earlier use of the old value in the graph fail loudly at backward time.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..autograd.engine import GradMode
from ..compiler.trace import ACTIVE as TRACING
from ..errors import GradError, OpError
from ..tensor import Tensor
from . import elementwise as ew
from .helpers import as_tensor


def _check_writable(t, name):
    if isinstance(t.data, np.ndarray) and not t.data.flags.writeable:
        raise OpError(f"{name}: this tensor (shape {t.shape}) is a read-only view (expand or "
                      "broadcast); call .clone() first")


def _recording(t, others):
    if not GradMode.enabled:
        return False
    return t.requires_grad or any(isinstance(o, Tensor) and o.requires_grad for o in others)


def _check_recordable(t, name):
    if t.requires_grad and t._node is None:
        raise GradError(f"{name}: a leaf tensor that requires grad (shape {t.shape}) cannot be "
                        "modified in place while gradients are recorded; wrap the update in "
                        "`with em.no_grad():` (as optimizers do) or use an out-of-place op")
    if t._base is not None:
        raise GradError(f"{name}: in-place ops on a view (a slice, reshape or transpose) are not "
                        "recorded by autograd; compute the result out of place instead")


def _write_back(t, result, name):
    r = result.data
    if r.shape != t.data.shape:
        raise OpError(f"{name}: the result has shape {r.shape} but the tensor being modified has "
                      f"shape {t.shape}; in-place ops cannot change a tensor's shape")
    tracer = TRACING[0]
    if tracer is not None:  # inside em.jit: the update becomes a graph effect
        if r.dtype != t.data.dtype:
            if not np.can_cast(r.dtype, t.data.dtype, "same_kind"):
                raise OpError(f"{name}: the result dtype {r.dtype} cannot be stored in a tensor of "
                              f"dtype {t.data.dtype} in place; use the out-of-place op")
            result = ew.astype(result, t.data.dtype)
        tracer.write(t, result)
        return
    try:
        np.copyto(t.data, r, casting="same_kind")
    except TypeError:
        raise OpError(f"{name}: the result dtype {r.dtype} cannot be stored in a tensor of dtype "
                      f"{t.data.dtype} in place; use the out-of-place op") from None


def inplace(t, name, fn, *args, **kwargs):
    """Apply the out-of-place ``fn(t, *args)`` and store its result in ``t``."""
    _check_writable(t, name)
    if _recording(t, args):
        _check_recordable(t, name)
        # the op reads t's current value under another name; if its gradient rule saved that
        # value (mul_ needs the old self), give the saved tensor a copy before t is overwritten
        old = Tensor._make(t.data)
        old._node, old.requires_grad = t._node, t.requires_grad
        result = fn(old, *args, **kwargs)
        kept = weakref.ref(old)
        del old
        if kept() is not None and TRACING[0] is None:
            kept().data = kept().data.copy()
        _write_back(t, result, name)
        t._version[0] += 1
        t._node, t.requires_grad = result._node, result.requires_grad
        return t
    prev = GradMode.enabled
    GradMode.enabled = False
    try:
        result = fn(t, *args, **kwargs)
    finally:
        GradMode.enabled = prev
    _write_back(t, result, name)
    t._version[0] += 1
    return t


def _fast_binary(ufunc, slow, name):
    def method(self, other, *, alpha=None):
        if alpha is not None and (isinstance(alpha, Tensor) or alpha != 1):
            other = ew.mul(other, alpha)
        if TRACING[0] is not None or _recording(self, (other,)):
            return inplace(self, name, slow, other)
        _check_writable(self, name)
        o = other.data if isinstance(other, Tensor) else other
        try:
            ufunc(self.data, o, out=self.data, casting="same_kind")
        except TypeError:
            raise OpError(f"{name}: the result of {self.dtype} and "
                          f"{getattr(o, 'dtype', type(o).__name__)} cannot be stored in place in "
                          f"a {self.dtype} tensor") from None
        except ValueError as e:
            raise OpError(f"{name}: cannot broadcast an operand of shape {np.shape(o)} into the "
                          f"tensor of shape {self.shape} in place ({e})") from None
        self._version[0] += 1
        return self

    method.__name__ = name
    return method


add_ = _fast_binary(np.add, ew.add, "add_")
sub_ = _fast_binary(np.subtract, ew.sub, "sub_")
mul_ = _fast_binary(np.multiply, ew.mul, "mul_")


def div_(self, other):
    if self.data.dtype.kind != "f":
        raise OpError(f"div_: true division of a {self.dtype} tensor in place would need a float "
                      "result; use the out-of-place div")
    return _fast_binary(np.true_divide, ew.div, "div_")(self, other)


def pow_(self, exponent):
    return inplace(self, "pow_", ew.pow, exponent)


def _broadcast_copy(t, s):
    """``s`` as a new tensor of t's shape and dtype (the old value of t gets no gradient)."""
    from .movement import clone

    return clone(as_tensor(s).astype(t.dtype).expand(t.shape))


def copy_(self, src):
    """Copy ``src`` (broadcast) into this tensor, keeping this tensor's dtype."""
    if TRACING[0] is not None or _recording(self, (src,)):
        return inplace(self, "copy_", _broadcast_copy, src)
    _check_writable(self, "copy_")
    s = src.data if isinstance(src, Tensor) else np.asarray(src)
    try:
        np.copyto(self.data, np.broadcast_to(s, self.data.shape), casting="unsafe")
    except ValueError:
        raise OpError(f"copy_: cannot copy a source of shape {s.shape} into a tensor of shape "
                      f"{self.shape}") from None
    self._version[0] += 1
    return self


def fill_(self, value):
    if TRACING[0] is not None or _recording(self, (value,)):
        return inplace(self, "fill_", _broadcast_copy, value)
    _check_writable(self, "fill_")
    self.data.fill(value.item() if isinstance(value, Tensor) else value)
    self._version[0] += 1
    return self


def zero_(self):
    return fill_(self, 0)


def clamp_(self, min=None, max=None):  # noqa: A002
    return inplace(self, "clamp_", ew.clamp, min, max)


def _unary_inplace(name, fn):
    def method(self, *args, **kwargs):
        return inplace(self, name, fn, *args, **kwargs)

    method.__name__ = name
    return method


exp_ = _unary_inplace("exp_", ew.exp)
log_ = _unary_inplace("log_", ew.log)
sqrt_ = _unary_inplace("sqrt_", ew.sqrt)
neg_ = _unary_inplace("neg_", ew.neg)
abs_ = _unary_inplace("abs_", ew.abs)
relu_ = _unary_inplace("relu_", ew.relu)
sigmoid_ = _unary_inplace("sigmoid_", ew.sigmoid)
tanh_ = _unary_inplace("tanh_", ew.tanh)


def masked_fill_(self, mask, value):
    from .indexing import masked_fill

    return inplace(self, "masked_fill_", masked_fill, mask, value)


def _random_fill(name, sample):
    def method(self, *args, generator=None, **kwargs):
        from .. import random as rnd

        _check_writable(self, name)
        if TRACING[0] is not None:
            from ..compiler.trace import value_error

            raise value_error(f"{name} (an in-place random fill)")
        if _recording(self, ()):
            _check_recordable(self, name)
        g = rnd._gen(generator)
        self.data[...] = sample(g, self.data.shape, *args, **kwargs)
        self._version[0] += 1
        return self

    method.__name__ = name
    return method


uniform_ = _random_fill("uniform_", lambda g, shape, a=0.0, b=1.0: g.uniform(a, b, shape))
normal_ = _random_fill("normal_", lambda g, shape, mean=0.0, std=1.0: g.normal(mean, std, shape))
bernoulli_ = _random_fill("bernoulli_", lambda g, shape, p=0.5: g.random(shape) < p)
