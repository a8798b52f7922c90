"""Functional gradients: PyTorch's ``autograd.grad`` and JAX's ``grad``/``value_and_grad``."""

from __future__ import annotations

import functools

import numpy as np

from ..errors import GradError
from .engine import run_backward


def _flatten(tree):
    """Tensors in a nested list/tuple/dict, and a function rebuilding the tree from them."""
    from ..tensor import Tensor

    if isinstance(tree, Tensor):
        return [tree], lambda leaves: leaves[0]
    if isinstance(tree, (list, tuple)):
        parts = [_flatten(v) for v in tree]
        counts = [len(p[0]) for p in parts]

        def rebuild(leaves, parts=parts, counts=counts, kind=type(tree)):
            out, i = [], 0
            for (_, fn), n in zip(parts, counts):
                out.append(fn(leaves[i:i + n]))
                i += n
            return kind(out) if kind in (list, tuple) else kind(*out)

        return [t for p in parts for t in p[0]], rebuild
    if isinstance(tree, dict):
        keys = list(tree)
        parts = [_flatten(tree[k]) for k in keys]
        counts = [len(p[0]) for p in parts]

        def rebuild_dict(leaves, parts=parts, counts=counts, keys=keys):
            out, i = {}, 0
            for k, (_, fn), n in zip(keys, parts, counts):
                out[k] = fn(leaves[i:i + n])
                i += n
            return out

        return [t for p in parts for t in p[0]], rebuild_dict
    return [], lambda leaves, v=tree: v


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs`` without touching any ``.grad``
    (``torch.autograd.grad``). Returns a tuple, one entry per input."""
    from ..tensor import Tensor

    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    gs = []
    for o, g in zip(outs, grad_outputs):
        if not o.requires_grad:
            raise GradError("grad: an output does not require grad; did the computation use the "
                            "inputs, with requires_grad=True and outside em.no_grad()?")
        if g is None:
            if o.data.size != 1:
                raise GradError(f"grad: grad_outputs is required for a non-scalar output of "
                                f"shape {o.shape}")
            from ..tensor import ones_like_data

            g = ones_like_data(o)
        gs.append(g)
    for t in ins:
        if not t.requires_grad:
            raise GradError(f"grad: an input of shape {t.shape} does not require grad")
    if retain_graph is None:
        retain_graph = create_graph
    result = run_backward(outs, gs, retain_graph, create_graph, inputs=ins, accumulate=False,
                          allow_unused=allow_unused)
    if not create_graph:
        result = [None if g is None else g.detach() for g in result]
    return tuple(result)


def value_and_grad(fn, argnums=0, has_aux=False):
    """JAX-style transform: ``value_and_grad(f)(*args) -> (f(*args), df/dargs[argnums])``.

    ``f`` must return a scalar tensor (or ``(scalar, aux)`` with ``has_aux``). The chosen
    arguments may be tensors or nested lists/tuples/dicts of tensors; the gradient has the
    same structure. Arguments are not modified and no ``.grad`` is written.
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        from ..tensor import Tensor
        from .engine import enable_grad

        args = list(args)
        flats = []
        for i in nums:
            if i >= len(args):
                raise GradError(f"value_and_grad: argnums={argnums} but only {len(args)} "
                                "positional arguments were given")
            leaves, rebuild = _flatten(args[i])
            if not leaves:
                raise GradError(f"value_and_grad: argument {i} holds no tensors to "
                                "differentiate")
            fresh = []
            for t in leaves:
                if t.data.dtype.kind != "f":
                    raise GradError(f"value_and_grad: argument {i} has a {t.dtype} tensor; only "
                                    "floating-point tensors can be differentiated")
                leaf = t.detach()
                leaf.requires_grad = True
                fresh.append(leaf)
            args[i] = rebuild(fresh)
            flats.append((fresh, rebuild))
        with enable_grad():
            out = fn(*args, **kwargs)
        value, aux = (out if has_aux else (out, None))
        if not isinstance(value, Tensor) or value.data.size != 1:
            shape = getattr(value, "shape", type(value).__name__)
            raise GradError(f"value_and_grad: the function must return a scalar tensor, got "
                            f"{shape}" + ("; with has_aux=True return (scalar, aux)" if has_aux
                                          else ""))
        all_leaves = [t for fresh, _ in flats for t in fresh]
        if value.requires_grad:
            from ..tensor import ones_like_data

            grads = run_backward([value], [ones_like_data(value)], inputs=all_leaves,
                                 accumulate=False)
        else:
            grads = [None] * len(all_leaves)
        grads = [Tensor._make(np.zeros_like(t.data)) if g is None else g.detach()
                 for g, t in zip(grads, all_leaves)]
        out_grads, k = [], 0
        for fresh, rebuild in flats:
            out_grads.append(rebuild(grads[k:k + len(fresh)]))
            k += len(fresh)
        g = out_grads[0] if single else tuple(out_grads)
        value = value.detach()
        return ((value, aux), g) if has_aux else (value, g)

    return wrapped


def grad_fn(fn, argnums=0, has_aux=False):
    """JAX-style ``grad``: a function returning only the gradient (and aux with has_aux)."""
    vg = value_and_grad(fn, argnums, has_aux)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        out = vg(*args, **kwargs)
        if has_aux:
            (_, aux), g = out
            return g, aux
        return out[1]

    return wrapped
