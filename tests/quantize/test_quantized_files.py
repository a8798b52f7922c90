"""em.save / em.load of quantized models: int8 weights and float32 scales stored as such in the
safetensors file, reloaded without pickle into the same quantized layers, identical predictions."""

import json
import struct

import numpy as np
import pytest

import ember as em
from ember import layers, nn
from ember.quantize import QuantizedConv2d, QuantizedLinear
from ember.saving import ModelFileError


class Classifier(em.Model):  # a subclassed model: its architecture is its constructor's arguments
    def __init__(self, hidden=32):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(em.nn.functional.relu(self.fc1(em.nn.functional.relu(self.conv(x)).flatten(1))))


def _x(n=7):
    return np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _header(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def test_subclassed_model_round_trip(tmp_path):
    q = em.quantize.dynamic(Classifier(hidden=48))
    path = em.save(q, tmp_path / "q.ember")
    header = _header(path)
    assert header["conv.weight"]["dtype"] == "I8" and header["fc1.weight"]["dtype"] == "I8"
    assert header["fc1.weight_scale"]["dtype"] == "F32" and header["fc1.weight_scale"]["shape"] == [48]
    record = json.loads(header["__metadata__"]["quantization"])
    assert record["modules"] == {"conv": "QuantizedConv2d", "fc1": "QuantizedLinear", "fc2": "QuantizedLinear"}
    loaded = em.load(path)
    assert type(loaded.conv) is QuantizedConv2d and type(loaded.fc1) is QuantizedLinear
    assert loaded.fc1.out_features == 48
    np.testing.assert_array_equal(loaded.fc1.weight.numpy(), q.fc1.weight.numpy())
    np.testing.assert_array_equal(loaded(em.tensor(_x())).numpy(), q(em.tensor(_x())).numpy())


def test_keras_sequential_round_trip_and_partial_quantization(tmp_path):
    model = em.Sequential([layers.Input((1, 8, 8)), layers.Conv2D(4, 3, padding="same", activation="relu"),
                           layers.Flatten(), layers.Dense(16, activation="relu"),
                           layers.Dense(10, activation="softmax")])
    model.build((None, 1, 8, 8))
    for modules in (None, {layers.Dense}):
        q = em.quantize.dynamic(model, modules=modules)
        path = em.save(q, tmp_path / "seq.ember")
        loaded = em.load(path)
        assert [type(m).__name__ for m in loaded.layers] == [type(m).__name__ for m in q.layers]
        np.testing.assert_array_equal(loaded.predict(_x()), q.predict(_x()))


def test_quantized_file_is_smaller(tmp_path):
    model = Classifier(hidden=256)
    f = em.save(model, tmp_path / "f.ember")
    q = em.save(em.quantize.dynamic(model), tmp_path / "q.ember")
    assert (tmp_path / "f.ember").stat().st_size > 3.5 * (tmp_path / "q.ember").stat().st_size, (f, q)


def test_a_model_built_from_quantized_layers_saves_through_its_config(tmp_path):
    seq = nn.Sequential(QuantizedLinear(6, 3), nn.ReLU())
    seq[0].weight.data[...] = np.arange(18, dtype=np.int8).reshape(3, 6)
    loaded = em.load(em.save(seq, tmp_path / "m.ember"))
    np.testing.assert_array_equal(loaded[0].weight.numpy(), seq[0].weight.numpy())


def test_damaged_quantization_record_is_refused(tmp_path):
    from ember.saving import _pack, atomic_write_bytes, read_safetensors

    path = em.save(em.quantize.dynamic(Classifier()), tmp_path / "q.ember")
    arrays, meta = read_safetensors(path)
    for record, message in [({"scheme": "other-v9", "modules": {}}, "scheme 'other-v9'"),
                            ({"scheme": em.quantize.SCHEME, "modules": {"fc9": "QuantizedLinear"}},
                             "quantized layer 'fc9'"),
                            ({"scheme": em.quantize.SCHEME, "modules": {"fc1": "QuantizedConv2d"}},
                             "has a Linear there")]:
        meta2 = {k: v for k, v in meta.items() if k != "sha256"}
        meta2["quantization"] = json.dumps(record)
        atomic_write_bytes(tmp_path / "bad.ember", _pack(arrays, meta2))
        with pytest.raises(ModelFileError, match=message):
            em.load(tmp_path / "bad.ember")
