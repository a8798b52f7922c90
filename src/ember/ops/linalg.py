"""matmul (PyTorch semantics: 1-D, 2-D, batched with broadcasting), einsum, and friends."""

from __future__ import annotations

import string

import numpy as np

from ..errors import OpError, ShapeError
from ..tensor import Tensor
from .helpers import NO_ATTRS, as_tensor, broadcast_shapes, pair
from .registry import Meta, apply, is_transposed, primitive


def _matmul_infer(a, b):
    sa, sb = tuple(a.shape), tuple(b.shape)
    if not sa or not sb:
        raise ShapeError(f"matmul: both arguments need at least 1 dim, got shapes {sa} and {sb}")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb:
        raise ShapeError(f"matmul: shapes {sa} and {sb} cannot be multiplied: {ka} != {kb} "
                         f"(the last dim of the first must equal the "
                         f"{'only' if len(sb) == 1 else 'second-to-last'} dim of the second)")
    batch = ()
    if len(sa) > 2 or len(sb) > 2:
        try:
            batch = broadcast_shapes(sa[:-2], sb[:-2], op="matmul")
        except ShapeError:
            raise ShapeError(f"matmul: shapes {sa} and {sb} cannot be multiplied: their batch "
                             f"dims {sa[:-2]} and {sb[:-2]} cannot be broadcast (sizes must "
                             "match or be 1)") from None
    out = batch + (sa[-2:-1] if len(sa) > 1 else ()) + (sb[-1:] if len(sb) > 1 else ())
    return out, a.np_dtype


def _grad_a(g, out, a, b):
    if a.ndim == 1 and b.ndim == 1:
        return g * b
    if b.ndim == 1:  # (..., n, k) @ (k,) -> (..., n)
        return g.unsqueeze(-1) * b
    if a.ndim == 1:  # (k,) @ (..., k, m) -> (..., m)
        return (b @ g.unsqueeze(-1)).squeeze(-1)
    return g @ b.mT


def _grad_b(g, out, a, b):
    if a.ndim == 1 and b.ndim == 1:
        return g * a
    if a.ndim == 1:  # (k,) @ (..., k, m)
        return a.unsqueeze(-1) * g.unsqueeze(-2)
    if b.ndim == 1:  # (..., n, k) @ (k,)
        return (a.mT @ g.unsqueeze(-1)).squeeze(-1)
    # b a transposed matrix (Linear's weight.T): compute its gradient transposed too, so that
    # the weight's own gradient comes out C-ordered from BLAS instead of needing a strided copy
    # (PyTorch's mm_mat2_backward does the same)
    transposed = b.transposed if type(b) is Meta else is_transposed(b.data)
    if b.ndim == 2 and a.ndim > 2:  # weights shared across the batch (Linear on 3-D input)
        k, m = b.shape
        rows = a.numel() // k if k else int(np.prod(a.shape[:-1]))  # (no -1: sizes may be 0)
        a, g = a.reshape(rows, k), g.reshape(rows, m)
    return (g.mT @ a).mT if transposed and a.ndim == 2 else a.mT @ g


#: matrices up to this many elements count as small (copying one costs less than its GEMM)
SMALL_MATRIX_ELEMENTS = 1 << 14


def _matmul_np(a, b):
    """np.matmul, but a stack of matrices times one matrix is a single GEMM: NumPy would call
    BLAS once per matrix of the stack, which is slower for the short matrices of a (B, T, C)
    activation. A strided stack (a transposed (T, B, C) sequence) is copied into one matrix
    first: the copy costs far less than T small GEMMs."""
    if a.ndim > 2 and b.ndim == 2 and a.size:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    if (b.ndim > 2 and b.strides[-1] != b.itemsize and b.shape[-1] > 1
            and b.shape[-1] * b.shape[-2] <= SMALL_MATRIX_ELEMENTS):
        # a stack of small column-major matrices (attention's k.transpose(-2, -1)): NumPy's
        # per-matrix BLAS calls run 1.5-2x slower on them than on a row-major copy
        b = np.ascontiguousarray(b)
    return np.matmul(a, b)


MATMUL = primitive("matmul", _matmul_np, (_grad_a, _grad_b), infer=_matmul_infer,
                   saves={0: (1,), 1: (0,)}, broadcasts=True)


def matmul(a, b):
    """Matrix product with PyTorch/NumPy semantics (vectors, matrices, broadcast batches)."""
    a, b = pair(a, b)
    if a.data.dtype == np.bool_:
        raise OpError("matmul: bool tensors are not supported; convert with .float()")
    return apply(MATMUL, (a, b), NO_ATTRS)


def mm(a, b):
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"mm: expects two 2-D tensors, got shapes {a.shape} and {b.shape}")
    return matmul(a, b)


def bmm(a, b):
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ShapeError(f"bmm: expects two 3-D tensors with the same batch size, got shapes "
                         f"{a.shape} and {b.shape}")
    return matmul(a, b)


def dot(a, b):
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ShapeError(f"dot: expects two 1-D tensors, got shapes {a.shape} and {b.shape}")
    return matmul(a, b)


def outer(a, b):
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ShapeError(f"outer: expects two 1-D tensors, got shapes {a.shape} and {b.shape}")
    return a.unsqueeze(1) * b.unsqueeze(0)


ger = outer


# ---- einsum ---------------------------------------------------------------------------

