"""Every primitive's shape/dtype rule (``infer``) agrees with what its eager forward returns.

The compiler's tracer and ember's error messages rely on ``infer`` alone, so a rule that is
wrong for some dtype or shape would go unnoticed in eager mode. The test wraps each
primitive's ``forward`` (the one thing every path through ``registry.apply`` calls, whichever
module imported ``apply``), runs a battery of ops forward and backward over many dtypes and
shapes, and checks ``infer`` on every recorded call.
"""

import numpy as np
import pytest

import ember as em
import ember.nn.functional as F
from ember.ops.registry import PRIMITIVES, Meta


def _battery():
    f32 = em.randn(3, 4, requires_grad=True)
    f64 = em.randn(2, 3, dtype=em.float64, requires_grad=True)
    f16 = em.randn(2, 3).half()
    i32 = em.arange(12, dtype=em.int32).reshape(3, 4)
    i64 = em.tensor([[3, -1, 2], [0, 5, -4]])
    u8 = em.tensor([1, 2, 3], dtype=em.uint8)
    i8 = em.tensor([-1, 2, 3], dtype=em.int8)
    b = em.tensor([[True, False, True, True]])
    zero = em.zeros(0, 4, requires_grad=True)
    s = em.tensor(1.5, requires_grad=True)
    outs = []

    # elementwise, with promotion and broadcasting
    for x in [f32, f64, f16, s]:
        y = x.float() if x is f16 else x
        outs += [y + 1, y - x.detach(), y * 2, y / 3, y ** 2, 2 ** y, y.maximum(y * 0.5),
                 y.minimum(y.detach()), y % 1.5, -y, y.exp(), y.abs().log(), y.abs().log1p(),
                 y.expm1(), y.abs().sqrt(), (y.abs() + 1).rsqrt(), y.abs(), y.sign(), y.sin(),
                 y.cos(), y.tanh(), y.sigmoid(), y.relu(), em.leaky_relu(y, 0.1), em.elu(y),
                 em.softplus(y), em.silu(y), em.gelu(y), em.gelu(y, approximate="tanh"), y.erf(),
                 y.clamp(-0.5, 0.5), y.clamp(min=0.0), y.floor(), y.ceil(), y.round(),
                 em.where(y > 0, y, 0.0), em.asin(y.clamp(-0.5, 0.5)), em.acos(y.clamp(-0.5, 0.5)),
                 em.atan(y)]
    outs += [f16 + f16, f16 * 2.5, f16.exp(), f16.sigmoid(), em.gelu(f16), f16.rsqrt(), f16.sum(),
             f16.clamp(0.0, 1.0), em.softplus(f16), em.leaky_relu(f16), f16.softmax(-1)]
    outs += [i32 + u8[:1], i64 // 2, i64 % 3, i32 * i32, i8 + u8, i64.abs(), -i64, i64.sign(),
             i32.clamp(0, 5), i32 / 2, i64 ** 2, u8 & 5, i8 | i8, i8 ^ 3, ~i8, ~b, b & b, b | b,
             b ^ b, i64 == 3, i64 != 3, i64 < 0, i64 <= 0, f32 > 0, f32 >= 0, f32.isnan(),
             f32.isinf(), f32.isfinite(), em.logical_and(b, b), em.logical_or(b, b),
             em.logical_xor(b, b), em.logical_not(b), i64.maximum(i64 * 2), i32.float(),
             f32.double(), b.long(), em.where(b, i32, -1)]
    outs += [zero + 1, zero * f32[0], em.maximum(zero, zero)]

    # reductions and scans
    for x in [f32, f64, i32, b, zero, s]:
        if x is not b:
            outs += [x.sum(), x.sum(-1, keepdim=True), x.cumsum(0), x.cumprod(-1), x.prod(),
                     x.prod(0, keepdim=True)]
        if x.numel():
            outs += [x.amax(), x.amin(0), x.argmax(), x.argmin(-1, keepdim=True), x.max(0),
                     x.min(-1, keepdim=True)]
        outs += [x.all(), x.any(-1), x.all(0, keepdim=True)]
    outs += [u8.prod(), u8.cumprod(0), b.sum(), b.cumsum(-1), f16.cumsum(0), i8.cumprod(0),
             f32.mean((0, 1)), f32.var(0), f32.std(), f32.logsumexp(1), f32.norm(),
             f32.norm(3, 1), zero.amax(1), zero.sum(0)]

    # movement
    for x in [f32, i32, b, zero]:
        outs += [x.reshape(-1), x.t(), x.permute(1, 0), x.unsqueeze(0).expand(2, *x.shape),
                 em.cat([x, x], 0), em.stack([x, x], 1), x.flip(0), x.clone(), x.repeat(2, 1),
                 F.pad(x.float() if x.dtype != em.float32 else x, (1, 2)), x.roll(1, 1)]
    outs += [F.pad(f32, (-1, 1, 1, 0), value=2.0), F.pad(f32.unsqueeze(0), (1, 2), mode="reflect"),
             F.pad(f32.unsqueeze(0), (1, 1), mode="circular"), em.cat([f32, i32]),
             s.reshape(1, 1), f64.T.contiguous(), f16.flip(-1)]

    # indexing
    for x in [f32, i32, b, zero]:
        outs += [x[:, 1:3], x[..., None], x[:, em.tensor([3, 0, 3])], x[x.bool()], x[-1:, 1]]
        if x.numel():
            outs += [x[0], x[[0, 0, -1]]]
    outs += [f32.gather(1, em.tensor([[0, 3], [1, 1], [2, 0]])),
             f32.scatter(0, em.tensor([[2, 0, 1, 0]]), em.ones(1, 4)),
             f32.scatter_add(1, em.tensor([[0, 0], [3, 3], [1, 2]]), em.ones(3, 2)),
             f64.index_select(1, em.tensor([2, 0])), f64.index_add(0, em.tensor([1, 1]), em.ones(2, 3)),
             f32.masked_fill(f32 > 0, 0.0), f32.masked_select(f32 > 0), f32.take(em.tensor([0, 11])),
             em.take_along_dim(f32, em.tensor([[1], [0], [3]]), 1), f64[em.tensor([1]), 1:],
             i32.gather(0, em.tensor([[2, 0, 1, 0]]))]

    # linear algebra and nn
    outs += [f32 @ f32.T, f32[0] @ f32.T, f64 @ f64.T[:, 0], em.randn(2, 3, 4) @ em.randn(4, 2),
             i32 @ i32.T, em.einsum("ij,kj->ik", f32, f32), em.einsum("ii->i", f32[:, :3]),
             em.einsum("i,j", f32[0], f32[1]), em.outer(f64[0], f64[1])]
    img = em.randn(2, 3, 6, 5, requires_grad=True)
    w = em.randn(4, 3, 3, 3, requires_grad=True)
    outs += [F.conv2d(img, w, em.zeros(4), stride=2, padding=1),
             F.conv_transpose2d(img, em.randn(3, 2, 3, 3, requires_grad=True), stride=2),
             F.max_pool2d(img, 2), F.avg_pool2d(img, 3, padding=1), F.adaptive_avg_pool2d(img, (2, 3)),
             F.unfold(img.double(), 2), F.fold(em.randn(1, 4, 6), (3, 4), 2),
             f32.softmax(-1), f32.log_softmax(0), f64.softmax(1), em.one_hot(i64.abs(), 6),
             F.cross_entropy(f32, em.tensor([0, 3, 1])), F.layer_norm(f32, (4,)),
             F.embedding(em.tensor([[0, 2]]), f32), F.binary_cross_entropy_with_logits(f32, f32.detach()),
             F.scaled_dot_product_attention(f32[None], f32[None], f32[None], is_causal=True)]
    lstm = em.nn.LSTM(4, 3, bidirectional=True)
    outs += [lstm(f32[:, None])[0], em.nn.LSTM(2, 3).double()(f64.T[:, None])[1][1]]

    # int8 inference kernels (no gradient), through the quantized layers that call them
    from ember.quantize import QuantizedConv2d, QuantizedLinear

    outs += [QuantizedLinear.from_float(em.nn.Linear(4, 3))(f32.detach()),
             QuantizedLinear.from_float(em.nn.Linear(4, 2, bias=False))(f32.detach()[0]),
             QuantizedConv2d.from_float(em.nn.Conv2d(2, 3, 3, padding=1, stride=2))(em.randn(2, 2, 5, 5))]

    # backward passes run the gradient rules, which are ops too (index_put, fold, ...)
    for o in outs:
        o = o[0] if isinstance(o, tuple) else o
        if o.requires_grad:
            (o.float() if o.dtype == em.float16 else o).sum().backward(retain_graph=True)
    x = em.randn(3, 4, dtype=em.float64, requires_grad=True)
    (g,) = em.autograd.grad((x.prod(0) * x.cumprod(0)[0]).sum(), [x], create_graph=True)
    g.sum().backward()


