"""Model files: round trips (em.layers, ember.nn, subclassed models), PyTorch-written weights,
refusal to run anything named by a file, corruption/truncation/tampering, atomic writes, and
training resumed bit-identically from a checkpoint."""

import json
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import ember as em
import ember.nn as nn
import ember.nn.functional as F
from ember import layers as L
from ember import saving
from ember.saving import ModelFileError

rng = np.random.default_rng(0)
X = rng.standard_normal((24, 6)).astype(np.float32)
Y = rng.integers(0, 3, 24)
TOKENS = rng.integers(0, 20, (5, 7))


class First(nn.Module):
    """Takes the output of a module returning (output, state), like nn.LSTM."""

    def forward(self, x):
        return x[0]


class Classifier(em.Model):
    """A user's subclass with constructor arguments."""

    def __init__(self, hidden, classes=3, activation="relu", dropout=0.25, norm=True):
        super().__init__()
        self.body = em.Sequential([L.Dense(hidden, activation=activation), L.Dropout(dropout)])
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


def _mixed_sequence_model():
    """em.layers and ember.nn modules together: an encoder layer passed as an argument, an
    activation function as an argument, an nn.LSTM whose (output, state) is unpacked."""
    enc_layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, activation=F.gelu,
                                           batch_first=True)
    return em.Sequential([L.Input((7,), dtype="int64"), L.Embedding(20, 8),
                          nn.TransformerEncoder(enc_layer, num_layers=2, norm=nn.LayerNorm(8)),
                          nn.LSTM(8, 6, batch_first=True), First(), L.LSTM(5), L.Dense(3)])


MODELS = {
    "layers": (lambda: em.Sequential([L.Input((1, 6, 6)), L.Conv2D(4, 3, padding="same", activation="relu"),
                                      L.BatchNormalization(), L.MaxPooling2D(), L.Flatten(), L.Dropout(0.2),
                                      L.Dense(3, activation="softmax")]),
               rng.standard_normal((5, 1, 6, 6)).astype(np.float32)),
    "layers-and-nn": (lambda: em.Sequential([L.Dense(8), nn.GELU(), nn.BatchNorm1d(8), L.Dense(3)]), X[:5]),
    "nn-sequence": (_mixed_sequence_model, TOKENS),
    "subclassed": (lambda: Classifier(7, activation="tanh", dropout=0.5), X[:5]),
    "subclassed-defaults": (lambda: Classifier(4, norm=False), X[:5]),
    "plain-nn-Sequential": (lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)), X[:5]),
}


def _predict(model, x):
    model.eval()
    with em.no_grad():
        out = model(em.tensor(x))
    return out.numpy()