def _parse_einsum(equation, shapes):
    """(equation with '...' spelled out as letters and an explicit output, e.g.
    'bij,bjk->bik'; the size of every letter). Size-1 dims broadcast, as in PyTorch."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise OpError(f"einsum: equation {equation!r} names {len(ins)} operands but "
                      f"{len(shapes)} were given")
    used = set(eq) - set(".,->")
    spare = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in used]
    ell_len = max((len(s) - (len(t) - 3) for t, s in zip(ins, shapes) if "..." in t), default=0)
    ell = "".join(spare[:ell_len])
    expanded = []
    for term, shape in zip(ins, shapes):
        if "..." in term:
            n = len(shape) - (len(term) - 3)
            term = term.replace("...", ell[ell_len - n:] if n else "")
        if len(term) != len(shape):
            raise ShapeError(f"einsum: operand subscripts {term!r} do not match its shape "
                             f"{tuple(shape)}")
        expanded.append(term)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = {}
        for term in expanded:
            for c in term:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    sizes = {}
    for term, shape in zip(expanded, shapes):
        for c, n in zip(term, shape):
            old = sizes.setdefault(c, n)
            if old != n and 1 not in (old, n):
                raise ShapeError(f"einsum: subscript {c!r} has size {old} in one operand and "
                                 f"{n} in another ({equation!r} with shapes "
                                 f"{[tuple(s) for s in shapes]}); sizes must match or be 1")
            sizes[c] = max(old, n) if 0 not in (old, n) else 0
    return ",".join(expanded) + "->" + out, sizes


def _einsum_vjp(g, out, needs, *ops, equation):
    lhs, out_sub = equation.split("->")
    ins = lhs.split(",")
    fresh = iter(c for c in string.ascii_letters if c not in equation)
    grads = []
    for i, (need, term) in enumerate(zip(needs, ins)):
        if not need:
            grads.append(None)
            continue
        shape = ops[i].shape
        size = dict(zip(term, shape))
        uniq = "".join(dict.fromkeys(term))  # each letter once, in order
        others = [(t, o) for j, (t, o) in enumerate(zip(ins, ops)) if j != i]
        avail = set(out_sub).union(*[set(t) for t, _ in others])
        kept = "".join(c for c in uniq if c in avail)
        gi = einsum(",".join([out_sub] + [t for t, _ in others]) + "->" + kept, g,
                    *[o for _, o in others])
        if kept != uniq:  # letters only this operand had were summed away: broadcast back
            gi = gi.reshape(tuple(size[c] if c in avail else 1 for c in uniq))
            gi = gi.expand(tuple(size[c] for c in uniq))
        if uniq != term:  # a repeated letter reads a diagonal: write gi back onto it
            renamed, deltas = "", []
            for k, c in enumerate(term):
                if c in term[:k]:
                    f = next(fresh)
                    renamed += f
                    deltas.append((c + f, np.eye(size[c], dtype=gi.data.dtype)))
                else:
                    renamed += c
            gi = einsum(",".join([uniq] + [d for d, _ in deltas]) + "->" + renamed, gi,
                        *[Tensor._make(e) for _, e in deltas])
        grads.append(gi)
    return grads


def _einsum_infer(*ops, equation):
    lhs, out_sub = equation.split("->")
    sizes = {}
    for term, op in zip(lhs.split(","), ops):
        sizes.update(zip(term, op.shape))
    return tuple(sizes[c] for c in out_sub), ops[0].np_dtype


EINSUM = primitive("einsum",
                   lambda *ops, equation: np.einsum(equation, *ops, optimize=len(ops) > 2),
                   vjp=_einsum_vjp, infer=_einsum_infer)


def einsum(equation, *operands):
    """Einstein summation, e.g. ``einsum('bij,bjk->bik', a, b)``; '...' is supported."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    ops = [as_tensor(o) for o in operands]
    if len({o.data.dtype for o in ops}) > 1:
        from ..dtypes import result_type
        from .helpers import cast

        rt = result_type([o.data.dtype for o in ops], [o.ndim for o in ops])
        ops = [cast(o, rt) for o in ops]
    eq, sizes = _parse_einsum(equation, [o.shape for o in ops])
    terms = eq.split("->")[0].split(",")
    for k, (term, o) in enumerate(zip(terms, ops)):  # broadcast size-1 dims (a view)
        full = tuple(sizes[c] for c in term)
        if full != o.shape:
            ops[k] = o.expand(full)
    return apply(EINSUM, tuple(ops), {"equation": eq})


def tensordot(a, b, dims=2):
    a, b = as_tensor(a), as_tensor(b)
    if isinstance(dims, int):
        da, db = list(range(a.ndim - dims, a.ndim)), list(range(dims))
    else:
        da, db = [list(d) if isinstance(d, (list, tuple)) else [d] for d in dims]
    letters = iter(string.ascii_letters)
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(da, db):
        sb[j] = sa[i]
    out = [c for k, c in enumerate(sa) if k not in da] + [c for k, c in enumerate(sb) if k not in db]
    return einsum("".join(sa) + "," + "".join(sb) + "->" + "".join(out), a, b)


# ---- ONNX mappings (read by em.onnx.export) ----------------------------------------------------
MATMUL.onnx = lambda ctx, n: ctx.emit("MatMul", [ctx.input(n, 0), ctx.input(n, 1)])
EINSUM.onnx = lambda ctx, n: ctx.emit("Einsum", [ctx.input(n, k) for k in range(len(n.inputs))],
                                      equation=n.attrs["equation"])
