"""em.quantize.dynamic: which layers it swaps, copies vs in place, em.jit, and its errors."""

import numpy as np
import pytest

import ember as em
from ember import layers, nn
from ember.quantize import QuantizationError, QuantizedConv2d, QuantizedLinear


class Net(em.Model):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.heads = nn.ModuleList([nn.Linear(64, 10), nn.Linear(64, 2)])
        self.norm = nn.LayerNorm(64)

    def forward(self, x):
        h = self.norm(self.features(x).flatten(1))
        return self.heads[0](h) + self.heads[1](h).sum(-1, keepdim=True)


def _x(n=3):
    return em.tensor(np.random.default_rng(0).standard_normal((n, 1, 6, 6)).astype(np.float32))


def test_swaps_every_quantizable_layer_and_keeps_the_original():
    model = Net()
    q = em.quantize.dynamic(model)
    kinds = {name: type(m).__name__ for name, m in q.named_modules()}
    assert kinds["features.0"] == kinds["features.2"] == "QuantizedConv2d"
    assert kinds["heads.0"] == kinds["heads.1"] == "QuantizedLinear" and kinds["norm"] == "LayerNorm"
    assert type(model.features[0]) is nn.Conv2d and model.training  # the original is untouched
    assert not q.training
    with em.no_grad():
        ref = model(_x()).numpy()
    out = q(_x()).numpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    assert not q(_x()).requires_grad


def test_inplace_and_module_selection():
    model = Net()
    same = em.quantize.dynamic(model, inplace=True)
    assert same is model and type(model.heads[0]) is QuantizedLinear
    only_linear = em.quantize.dynamic(Net(), modules={nn.Linear})
    assert type(only_linear.features[0]) is nn.Conv2d and type(only_linear.heads[1]) is QuantizedLinear
    by_name = em.quantize.dynamic(Net(), modules={"features", "heads.1"})
    assert type(by_name.features[2]) is QuantizedConv2d and type(by_name.heads[0]) is nn.Linear
    assert type(by_name.heads[1]) is QuantizedLinear


def test_user_subclasses_of_linear_are_left_alone():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(4, 4), nn.Linear(4, 2))
    q = em.quantize.dynamic(model)
    assert type(q[0]) is Scaled and type(q[1]) is QuantizedLinear


def test_runs_under_jit_with_dynamic_batch():
    q = em.quantize.dynamic(Net())
    fast = em.jit(q)
    for n in (1, 5):
        np.testing.assert_array_equal(fast(_x(n)).numpy(), q(_x(n)).numpy())


def test_errors():
    with pytest.raises(QuantizationError, match=r"nothing to quantize in Sequential: it has no .*Linear"):
        em.quantize.dynamic(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    q = em.quantize.dynamic(Net())
    with pytest.raises(QuantizationError, match=r"already quantized \(4 quantized layers\)"):
        em.quantize.dynamic(q)
    with pytest.raises(TypeError, match="expects an nn.Module"):
        em.quantize.dynamic(lambda x: x)
    with pytest.raises(QuantizationError, match="got a single Linear layer.*QuantizedLinear.from_float"):
        em.quantize.dynamic(nn.Linear(2, 2))
    with pytest.raises(QuantizationError, match="no submodule named 'body'"):
        em.quantize.dynamic(Net(), modules={"body"})
    with pytest.raises(QuantizationError, match="submodule 'norm' \\(LayerNorm\\) holds no quantizable layer"):
        em.quantize.dynamic(Net(), modules={"norm"})
    with pytest.raises(QuantizationError, match="LSTM layers cannot be quantized"):
        em.quantize.dynamic(Net(), modules={nn.LSTM})
    unbuilt = em.Sequential([layers.Dense(4), layers.Dense(2)])
    with pytest.raises(QuantizationError, match="has not been built yet.*model.build"):
        em.quantize.dynamic(unbuilt)


def test_non_float_layers_are_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[1].weight.data = model[1].weight.data.astype(np.int32)  # an integer layer
    with pytest.raises(QuantizationError, match="Linear layer 'Linear' has int32 weights; only floating point"):
        em.quantize.dynamic(model, inplace=True)
    assert type(model[0]) is nn.Linear  # inplace=True did not half-convert the model
