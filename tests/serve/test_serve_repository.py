"""Version discovery, loading and the serving policy (ember.serve.repository), without HTTP."""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import pytest

import ember as em
import ember.nn as nn
from conftest import make_model, reference, save_version
from ember.serve.config import ServeConfig
from ember.serve.errors import ServeError
from ember.serve.repository import AVAILABLE, END, LoadError, Repository, find_model_file, load_servable
from ember.tensor import Tensor


class TwoHeads(em.Model):
    """A model with a tuple of outputs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.cls = nn.Linear(6, 3)
        self.reg = nn.Linear(6, 1)

    def forward(self, x):
        h = self.body(x).relu()
        return self.cls(h), self.reg(h)


class TokenModel(em.Model):
    """Integer token ids in, one vector per sequence out."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 3)

    def forward(self, x):
        return self.emb(x).sum(1)


def test_find_model_file(tmp_path):
    d = tmp_path / "1"
    d.mkdir()
    assert find_model_file(str(d)) is None  # empty: still being written
    (d / ".tmp-model.ember-x").write_bytes(b"partial")
    assert find_model_file(str(d)) is None  # hidden files are ignored
    em.save(make_model(), str(d / "model.ember"))
    path, fingerprint = find_model_file(str(d))
    assert path.endswith("model.ember") and fingerprint[0] == "model.ember"
    em.save(make_model(), str(d / "other.ember"))
    with pytest.raises(LoadError, match="several model files"):
        find_model_file(str(d))
    e = tmp_path / "2"
    e.mkdir()
    (e / "saved_model.pb").write_bytes(b"tf")
    with pytest.raises(LoadError, match="no ember model file") as info:
        find_model_file(str(e))
    assert info.value.code == "NOT_FOUND"
    f = tmp_path / "3"
    f.mkdir()
    em.save(make_model(), str(f / "weights.bin"))  # an ember file under another name is recognised
    assert find_model_file(str(f))[0].endswith("weights.bin")


def test_load_keras_model_signature_and_outputs(tmp_path):
    model = make_model(3)
    path = str(tmp_path / "m.ember")
    em.save(model, path)
    s = load_servable(path)
    assert s.kind == "ember" and s.fixed_batch is None
    assert s.signature.input.shape == (None, 4) and s.signature.input.dtype == np.float32
    [out] = s.signature.outputs
    assert (out.name, out.shape, out.dtype) == ("output", (None, 3), np.float32)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(s.run(x)["output"], reference(model, x), rtol=1e-6)
    assert all(not p.requires_grad for p in s.model.parameters())
    tf = s.signature.to_tf()
    assert tf["inputs"]["input"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "4", "name": ""}]
    assert tf["inputs"]["input"]["dtype"] == "DT_FLOAT" and tf["method_name"] == "tensorflow/serving/predict"


def test_load_plain_module_has_an_unknown_signature(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
    path = str(tmp_path / "m.ember")
    em.save(model, path)
    s = load_servable(path)
    assert s.signature.input.shape is None and s.signature.input.dtype is None and s.signature.outputs is None
    assert s.signature.to_tf()["inputs"]["input"]["tensor_shape"] == {"dim": [], "unknown_rank": True}
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(s.run(x)["output"], model(Tensor._make(x)).data, rtol=1e-6)


def test_load_tuple_outputs_and_integer_inputs(tmp_path):
    two = TwoHeads()
    two(Tensor._make(np.zeros((1, 4), np.float32)))  # records the input signature
    em.save(two, str(tmp_path / "two.ember"))
    s = load_servable(str(tmp_path / "two.ember"))
    assert [(o.name, o.shape) for o in s.signature.outputs] == [("output_0", (None, 3)), ("output_1", (None, 1))]
    tokens = TokenModel()
    tokens(Tensor._make(np.zeros((1, 5), np.int64)))
    em.save(tokens, str(tmp_path / "tok.ember"))
    s = load_servable(str(tmp_path / "tok.ember"))
    assert s.signature.input.dtype == np.int64 and s.signature.input.shape == (None, 5)
    assert s.signature.outputs[0].shape == (None, 3)


def test_broken_files_are_load_errors(tmp_path):
    path = tmp_path / "m.ember"
    em.save(make_model(), str(path))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="checksum") as info:
        load_servable(str(path))
    assert info.value.code == "INVALID_ARGUMENT"
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(LoadError):
        load_servable(str(path))