def _train_a_little(model, x):
    """Move weights and running statistics away from their initial values."""
    model.train()
    model(em.tensor(x))  # builds lazily sized layers
    opt = em.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = (model(em.tensor(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip_predicts_identically(name, tmp_path):
    make, x = MODELS[name]
    model = make()
    _train_a_little(model, x)
    expected = _predict(model, x)
    path = tmp_path / "model.ember"
    assert em.save(model, path) == os.fspath(path)
    loaded = em.load(path)
    assert type(loaded) is type(model)
    assert loaded.training is False
    np.testing.assert_array_equal(_predict(loaded, x), expected)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    if isinstance(model, em.Model):
        model.save(tmp_path / "again.ember")
        np.testing.assert_array_equal(_predict(em.load(tmp_path / "again.ember"), x), expected)


def test_constructor_arguments_are_restored():
    model = Classifier(7, activation="tanh", dropout=0.5)
    model(em.tensor(X[:2]))
    config = model.get_config()
    assert config["class"] == f"{Classifier.__module__}.Classifier"
    loaded = saving.from_config(json.loads(json.dumps(config)))
    assert isinstance(loaded, Classifier)
    assert loaded.body[1].rate == 0.5 and loaded.head.in_features == 7
    enc = _mixed_sequence_model()[2]
    rebuilt = saving.from_config(json.loads(json.dumps(saving.get_config(enc))))
    assert rebuilt.layers[1].activation is F.gelu and rebuilt.num_layers == 2
    assert isinstance(rebuilt.norm, nn.LayerNorm)


def test_unstorable_constructor_argument_is_a_clear_error(tmp_path):
    model = em.Sequential([L.Input((6,)), L.Dense(3, activation=lambda t: t * 2)])
    with pytest.raises(ModelFileError, match="argument 'activation' of Dense.*save_weights"):
        em.save(model, tmp_path / "m.ember")
    assert list(tmp_path.iterdir()) == []
    model.save_weights(tmp_path / "w.safetensors")  # the weights alone are fine


# ---- weights files and PyTorch ------------------------------------------------------------------

def test_save_weights_load_weights(tmp_path):
    model = Classifier(5)
    _train_a_little(model, X)
    model.save_weights(tmp_path / "w.safetensors")
    fresh = Classifier(5)  # not built yet: the file records the input shape
    fresh.load_weights(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(_predict(fresh, X), _predict(model, X))
    other = Classifier(6)
    other(em.tensor(X[:2]))
    with pytest.raises(em.ShapeError, match=r"'body.0.weight' has shape \(5, 6\) in the state dict but \(6, 6\)"):
        other.load_weights(tmp_path / "w.safetensors")


def test_weights_written_by_pytorch_load_into_the_same_ember_architecture(tmp_path):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                             torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 8), torch.nn.LayerNorm(8),
                             torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = rng.standard_normal((6, 2, 5, 5)).astype(np.float32)
    tm.train()
    for _ in range(3):  # non-trivial running statistics
        tm(torch.tensor(x))
    tm.eval()
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(tm.state_dict(), path)
    ember_model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                nn.Linear(4 * 5 * 5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    state = em.load_state_dict_from(path)
    assert set(state) == set(tm.state_dict())
    ember_model.load_state_dict(state)
    with torch.no_grad():
        expected = tm(torch.tensor(x)).numpy()
    np.testing.assert_allclose(_predict(ember_model, x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelFileError, match="not an ember-model-v1 file"):
        em.load(path)


# ---- nothing in a file is ever run ------------------------------------------------------------------

@pytest.fixture
def no_system(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    yield calls
    assert calls == []


def _model_file(path, config, arrays=None, **extra):
    meta = {"format": saving.MODEL_FORMAT, "config": config, "input_shape": None, **extra}
    path.write_bytes(saving._pack(arrays or {}, meta))  # with a valid checksum
    return path


def _layer_with(**kwargs):
    return {"class": "ember.layers.Dense", "args": [3], "kwargs": kwargs}


EVIL_CONFIGS = {
    "os.system-as-class": ({"class": "os.system", "args": ["touch pwned"], "kwargs": {}},
                           "class 'os.system', which is not defined in this process"),
    "builtins.eval-as-class": ({"class": "builtins.eval", "args": ["1"], "kwargs": {}}, "class 'builtins.eval'"),
    "unimported-class": ({"class": "evil.Payload", "args": [], "kwargs": {}}, "class 'evil.Payload'"),
    "unimported-class-nested": ({"class": "ember.training.model.Sequential",
                                 "args": [[{"__module__": {"class": "evil.Payload", "args": [], "kwargs": {}}}]],
                                 "kwargs": {}}, "class 'evil.Payload'"),
    "os-function": (_layer_with(activation={"__fn__": "os:system"}), "function 'os:system'"),
    "function-reached-through-an-import": (_layer_with(activation={"__fn__": "ember.saving:os.system"}),
                                           "function 'ember.saving:os.system'"),
    "ember-function-with-side-effects": (_layer_with(activation={"__fn__": "ember.saving:save"}),
                                         "function 'ember.saving:save'"),
    "imported-into-a-math-module": (_layer_with(activation={"__fn__": "ember.nn.functional:np.save"}),
                                    "function 'ember.nn.functional:np.save'"),
    "initializer-function": (_layer_with(kernel_initializer={"__fn__": "ember.demo:run"}), "function 'ember.demo:run'"),
    "unknown-entry": (_layer_with(activation={"__class__": "os.system"}), "unrecognised entry"),
}


@pytest.mark.parametrize("name", EVIL_CONFIGS)
def test_a_file_naming_code_that_is_not_an_imported_module_class_is_refused(name, tmp_path, no_system):
    config, match = EVIL_CONFIGS[name]
    path = _model_file(tmp_path / "evil.ember", config)
    modules_before = set(sys.modules)
    with pytest.raises(ModelFileError, match=match):
        em.load(path)
    assert set(sys.modules) == modules_before  # nothing was imported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ember"]  # nothing was written


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("loader", [em.load, em.load_state_dict_from,
                                    lambda p: em.load_checkpoint(p, nn.Linear(2, 2))])
def test_pickle_files_are_never_unpickled(loader, tmp_path, no_system):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weight": _Payload(str(marker))}))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        loader(path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "torch.pt")  # PyTorch's own (zip + pickle) format
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        loader(tmp_path / "torch.pt")
    assert not marker.exists()


# ---- damaged files ---------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = em.Sequential([L.Input((6,)), L.Dense(8, activation="relu"), L.Dense(3)])
    _train_a_little(model, X)
    path = tmp_path / "m.ember"
    model.save(path)
    return path, path.read_bytes()


def _header_len(data):
    return struct.unpack("<Q", data[:8])[0]


def _flip_weight_byte(data):
    i = 8 + _header_len(data) + 37
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def _edit_header(data, old, new):
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def _rewrite(data, edit_arrays=None, edit_meta=None):
    """A well-formed safetensors file with changed contents and the old checksum."""
    arrays = safetensors.numpy.load(data)
    meta = json.loads(data[8:8 + _header_len(data)])["__metadata__"]
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    return safetensors.numpy.save(arrays, metadata=meta)


def _scale_one_weight(arrays):
    arrays["1.weight"] = arrays["1.weight"] * np.float32(1.0001)


DAMAGE = {
    "one-flipped-weight-byte": (_flip_weight_byte, "do not match the checksum"),
    "truncated": (lambda d: d[:-17], "not a readable safetensors file"),
    "truncated-into-the-header": (lambda d: d[:40], "not a readable safetensors file"),
    "empty": (lambda d: b"", "not a readable safetensors file"),
    "header-not-json": (lambda d: d[:8] + b"}" + d[9:], "not a readable safetensors file"),
    "edited-activation": (lambda d: _edit_header(d, b'\\"relu\\"', b'\\"tanh\\"'), "do not match the checksum"),
    "edited-metadata-field": (lambda d: _rewrite(d, edit_meta=lambda m: m.update(ember_version="9.9.9")),
                     "do not match the checksum"),
    "changed-weights": (lambda d: _rewrite(d, edit_arrays=_scale_one_weight), "do not match the checksum"),
    "added-weight": (lambda d: _rewrite(d, edit_arrays=lambda a: a.update(extra=np.zeros(2, np.float32))),
                     "do not match the checksum"),
    "checksum-removed": (lambda d: _rewrite(d, edit_meta=lambda m: m.pop("sha256")), "checksum .* is missing"),
    "other-format": (lambda d: _rewrite(d, edit_meta=lambda m: m.update(format="ember-weights-v1")),
                     "not an ember-model-v1 file"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_damaged_files_give_a_clear_error(name, saved, tmp_path):
    path, data = saved
    damage, match = DAMAGE[name]
    bad = tmp_path / "bad.ember"
    bad.write_bytes(damage(data))
    with pytest.raises(ModelFileError, match=match):
        em.load(bad)
    assert em.load(path) is not None  # the undamaged file still loads


def test_missing_file_and_damaged_architecture_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        em.load(tmp_path / "nope.ember")
    path = tmp_path / "m.ember"
    path.write_bytes(saving._pack({}, {"format": saving.MODEL_FORMAT, "config": "{not json"}))
    with pytest.raises(ModelFileError, match="damaged architecture record"):
        em.load(path)


# ---- atomic writes ----------------------------------------------------------------------------------

class SimulatedCrash(Exception):
    pass


def _crash_on_replace(monkeypatch):
    def boom(*args, **kwargs):
        raise SimulatedCrash("power lost before the rename")
    monkeypatch.setattr(os, "replace", boom)


def _crash_mid_write(monkeypatch):
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise SimulatedCrash("disk full")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k)))


def _interrupt_at_fsync(monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupted)


CRASHES = {"rename": (_crash_on_replace, SimulatedCrash), "write": (_crash_mid_write, SimulatedCrash),
           "ctrl-c": (_interrupt_at_fsync, KeyboardInterrupt)}
WRITERS = {
    "save": lambda m, p: em.save(m, p),
    "save_weights": lambda m, p: m.save_weights(p),
    "save_checkpoint": lambda m, p: em.save_checkpoint(p, m, m.optimizer, epoch=1),
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("crash", CRASHES)
def test_a_crash_mid_save_leaves_the_previous_file_intact_and_no_temp_files(crash, writer, tmp_path, monkeypatch):
    model = Classifier(5)
    model.compile("adam", "cross_entropy")
    model.fit(X, Y, epochs=1, verbose=0)
    path = tmp_path / "model.file"
    WRITERS[writer](model, path)
    before = path.read_bytes()
    model.fit(X, Y, epochs=1, verbose=0)  # new weights to save
    patch, exc = CRASHES[crash]
    with monkeypatch.context() as mp:
        patch(mp)
        with pytest.raises(exc):
            WRITERS[writer](model, path)
    assert sorted(os.listdir(tmp_path)) == ["model.file"]
    assert path.read_bytes() == before
    WRITERS[writer](model, path)  # and a normal save afterwards replaces it
    assert path.read_bytes() != before and sorted(os.listdir(tmp_path)) == ["model.file"]


# ---- checkpoints ---------------------------------------------------------------------------------------

OPTIMIZERS = {
    "adam": lambda ps: em.optim.Adam(ps, lr=0.01),
    "sgd-momentum": lambda ps: em.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda ps: em.optim.RMSprop(ps, lr=0.01, centered=True),
    "adamw-amsgrad": lambda ps: em.optim.AdamW(ps, lr=0.01, amsgrad=True),
}


def _resumable(opt_name):
    model = em.Sequential([L.Input((6,)), L.Dense(16, activation="relu"), L.Dropout(0.3),
                           nn.BatchNorm1d(16), L.Dense(3)])
    model.build((None, 6))
    model.compile(OPTIMIZERS[opt_name](model.parameters()), "cross_entropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_training_resumes_bit_identically_from_a_checkpoint(opt_name, tmp_path):
    epochs, k = 5, 2
    kw = dict(batch_size=7, shuffle=True, verbose=0)
    em.manual_seed(11)
    straight = _resumable(opt_name)
    full = straight.fit(X, Y, epochs=epochs, **kw).history

    em.manual_seed(11)
    first = _resumable(opt_name)
    first.fit(X, Y, epochs=k, **kw)
    em.save_checkpoint(tmp_path / "ckpt", first, first.optimizer, epoch=k, best_loss=0.25)
    del first

    em.manual_seed(999)  # a fresh process would start from another random state
    em.rand(3)
    resumed = _resumable(opt_name)
    info = em.load_checkpoint(tmp_path / "ckpt", resumed, resumed.optimizer)
    assert info == {"epoch": k, "best_loss": 0.25}
    rest = resumed.fit(X, Y, epochs=epochs, initial_epoch=info["epoch"], **kw).history

    assert rest["loss"] == full["loss"][k:] and rest["accuracy"] == full["accuracy"][k:]
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name].data, value.data, err_msg=name)
    s_state, r_state = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert s_state["param_groups"] == r_state["param_groups"]
    for i, st in s_state["state"].items():
        for key, v in st.items():
            np.testing.assert_array_equal(np.asarray(getattr(v, "data", v)),
                                          np.asarray(getattr(r_state["state"][i][key], "data",
                                                             r_state["state"][i][key])), err_msg=f"{i}/{key}")


def test_checkpoint_without_optimizer_and_as_weights(tmp_path):
    model = _resumable("adam")
    model.fit(X, Y, epochs=1, verbose=0)
    em.save_checkpoint(tmp_path / "c", model, epoch=3)
    other = _resumable("adam")
    with pytest.raises(ModelFileError, match="holds no optimizer state"):
        em.load_checkpoint(tmp_path / "c", other, other.optimizer)
    assert em.load_checkpoint(tmp_path / "c", other) == {"epoch": 3}
    fresh = _resumable("adam")
    fresh.load_weights(tmp_path / "c")  # a checkpoint's weights load like a weights file
    np.testing.assert_array_equal(_predict(fresh, X), _predict(model, X))
    model.save_weights(tmp_path / "w")
    with pytest.raises(ModelFileError, match="not an ember-checkpoint-v1 file"):
        em.load_checkpoint(tmp_path / "w", other)


def test_a_fresh_process_loads_a_sequential_file_without_importing_anything_first(tmp_path):
    import subprocess

    model = em.Sequential([L.Dense(5, activation="relu"), L.Dense(3)])
    model.build((None, 6))
    path = model.save(tmp_path / "seq.ember")
    expected = model.predict(X)
    np.save(tmp_path / "x.npy", X)
    code = ("import sys, numpy as np, ember as em; m = em.load(sys.argv[1]); "
            "np.save(sys.argv[2], m.predict(np.load(sys.argv[3])))")
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
                   check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_saving_a_model_whose_layer_sizes_are_unknown_is_a_clear_error(tmp_path):
    model = em.Sequential([L.Dense(5), L.Dense(3)])
    with pytest.raises(ValueError, match=r"em.save: Sequential has layers whose sizes are not known yet.*build"):
        em.save(model, tmp_path / "unbuilt.ember")
    assert not (tmp_path / "unbuilt.ember").exists()