def _record(monkeypatch):
    calls = []
    for op in PRIMITIVES.values():
        def forward(*arrays, _op=op, _fwd=op.forward, **attrs):
            out = _fwd(*arrays, **attrs)
            calls.append((_op, [Meta(np.shape(a), np.asarray(a).dtype) for a in arrays], attrs,
                          tuple(np.shape(out)), np.asarray(out).dtype))
            return out

        monkeypatch.setattr(op, "forward", forward)
    return calls


def test_every_primitive_has_a_rule():
    missing = sorted(name for name, op in PRIMITIVES.items() if op.infer is None)
    assert not missing, f"primitives without a shape/dtype rule: {missing}"


def test_shape_rules_agree_with_forward(monkeypatch):
    calls = _record(monkeypatch)
    _battery()
    monkeypatch.undo()
    assert len(calls) > 500
    wrong = {}
    for op, metas, attrs, shape, dtype in calls:
        try:
            got = op.infer(*metas, **attrs)
            got = (tuple(got[0]), np.dtype(got[1]))
        except Exception as e:  # noqa: BLE001  (a rule that crashes is as wrong as one that lies)
            got = f"raised {type(e).__name__}: {e}"
        if got != (shape, dtype):
            ins = ", ".join(f"{tuple(m.shape)} {m.np_dtype}" for m in metas)
            shown = {k: v for k, v in attrs.items() if k != "template"}
            wrong.setdefault(op.name, f"{op.name}({ins}; {shown}): forward gives {(shape, dtype)}, "
                                      f"infer gives {got}")
    assert not wrong, "shape/dtype rules disagree with the forward:\n" + "\n".join(wrong.values())


def test_battery_exercises_every_primitive(monkeypatch):
    calls = _record(monkeypatch)
    _battery()
    monkeypatch.undo()
    seen = {op.name for op, *_ in calls}
    missing = sorted(set(PRIMITIVES) - seen)
    assert not missing, f"primitives the battery never ran (add ops using them): {missing}"


@pytest.mark.parametrize("name", ["matmul", "cat", "expand", "unfold", "fold"])
def test_rules_explain_bad_shapes(name):
    bad = {
        "matmul": (lambda: em.ones(2, 3) @ em.ones(2, 3), r"matmul: shapes \(2, 3\) and \(2, 3\)"),
        "cat": (lambda: em.cat([em.ones(2, 3), em.ones(3, 2)]), "cat: all tensors must have the same shape"),
        "expand": (lambda: em.ones(2, 3).expand(4, 3), r"expand: .*\(2, 3\)"),
        "unfold": (lambda: F.unfold(em.ones(1, 1, 2, 2), 3), "unfold: kernel"),
        "fold": (lambda: F.fold(em.ones(1, 4, 5), (3, 3), 2), "fold: input of shape"),
    }[name]
    with pytest.raises(em.ShapeError, match=bad[1]):
        bad[0]()