def test_onnx_version(tmp_path):
    pytest.importorskip("onnx")
    from ember import onnx as em_onnx

    model = make_model(4)
    path = str(tmp_path / "m.onnx")
    em_onnx.export(model, Tensor._make(np.zeros((2, 4), np.float32)), path)
    s = load_servable(path)
    assert s.kind == "onnx" and s.signature.input.shape == (None, 4) and s.signature.input.dtype == np.float32
    assert s.signature.input_aliases[0] == "input" and len(s.signature.input_aliases) == 2
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(s.run(x)["output"], reference(model, x), rtol=1e-5, atol=1e-6)


def test_onnx_without_ember_onnx_is_a_clear_load_error(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not really onnx")
    monkeypatch.setitem(sys.modules, "ember.onnx", None)  # as if ember.onnx did not exist
    with pytest.raises(LoadError, match="ONNX support") as info:
        load_servable(str(path))
    assert info.value.code == "UNIMPLEMENTED"


# ---- the policy ------------------------------------------------------------------------------

class StubRunner:
    def __init__(self, servable):
        self.servable, self.closed = servable, False

    def close(self):
        self.closed = True


async def settle(repo):
    await repo.scan()
    while repo._loads:
        await asyncio.gather(*list(repo._loads.values()))


def states(repo):
    return {v: (mv.state, mv.error_code) for v, mv in repo.versions.items()}


def test_policy_latest_keep_failures_and_removal(tmp_path):
    base = tmp_path / "m"
    for v in (1, 2, 3):
        save_version(base, v, make_model(v))
    repo = Repository(ServeConfig(str(base), keep_versions=2), lambda servable, version: StubRunner(servable))

    async def main():
        await settle(repo)
        # the newest two load; the oldest never does
        assert states(repo) == {3: (AVAILABLE, "OK"), 2: (AVAILABLE, "OK")}
        assert repo.resolve(None).version == 3 and repo.resolve(2).version == 2
        with pytest.raises(ServeError) as info:
            repo.resolve(1)
        assert info.value.status == 404

        save_version(base, 4, make_model(4))
        await settle(repo)
        assert states(repo)[4] == (AVAILABLE, "OK") and states(repo)[3] == (AVAILABLE, "OK")
        assert states(repo)[2] == (END, "OK")  # unloaded only after 4 was AVAILABLE
        with pytest.raises(ServeError, match="not loaded"):
            repo.resolve(2)

        # a broken newer version is reported; the versions serving are untouched
        (base / "5").mkdir()
        (base / "5" / "model.ember").write_bytes(b"garbage")
        await settle(repo)
        assert states(repo)[5][0] == END and states(repo)[5][1] != "OK"
        assert repo.resolve(None).version == 4
        with pytest.raises(ServeError, match="failed to load") as info:
            repo.resolve(5)
        assert info.value.status == 404
        await settle(repo)  # not retried while the file is unchanged
        assert states(repo)[5][0] == END

        # fixed file: loaded on the next scan
        os.remove(base / "5" / "model.ember")
        save_version(base, 5, make_model(5))
        await settle(repo)
        assert states(repo)[5] == (AVAILABLE, "OK") and repo.resolve(None).version == 5

        # removing the newest version directory falls back to the previous one
        import shutil

        shutil.rmtree(base / "5")
        await settle(repo)
        assert 5 not in repo.versions and repo.resolve(None).version == 4

    asyncio.run(main())


def test_keep_zero_keeps_all_and_empty_dirs_wait(tmp_path):
    base = tmp_path / "m"
    for v in (1, 2, 3):
        save_version(base, v, make_model(v))
    (base / "7").mkdir()  # empty: a version being copied
    (base / "notes").mkdir()  # not a number: ignored
    repo = Repository(ServeConfig(str(base), keep_versions=0), lambda servable, version: StubRunner(servable))

    async def main():
        await settle(repo)
        assert sorted(v.version for v in repo.available()) == [1, 2, 3] and 7 not in repo.versions
        with pytest.raises(ServeError, match="no version 9") as info:
            repo.resolve(9)
        assert info.value.status == 404

    asyncio.run(main())


def test_no_versions_is_503_with_the_reason(tmp_path):
    repo = Repository(ServeConfig(str(tmp_path)), lambda s, v: StubRunner(s))

    async def main():
        await settle(repo)
        with pytest.raises(ServeError, match="no version available") as info:
            repo.resolve(None)
        assert info.value.status == 503

    asyncio.run(main())


def test_model_dir_nested_or_direct(tmp_path):
    save_version(tmp_path / "digits", 1, make_model())
    assert ServeConfig(str(tmp_path), model_name="digits").model_dir == str(tmp_path / "digits")
    assert ServeConfig(str(tmp_path / "digits")).model_dir == str(tmp_path / "digits")
    assert ServeConfig(str(tmp_path / "digits")).model_name == "digits"
    with pytest.raises(ValueError):
        ServeConfig(str(tmp_path), max_batch_size=0)
