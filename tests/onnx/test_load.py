"""em.onnx.load: ONNX files (ember's own and PyTorch's) run with ember ops, trainable."""

import numpy as np
import pytest
import torch

import ember as em
import ember.nn as nn
import ember.nn.functional as F
from ember.models import GPT, CharLSTM


@pytest.mark.parametrize("make,sample", [
    (lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)), lambda b: em.randn(b, 20)),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(4 * 14 * 14, 10)), lambda b: em.randn(b, 1, 28, 28)),
    (lambda: CharLSTM(96, 16, 32), lambda b: em.randint(0, 96, (b, 12))),
    (lambda: GPT(96, 16, 32, 4, 1), lambda b: em.randint(0, 96, (b, 16))),
])
def test_ember_export_then_load_round_trip(make, sample, tmp_path):
    em.manual_seed(0)
    model = make().eval()
    path = em.onnx.export(model, sample(2), tmp_path / "m.onnx")
    loaded = em.onnx.load(path)
    for b in (1, 5):
        x = sample(b)
        with em.no_grad():
            np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def _torch_export(module, example, path):
    torch.onnx.export(module.eval(), (example,), str(path), input_names=["input"], dynamo=False)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "transformer"])
def test_models_exported_by_pytorch(name, tmp_path):
    torch.manual_seed(0)
    if name == "mlp":
        module, x = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)), \
            torch.randn(4, 8)
    elif name == "cnn":
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8),
                                     torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 5))
        x = torch.randn(2, 3, 8, 8)
    elif name == "lstm":
        module, x = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True, bidirectional=True), torch.randn(3, 4, 5)
    else:
        module = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True,
                                                                              dropout=0.0), 2,
                                             enable_nested_tensor=False)
        x = torch.randn(2, 6, 16)
    path = tmp_path / f"{name}.onnx"
    _torch_export(module, x, path)
    loaded = em.onnx.load(path)
    with torch.no_grad():
        want = module(x)
    want = want[0] if isinstance(want, tuple) else want
    with em.no_grad():
        got = loaded(em.tensor(x.numpy()))
    got = got[0] if isinstance(got, tuple) else got
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_imported_model_fine_tunes_and_jits(tmp_path):
    em.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).eval()
    loaded = em.onnx.load(em.onnx.export(model, em.randn(3, 6), tmp_path / "m.onnx"))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    x = em.randn(32, 6)
    y = (x[:, 0] > 0).long()  # a learnable rule
    loaded.train()
    opt = em.optim.Adam(loaded.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(loaded(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    jitted = em.jit(loaded)
    with em.no_grad():
        np.testing.assert_allclose(jitted(x).numpy(), loaded(x).numpy(), rtol=1e-5, atol=1e-6)


def test_unsupported_operator_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("DFT", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "dft.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(em.onnx.UnsupportedOp, match="DFT"):
        em.onnx.load(path)
