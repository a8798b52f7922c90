"""em.onnx.export: checked by onnx.checker (inside export) and run by onnxruntime."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ember as em
import ember.nn as nn
from ember.models import GPT, CharLSTM
from nn.test_modules import LAYERS  # tests/ is on sys.path (conftest); one layer table for all tests


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


FAMILIES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(20, 32), nn.GELU(), nn.Linear(32, 5), nn.LogSoftmax(-1)),
            lambda b: em.randn(b, 20)),
    "cnn": (lambda: nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding="same"), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 7 * 7, 10)),
            lambda b: em.randn(b, 1, 28, 28)),
    "lstm": (lambda: CharLSTM(96, 16, 32), lambda b: em.randint(0, 96, (b, 12))),
    "gpt": (lambda: GPT(96, 16, 32, 4, 2), lambda b: em.randint(0, 96, (b, 16))),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_families_match_onnxruntime_at_two_batch_sizes_with_one_file(family, tmp_path):
    make, sample = FAMILIES[family]
    em.manual_seed(0)
    model = make().eval()
    path = em.onnx.export(model, sample(3), tmp_path / f"{family}.onnx", dynamic_batch=True)
    for batch in (1, 7):
        x = sample(batch)
        with em.no_grad():
            want = model(x).numpy()
        got = _run(path, {"input": x.numpy()})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_names_and_metadata(tmp_path):
    em.manual_seed(0)
    model = GPT(96, 16, 32, 4, 1).eval()
    path = em.onnx.export(model, em.randint(0, 96, (2, 16)), tmp_path / "gpt.onnx")
    proto = onnx.load(path)
    initializers = {i.name for i in proto.graph.initializer}
    assert {"tok.weight", "pos.weight", "blocks.0.attn.qkv.weight", "ln_f.bias"} <= initializers
    assert any(n.name.startswith("blocks/0/attn/") for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["ember.inputs"]) == [{"name": "input", "shape": [None, 16], "dtype": "int64"}]
    assert json.loads(meta["ember.outputs"])[0]["shape"] == [None, 16, 96]
    assert "GPT" in proto.doc_string and proto.producer_name == "ember"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 16


class _Wrap(nn.Module):
    """A layer called with several inputs, returning its first (tensor) output."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, *xs):
        out = self.layer(*xs)
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_exports(name, tmp_path):
    make, inputs = LAYERS[name]
    em.manual_seed(0)
    model = _Wrap(make(nn)).eval()
    xs = [em.tensor(a) for a in inputs]
    with em.no_grad():
        want = model(*xs).numpy()
    path = em.onnx.export(model, tuple(xs), tmp_path / "layer.onnx", dynamic_batch=False)
    feeds = {f"input_{k}" if len(xs) > 1 else "input": a for k, a in enumerate(inputs)}
    got = _run(path, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_unsupported_ops_name_the_primitive(tmp_path):
    with pytest.raises(em.onnx.NotExportable, match="random"):
        em.onnx.export(lambda x: x + em.rand(*x.shape), em.randn(2, 3), tmp_path / "bad.onnx")


def test_opset_too_old_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="opset must be 17 or newer"):
        em.onnx.export(nn.Linear(2, 2), em.randn(1, 2), tmp_path / "x.onnx", opset=13)
