"""QuantizedLinear / QuantizedConv2d: built from float layers, compared with the float layers
and with PyTorch's dynamic quantization (torch.ao.quantization.quantize_dynamic)."""

import warnings

import numpy as np
import pytest
import torch

import ember as em
from ember import layers, nn
from ember.errors import ShapeError
from ember.quantize import QuantizedConv2d, QuantizedLinear


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _float_out(module, x):
    with em.no_grad():
        return module(em.tensor(x)).numpy()


def test_quantized_linear_from_float():
    lin = nn.Linear(40, 12)
    q = QuantizedLinear.from_float(lin)
    assert q.weight.dtype == em.int8 and q.weight_scale.dtype == em.float32 and q.bias.dtype == em.float32
    np.testing.assert_allclose(q.weight_scale.numpy(), np.abs(lin.weight.data).max(1) / 127, rtol=1e-7)
    np.testing.assert_array_equal(q.bias.numpy(), lin.bias.data)
    assert list(q.parameters()) == [] and set(q.state_dict()) == {"weight", "weight_scale", "bias"}
    x = _x(5, 40)
    y = q(em.tensor(x))
    assert not y.requires_grad and y.dtype == em.float32
    ref = _float_out(lin, x)
    assert np.abs(y.numpy() - ref).max() < 0.02 * np.abs(ref).max()  # 8-bit noise, far below the signal
    assert "weights=int8 per-channel" in repr(q)
    no_bias = QuantizedLinear.from_float(nn.Linear(40, 3, bias=False))
    assert no_bias.bias is None and "bias" not in no_bias.state_dict()


def test_quantized_linear_keeps_dense_activation_and_name():
    dense = layers.Dense(6, activation="relu", name="hidden")
    dense(em.tensor(_x(2, 9)))  # build
    q = QuantizedLinear.from_float(dense)
    assert q.name == "hidden" and q.activation is dense.activation
    y = q(em.tensor(_x(4, 9, seed=1))).numpy()
    assert (y >= 0).all()
    np.testing.assert_allclose(y, _float_out(dense, _x(4, 9, seed=1)), atol=0.03)


def _torch_linear(lin):
    t = torch.nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(lin.weight.data))
        t.bias.copy_(torch.tensor(lin.bias.data))
    return t


def _torch_quantize_dynamic(t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(t), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})[0]


def test_weights_match_pytorch_per_channel_up_to_the_scale_convention():
    """PyTorch's symmetric qint8 observer uses scale = max|w| / 127.5 (the range [-128, 127]
    halved); ember uses max|w| / 127 (range [-127, 127]). So the scales differ by exactly
    127 / 127.5 and the integer weights by at most one step."""
    lin = nn.Linear(300, 40)
    q = QuantizedLinear.from_float(lin)
    tq = _torch_quantize_dynamic(_torch_linear(lin))
    tw = tq.weight()
    np.testing.assert_allclose(tw.q_per_channel_scales().numpy(), q.weight_scale.numpy() * 127 / 127.5, rtol=1e-6)
    assert (tw.q_per_channel_zero_points().numpy() == 0).all()
    diff = np.abs(tw.int_repr().numpy().astype(int) - q.weight.numpy().astype(int))
    assert diff.max() <= 1


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_outputs_match_pytorch_linear_dynamic_with_the_same_int8_weights(engine):
    """Given ember's int8 weights and scales, PyTorch's quantized::linear_dynamic with 8-bit
    activations (reduce_range=False) computes the same thing: uint8 per-tensor activations from the
    batch's range (including 0), int32 accumulation, float rescale. Tolerance: float32 rounding of
    the rescale (1e-6 of the output range)."""
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this PyTorch build has no {engine} quantized engine")
    lin = nn.Linear(300, 40)
    q = QuantizedLinear.from_float(lin)
    x = _x(16, 300)
    ours = q(em.tensor(x)).numpy()
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        qw = torch._make_per_channel_quantized_tensor(torch.tensor(q.weight.numpy()),
                                                      torch.tensor(q.weight_scale.numpy().astype(np.float64)),
                                                      torch.zeros(40, dtype=torch.int64), 0)
        tl = torch.ao.nn.quantized.dynamic.Linear(300, 40, dtype=torch.qint8)
        tl.set_weight_bias(qw, torch.tensor(lin.bias.data))
        theirs = torch.ops.quantized.linear_dynamic(torch.tensor(x), tl._packed_params._packed_params, False).numpy()
    finally:
        torch.backends.quantized.engine = old
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * np.abs(ours).max())


def test_default_pytorch_dynamic_quantization_is_as_close_to_float():
    """PyTorch's default (x86/fbgemm) quantize_dynamic quantizes activations to 7 bits
    (reduce_range=True, against int16 overflow in its kernels) and weights with max|w|/127.5, so its
    outputs differ from ember's by quantization noise, not by a systematic error: both stay within
    the same small fraction of the float output, and ember (8-bit activations) is the closer one."""
    lin = nn.Linear(300, 40)
    q = QuantizedLinear.from_float(lin)
    x = _x(64, 300, seed=3)
    ref = _float_out(lin, x)
    ours = q(em.tensor(x)).numpy()
    torch_out = _torch_quantize_dynamic(_torch_linear(lin))(torch.tensor(x)).detach().numpy()
    err_ours, err_torch = np.abs(ours - ref).max(), np.abs(torch_out - ref).max()
    assert err_ours < 0.02 * np.abs(ref).max() and err_torch < 0.04 * np.abs(ref).max()
    assert err_ours <= err_torch


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding=0, stride=2), dict(padding="same"),
                                    dict(padding=2, dilation=2, groups=2), dict(padding=1, padding_mode="reflect"),
                                    dict(padding=1, bias=False)])
def test_quantized_conv2d_follows_the_float_layer(kwargs):
    conv = nn.Conv2d(4, 6, 3, **kwargs)
    q = QuantizedConv2d.from_float(conv)
    x = _x(2, 4, 9, 9)
    ref = _float_out(conv, x)
    y = q(em.tensor(x)).numpy()
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()
    np.testing.assert_allclose(q.weight_scale.numpy(), np.abs(conv.weight.data).reshape(6, -1).max(1) / 127,
                               rtol=1e-7)


@pytest.mark.parametrize("strides", [1, 2])
def test_quantized_conv2d_from_keras_same_padding(strides):
    conv = layers.Conv2D(5, 3, strides=strides, padding="same", activation="relu")
    x = _x(2, 3, 7, 8)
    ref = _float_out(conv, x)  # builds it
    q = QuantizedConv2d.from_float(conv)
    y = q(em.tensor(x)).numpy()
    assert y.shape == ref.shape and (y >= 0).all()
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()


def test_layer_input_errors():
    q = QuantizedLinear.from_float(nn.Linear(8, 3))
    with pytest.raises(ShapeError, match=r"QuantizedLinear\(in_features=8, out_features=3\): input has shape "
                                         r"\(2, 5\), expected the last dim to be 8"):
        q(em.tensor(_x(2, 5)))
    with pytest.raises(em.OpError, match="expects a floating point input, got int64"):
        q(em.tensor(np.ones((2, 8), np.int64)))
    out = q(em.tensor(_x(2, 8).astype(np.float64)))  # other floats are computed in float32
    assert out.dtype == em.float32
    qc = QuantizedConv2d.from_float(nn.Conv2d(3, 2, 3))
    with pytest.raises(ShapeError, match=r"expected \(N, 3, H, W\)"):
        qc(em.tensor(_x(1, 4, 5, 5)))
