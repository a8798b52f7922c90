"""The int8 primitives (ember/ops/quantized.py) against NumPy references: per-channel weight
scales, ONNX's DynamicQuantizeLinear (onnx's own reference implementation), exact integer
products, and the quantized linear/conv against float math on the dequantized values."""

import numpy as np
import pytest
import torch

import ember as em
from ember.errors import OpError, ShapeError
from ember.ops.quantized import (
    EXACT_BLOCK,
    QUANTIZED_CONV2D,
    QUANTIZED_LINEAR,
    dynamic_quantize_np,
    integer_matmul_np,
    quantize_per_channel_np,
)
from ember.ops.registry import apply

rng = np.random.default_rng(0)


# ---- weights: symmetric per-output-channel int8 ------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 5), (16, 3, 3, 3), (4, 1, 1, 1)])
def test_per_channel_scales_and_round_trip_bound(shape):
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3, (shape[0],) + (1,) * (len(shape) - 1))
    q, scale = quantize_per_channel_np(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (shape[0],)
    amax = np.abs(w.reshape(shape[0], -1)).max(1)
    np.testing.assert_allclose(scale, amax / 127, rtol=1e-7)
    # each channel's largest weight maps to +-127, and no value uses -128
    assert (np.abs(q.reshape(shape[0], -1)).max(1) == 127).all() and q.min() >= -127
    err = np.abs(w - q * scale.reshape((-1,) + (1,) * (len(shape) - 1)))
    assert (err <= scale.reshape((-1,) + (1,) * (len(shape) - 1)) / 2 * (1 + 1e-6)).all()


def test_per_channel_zero_channel_and_errors():
    w = np.zeros((3, 4), np.float32)
    w[1] = [1, -2, 0.5, 0]
    q, scale = quantize_per_channel_np(w)
    assert scale[0] == 1 and scale[2] == 1 and not q[0].any() and not q[2].any()
    assert list(q[1]) == [64, -127, 32, 0]  # round(1 / (2/127)) = round(63.5) = 64 (half to even)
    with pytest.raises(OpError, match="floating point"):
        quantize_per_channel_np(np.ones((2, 2), np.int32))


# ---- activations: ONNX DynamicQuantizeLinear -----------------------------------------------------

def _onnx_dynamic_quantize(x):
    """onnx's reference implementation of DynamicQuantizeLinear (independent of ember)."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zp"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info(n, t, shape) for n, t, shape in
                               (("y", TensorProto.UINT8, list(x.shape)), ("scale", TensorProto.FLOAT, []),
                                ("zp", TensorProto.UINT8, []))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return ReferenceEvaluator(model).run(None, {"x": x})


@pytest.mark.parametrize("x", [
    rng.standard_normal((5, 33)).astype(np.float32) * 3,
    np.abs(rng.standard_normal((4, 8))).astype(np.float32),         # all positive: zero point 0
    -np.abs(rng.standard_normal((4, 8))).astype(np.float32) - 1,    # all negative: zero point 255
    np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32),
], ids=["mixed", "positive", "negative", "small"])
def test_dynamic_quantize_matches_onnx_reference(x):
    q, scale, zp = dynamic_quantize_np(x)
    ref_q, ref_scale, ref_zp = _onnx_dynamic_quantize(x)
    assert q.dtype == np.uint8 and np.array_equal(q, ref_q)
    assert scale == ref_scale and zp == ref_zp
    # round trip: every value within half a step; zero is exact
    assert (np.abs((q.astype(np.float32) - zp) * scale - x) <= scale / 2 * (1 + 1e-5)).all()
    assert dynamic_quantize_np(np.concatenate([x.ravel(), [0.0]]).astype(np.float32))[0][-1] == zp


def test_dynamic_quantize_degenerate_inputs():
    q, scale, zp = dynamic_quantize_np(np.zeros((2, 3), np.float32))
    assert scale == 1 and zp == 0 and not q.any()
    q, scale, zp = dynamic_quantize_np(np.zeros((0, 3), np.float32))
    assert q.shape == (0, 3) and scale == 1


# ---- exact integer products ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [7, EXACT_BLOCK, EXACT_BLOCK + 1, 3001])
def test_integer_matmul_is_exact(k):
    a = rng.integers(-255, 256, (6, k)).astype(np.int16)
    b = rng.integers(-127, 128, (k, 5)).astype(np.int8)
    a[0], b[:, 0] = 255, 127  # the worst case: every product at its maximum
    a[1], b[:, 1] = -255, 127
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(integer_matmul_np(a, b), exact)
    if k == 3000:  # why the blocks: one float32 GEMM over K=3000 is not exact
        naive = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
        assert not np.array_equal(naive, exact)


# ---- the primitives ----------------------------------------------------------------------------------

def _dequantized(x, w_q, w_scale, axis_shape):
    q, s, zp = dynamic_quantize_np(x)
    return (q.astype(np.float64) - zp) * s, w_q.astype(np.float64) * w_scale.reshape(axis_shape), s


@pytest.mark.parametrize("shape", [(4, 70), (2, 3, 600), (1, 9)])
def test_quantized_linear_equals_float_math_on_dequantized_values(shape):
    x = rng.standard_normal(shape).astype(np.float32)
    w_q, w_scale = quantize_per_channel_np(rng.standard_normal((11, shape[-1])).astype(np.float32))
    bias = rng.standard_normal(11).astype(np.float32)
    y = apply(QUANTIZED_LINEAR, (em.tensor(x), em.tensor(w_q), em.tensor(w_scale), em.tensor(bias)), {}).numpy()
    xd, wd, _ = _dequantized(x, w_q, w_scale, (-1, 1))
    ref = xd @ wd.T + bias
    assert y.dtype == np.float32 and y.shape == shape[:-1] + (11,)
    # the integer product is exact; only the float32 rescale and bias add round
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    no_bias = apply(QUANTIZED_LINEAR, (em.tensor(x), em.tensor(w_q), em.tensor(w_scale)), {}).numpy()
    np.testing.assert_allclose(no_bias, xd @ wd.T, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_quantized_linear_error_vs_float_is_within_the_quantization_bound():
    x = rng.standard_normal((8, 256)).astype(np.float32)
    w = rng.standard_normal((16, 256)).astype(np.float32) * 0.1
    w_q, w_scale = quantize_per_channel_np(w)
    y = apply(QUANTIZED_LINEAR, (em.tensor(x), em.tensor(w_q), em.tensor(w_scale)), {}).numpy()
    _, _, x_scale = _dequantized(x, w_q, w_scale, (-1, 1))
    # |x w - x_d w_d| <= sum |x||w - w_d| + |w_d||x - x_d| <= sum |x| s_w/2 + |w_d| s_x/2
    wd = w_q * w_scale[:, None]
    bound = np.abs(x) @ np.broadcast_to(w_scale / 2, (256, 16)) + (x_scale / 2) * np.abs(wd).sum(1)
    err = np.abs(y - x @ w.T)
    assert (err <= bound * 1.001 + 1e-6).all()
    assert err.max() > 0  # (it is quantized)


@pytest.mark.parametrize("n,c,h,w,o,k,stride,padding,dilation,groups", [
    (2, 3, 9, 8, 4, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 4, 10, 10, 6, 3, (2, 2), (0, 1, 0, 1), (1, 1), 2),  # asymmetric 'same' padding, groups
    (3, 2, 12, 11, 5, 2, (1, 2), (0, 0, 0, 0), (2, 1), 1),
    (1, 64, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),   # C*kh*kw = 576 > one exact block
])
def test_quantized_conv2d_equals_float_conv_on_dequantized_values(n, c, h, w, o, k, stride, padding, dilation,
                                                                  groups):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    w_q, w_scale = quantize_per_channel_np(rng.standard_normal((o, c // groups, k, k)).astype(np.float32))
    bias = rng.standard_normal(o).astype(np.float32)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    y = apply(QUANTIZED_CONV2D, (em.tensor(x), em.tensor(w_q), em.tensor(w_scale), em.tensor(bias)), attrs).numpy()
    xd, wd, _ = _dequantized(x, w_q, w_scale, (-1, 1, 1, 1))
    top, bottom, left, right = padding
    xd = np.pad(xd, ((0, 0), (0, 0), (top, bottom), (left, right)))  # real zeros: the zero point
    ref = torch.nn.functional.conv2d(torch.tensor(xd), torch.tensor(wd), torch.tensor(bias, dtype=torch.float64),
                                     stride, 0, dilation, groups).numpy()
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_shape_rules_name_the_problem():
    x = em.tensor(np.ones((2, 5), np.float32))
    w_q, w_scale = em.tensor(np.ones((3, 4), np.int8)), em.tensor(np.ones(3, np.float32))
    with pytest.raises(ShapeError, match=r"quantized_linear: input \(2, 5\) does not match weight \(3, 4\)"):
        apply(QUANTIZED_LINEAR, (x, w_q, w_scale), {})
    with pytest.raises(OpError, match="weight must be int8"):
        apply(QUANTIZED_LINEAR, (x, em.tensor(np.ones((3, 5), np.float32)), w_scale), {})
    with pytest.raises(ShapeError, match=r"weight scale has shape \(2,\), expected \(3,\)"):
        apply(QUANTIZED_LINEAR, (x, em.tensor(np.ones((3, 5), np.int8)), em.tensor(np.ones(2, np.float32))), {})
    with pytest.raises(OpError, match="input must be float32, got float64"):
        apply(QUANTIZED_LINEAR, (em.tensor(np.ones((2, 5))), em.tensor(np.ones((3, 5), np.int8)), w_scale), {})
