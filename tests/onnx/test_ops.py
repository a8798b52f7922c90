"""ONNX operators as ember runs them (ember/onnx/ops.py), checked against ONNX's reference
implementation (onnx.reference.ReferenceEvaluator) and PyTorch."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember as em
from ember.onnx.backend import EmberBackend


def _model(op_type, feeds, outputs=("y",), opset=21, inputs=None, **attrs):
    """A one-node model; ``feeds`` maps input names to example arrays ("" skips an optional input)."""
    names = list(feeds) if inputs is None else inputs
    node = helper.make_node(op_type, names, list(outputs), **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in feeds.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)  # fills in the output types the checker asks for


def _both(model, feeds):
    """(ember's outputs, the reference implementation's outputs)."""
    ours = EmberBackend.prepare(model).run(feeds)
    return ours, ReferenceEvaluator(model).run(None, feeds)


def _run_unchecked(model, feeds):
    """ember's outputs for a model onnx's checker would reject before ember sees it."""
    return em.onnx.load(model.SerializeToString())(*[em.tensor(a) for a in feeds.values()])


def _assert_same(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# ---- QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear -------------------------------------------

def test_quantize_divides_in_the_scale_type():
    # 0.5 / float32(5/255) is 25.4999991 in float64 (-> 25) but 25.5 in float32 (-> 26, half to even)
    x = np.array([0.5, -2.5, 1.34, 0.0, 2.0, -3.0], np.float32)
    feeds = {"x": x, "s": np.array(np.float32(5.0) / np.float32(255.0)), "zp": np.array(153, np.uint8)}
    ours, ref = _both(_model("QuantizeLinear", feeds), feeds)
    _assert_same(ours, ref)
    assert ours[0][0] == 153 + 26


@pytest.mark.parametrize("zp_dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_quantize_rounds_half_to_even_and_saturates(zp_dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(-8, 8.5, 0.5), rng.normal(0, 300, 64), [1e9, -1e9]]).astype(np.float32)
    feeds = {"x": x, "s": np.array(0.5, np.float32), "zp": np.array(3, zp_dtype)}
    _assert_same(*_both(_model("QuantizeLinear", feeds), feeds))


def test_quantize_output_dtype_and_blocks_with_a_short_last_block():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 20, (3, 5)).astype(np.float32)
    feeds = {"x": x, "s": rng.uniform(0.5, 3, (3, 3)).astype(np.float32)}  # blocks of 2, 2 and 1 along axis 1
    model = _model("QuantizeLinear", feeds, axis=1, block_size=2, output_dtype=TensorProto.INT16)
    ours, ref = _both(model, feeds)
    _assert_same(ours, ref)
    assert ours[0].dtype == np.int16


def test_quantize_per_axis_with_zero_point():
    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(0, 50, (2, 4, 3)).astype(np.float32), "s": rng.uniform(0.2, 2, 4).astype(np.float32),
             "zp": np.array([0, -3, 7, 100], np.int8)}
    _assert_same(*_both(_model("QuantizeLinear", feeds, axis=1), feeds))


def test_quantize_refusals_name_the_problem():
    x = np.zeros((3, 4), np.float32)
    bad_blocks = {"x": x, "s": np.ones((3, 3), np.float32)}  # block_size 2 over 4 columns needs 2 blocks
    with pytest.raises(em.onnx.UnsupportedOp, match=r"QuantizeLinear.*block_size=2.*\(3, 2\)"):
        _run_unchecked(_model("QuantizeLinear", bad_blocks, axis=1, block_size=2), bad_blocks)
    feeds = {"x": x, "s": np.array(1.0, np.float32)}
    with pytest.raises(em.onnx.UnsupportedOp, match="QuantizeLinear.*float8_e4m3fn"):
        _run_unchecked(_model("QuantizeLinear", feeds, output_dtype=TensorProto.FLOAT8E4M3FN), feeds)
    mismatch = {"x": x, "s": np.array(1.0, np.float32), "zp": np.array(0, np.uint8)}
    with pytest.raises(em.onnx.UnsupportedOp, match="output_dtype=int8 with a zero point of type uint8"):
        _run_unchecked(_model("QuantizeLinear", mismatch, output_dtype=TensorProto.INT8), mismatch)


def test_dequantize_output_dtype_and_blocks():
    rng = np.random.default_rng(3)
    feeds = {"x": rng.integers(-128, 128, (4, 6), dtype=np.int8), "s": rng.uniform(0.1, 1, (2, 6)).astype(np.float32),
             "zp": rng.integers(-5, 5, (2, 6), dtype=np.int8)}
    model = _model("DequantizeLinear", feeds, opset=25, axis=0, block_size=2, output_dtype=TensorProto.FLOAT16)
    ours, ref = _both(model, feeds)
    assert ours[0].dtype == ref[0].dtype == np.float16
    np.testing.assert_array_equal(ours[0], ref[0])


@pytest.mark.parametrize("seed", range(5))
def test_dynamic_quantize_matches_reference_including_ties(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 3, 50), [0.5, -2.5, 0.25]]).astype(np.float32)
    x[:3] = [2.0, -3.0, 0.0]  # the range [-3, 2] gives the scale 5/255 whose quotients tie in float32
    feeds = {"x": x}
    _assert_same(*_both(_model("DynamicQuantizeLinear", feeds, outputs=("y", "y_scale", "y_zp")), feeds))


# ---- Dropout --------------------------------------------------------------------------------------------

def _dropout_feeds(ratio, training):
    x = np.random.default_rng(4).normal(size=(3, 4, 5)).astype(np.float32)
    return {"x": x, "r": np.array(ratio, np.float32), "t": np.array(training)}


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.75])
def test_training_dropout_with_seed_matches_reference(ratio):
    feeds = _dropout_feeds(ratio, True)
    model = _model("Dropout", feeds, outputs=("y", "mask"), seed=7)
    ours, ref = _both(model, feeds)
    assert ours[1].dtype == np.bool_
    np.testing.assert_array_equal(ours[1], ref[1])
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    again = EmberBackend.prepare(model).run(feeds)  # a seeded node draws the same mask on every run
    np.testing.assert_array_equal(again[1], ours[1])


def test_training_dropout_without_seed_draws_fresh_masks():
    feeds = _dropout_feeds(0.75, True)
    feeds["x"] = np.ones((200, 100), np.float32)
    rep = EmberBackend.prepare(_model("Dropout", feeds, outputs=("y", "mask")))
    (y1, m1), (y2, m2) = rep.run(feeds), rep.run(feeds)
    np.testing.assert_allclose(y2, np.where(m2, 4.0, 0.0))
    assert not np.array_equal(m1, m2)
    assert abs(m1.mean() - 0.25) < 0.02
    np.testing.assert_allclose(y1, np.where(m1, 4.0, 0.0))


def test_dropout_at_inference_is_identity_and_bad_ratio_is_refused():
    feeds = _dropout_feeds(0.5, False)
    y, mask = EmberBackend.prepare(_model("Dropout", feeds, outputs=("y", "mask"), seed=0)).run(feeds)
    np.testing.assert_array_equal(y, feeds["x"])
    assert mask.all()
    feeds = _dropout_feeds(1.0, True)
    with pytest.raises(em.onnx.UnsupportedOp, match=r"Dropout.*ratio=1.0"):
        EmberBackend.prepare(_model("Dropout", feeds)).run(feeds)


# ---- ConvTranspose (3-D) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("strides,dilations,pads,out_pad,group", [
    ([1, 1, 1], [1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0], 1),
    ([2, 1, 3], [1, 2, 1], [1, 0, 1, 1, 0, 1], [1, 0, 2], 1),
    ([3, 2, 2], [2, 1, 1], [0, 1, 0, 0, 1, 0], [0, 1, 0], 2),
])
def test_conv_transpose_3d_matches_torch(strides, dilations, pads, out_pad, group):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 3, 4, 3)).astype(np.float32)
    w = rng.normal(size=(4, 3, 2, 3, 2)).astype(np.float32)
    b = rng.normal(size=3 * group).astype(np.float32)
    feeds = {"x": x, "w": w, "b": b}
    model = _model("ConvTranspose", feeds, strides=strides, dilations=dilations, pads=pads, output_padding=out_pad,
                   group=group)
    (ours,) = EmberBackend.prepare(model).run(feeds)
    expected = torch.nn.functional.conv_transpose3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                    strides, pads[:3], out_pad, group, dilations)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_conv_transpose_3d_asymmetric_pads_output_shape_and_auto_pad_match_onnxruntime():
    # (onnx.reference's ConvTranspose fails on output_shape in 3-D; where it runs it agrees with onnxruntime)
    rng = np.random.default_rng(6)
    feeds = {"x": rng.normal(size=(1, 2, 3, 3, 2)).astype(np.float32),
             "w": rng.normal(size=(2, 2, 3, 2, 2)).astype(np.float32)}
    for attrs in ({"strides": [2, 2, 1], "pads": [1, 0, 0, 0, 1, 1]},
                  {"strides": [2, 2, 2], "output_shape": [6, 7, 4]},
                  {"strides": [2, 1, 2], "auto_pad": "SAME_LOWER"}, {"strides": [1, 2, 2], "auto_pad": "SAME_UPPER"}):
        model = _model("ConvTranspose", feeds, **attrs)
        (ours,) = EmberBackend.prepare(model).run(feeds)
        (expected,) = onnxruntime.InferenceSession(model.SerializeToString(),
                                                   providers=["CPUExecutionProvider"]).run(None, feeds)
        assert ours.shape == expected.shape, attrs
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_3d_gradient_matches_torch():
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(1, 2, 3, 3, 3)), rng.normal(size=(2, 2, 2, 2, 2))
    feeds = {"x": x.astype(np.float32), "w": w.astype(np.float32)}
    model = em.onnx.load(_model("ConvTranspose", feeds, strides=[2, 1, 2], pads=[1, 0, 0, 0, 1, 1])
                         .SerializeToString())
    xe = em.tensor(feeds["x"], requires_grad=True)
    model(xe, em.tensor(feeds["w"])).sum().backward()
    xt = torch.tensor(feeds["x"], requires_grad=True)
    full = torch.nn.functional.conv_transpose3d(xt, torch.tensor(feeds["w"]), stride=[2, 1, 2])
    full[:, :, 1:, :full.shape[3] - 1, :full.shape[4] - 1].sum().backward()
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-5)


# ---- values that are not tensors ---------------------------------------------------------------------------

def test_sequence_inputs_are_refused_by_name():
    seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
    graph = helper.make_graph([helper.make_node("Identity", ["xs"], ["ys"])], "g",
                              [helper.make_value_info("xs", seq)], [helper.make_value_info("ys", seq)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(em.onnx.UnsupportedOp, match="graph input 'xs' has type sequence"):
        EmberBackend.prepare(model)
