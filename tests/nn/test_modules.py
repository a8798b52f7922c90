"""Every layer against PyTorch's: same state-dict names and shapes; with PyTorch's weights
loaded, the same outputs, input gradients and parameter gradients.

Tolerances: float32, rtol 1e-4 / atol 1e-5 (recurrent and attention layers 2e-4 / 1e-5,
their long chains of float32 ops round differently)."""

import copy

import numpy as np
import pytest
import torch

import ember as em
import ember.nn as nn

torch.manual_seed(0)


def _np(t):
    return t.detach().numpy()


def _outputs(out):
    """Flatten a layer's output (tensor, tuple of tensors, nested (h, c)) to a list."""
    if out is None:
        return []
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in _outputs(x)]
    return [out]


def parity(make_em, make_torch, inputs, train=False, rtol=1e-4, atol=1e-5, call=None):
    tl = make_torch()
    el = make_em()
    tkeys = {k: tuple(v.shape) for k, v in tl.state_dict().items()}
    ekeys = {k: v.shape for k, v in el.state_dict().items()}
    assert ekeys == tkeys, f"state dict differs:\n ember {ekeys}\n torch {tkeys}"
    el.load_state_dict({k: v.numpy() for k, v in tl.state_dict().items()})
    tl.train(train)
    el.train(train)
    t_in = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    e_in = [em.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    call = call or (lambda layer, xs: layer(*xs))
    t_out = _outputs(call(tl, t_in))
    e_out = _outputs(call(el, e_in))
    assert len(t_out) == len(e_out)
    rng = np.random.default_rng(1)
    t_loss, e_loss = 0, 0
    for a, b in zip(e_out, t_out):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(_np(a), _np(b), rtol=rtol, atol=atol)
        if b.requires_grad:
            w = rng.standard_normal(tuple(b.shape)).astype(np.float32)
            t_loss = t_loss + (b * torch.tensor(w)).sum()
            e_loss = e_loss + (a * em.tensor(w)).sum()
    t_loss.backward()
    e_loss.backward()
    for a, b in zip(e_in, t_in):
        if b.grad is not None:
            np.testing.assert_allclose(_np(a.grad), b.grad.numpy(), rtol=rtol, atol=atol)
    tp = dict(tl.named_parameters())
    for name, p in el.named_parameters():
        g = tp[name].grad
        if g is None:
            assert p.grad is None or not np.any(p.grad.numpy()), name
            continue
        np.testing.assert_allclose(_np(p.grad), g.numpy(), rtol=rtol, atol=atol, err_msg=name)
    if train:  # running statistics and other buffers
        tb = dict(tl.named_buffers())
        for name, b in el.named_buffers():
            np.testing.assert_allclose(_np(b), tb[name].numpy(), rtol=rtol, atol=atol, err_msg=name)
    return el, tl


def x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


LAYERS = {
    "Linear": (lambda m: m.Linear(5, 3), [x(4, 5)]),
    "Linear-3d-nobias": (lambda m: m.Linear(5, 3, bias=False), [x(2, 4, 5)]),
    "Bilinear": (lambda m: m.Bilinear(3, 4, 2), [x(5, 3), x(5, 4, seed=1)]),
    "Conv1d": (lambda m: m.Conv1d(3, 4, 3, stride=2, padding=1), [x(2, 3, 9)]),
    "Conv1d-same": (lambda m: m.Conv1d(3, 4, 4, padding="same", dilation=2), [x(2, 3, 9)]),
    "Conv2d": (lambda m: m.Conv2d(3, 6, 3, padding=1, groups=3), [x(2, 3, 7, 6)]),
    "Conv2d-reflect": (lambda m: m.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), [x(2, 2, 5, 5)]),
    "Conv2d-stride": (lambda m: m.Conv2d(2, 4, (3, 2), stride=(2, 1), dilation=(1, 2)), [x(2, 2, 8, 7)]),
    "ConvTranspose2d": (lambda m: m.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
                        [x(2, 4, 5, 5)]),
    "MaxPool2d": (lambda m: m.MaxPool2d(2), [x(2, 3, 6, 6)]),
    "MaxPool2d-pad": (lambda m: m.MaxPool2d(3, 2, padding=1, ceil_mode=True), [x(2, 3, 7, 6)]),
    "AvgPool2d": (lambda m: m.AvgPool2d(3, 2, padding=1, count_include_pad=False), [x(2, 3, 7, 6)]),
    "AdaptiveAvgPool2d": (lambda m: m.AdaptiveAvgPool2d((3, 2)), [x(2, 3, 7, 5)]),
    "BatchNorm1d": (lambda m: m.BatchNorm1d(4), [x(6, 4)]),
    "BatchNorm1d-3d": (lambda m: m.BatchNorm1d(4, momentum=None), [x(6, 4, 3)]),
    "BatchNorm2d": (lambda m: m.BatchNorm2d(3), [x(4, 3, 5, 5)]),
    "LayerNorm": (lambda m: m.LayerNorm((4, 5)), [x(3, 4, 5)]),
    "GroupNorm": (lambda m: m.GroupNorm(2, 4), [x(3, 4, 5)]),
    "Embedding": (lambda m: m.Embedding(10, 4, padding_idx=0), [np.array([[1, 0, 3], [9, 3, 3]])]),
    "Flatten": (lambda m: m.Flatten(), [x(2, 3, 4)]),
    "Identity": (lambda m: m.Identity(), [x(2, 3)]),
    "RNN": (lambda m: m.RNN(3, 5, num_layers=2), [x(7, 2, 3)]),
    "RNN-relu-bi": (lambda m: m.RNN(3, 5, nonlinearity="relu", bidirectional=True, batch_first=True),
                    [x(2, 7, 3)]),
    "LSTM": (lambda m: m.LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True), [x(2, 6, 3)]),
    "LSTM-unbatched": (lambda m: m.LSTM(3, 4), [x(6, 3)]),
    "GRU": (lambda m: m.GRU(3, 5, num_layers=2, bidirectional=True), [x(6, 2, 3)]),
    "LSTMCell": (lambda m: m.LSTMCell(3, 5), [x(2, 3)]),
    "GRUCell": (lambda m: m.GRUCell(3, 5), [x(2, 3)]),
    "RNNCell": (lambda m: m.RNNCell(3, 5), [x(2, 3)]),
    "MultiheadAttention": (lambda m: m.MultiheadAttention(8, 2),
                           [x(5, 2, 8), x(6, 2, 8, seed=1), x(6, 2, 8, seed=2)]),
    "MultiheadAttention-kvdim": (lambda m: m.MultiheadAttention(8, 4, kdim=6, vdim=3, batch_first=True),
                                [x(2, 5, 8), x(2, 6, 6, seed=1), x(2, 6, 3, seed=2)]),
    "TransformerEncoderLayer": (lambda m: m.TransformerEncoderLayer(8, 2, 16, batch_first=True),
                                [x(2, 5, 8)]),
    "TransformerEncoderLayer-prenorm-gelu": (
        lambda m: m.TransformerEncoderLayer(8, 2, 16, activation="gelu", norm_first=True), [x(5, 2, 8)]),
    "TransformerEncoder": (lambda m: m.TransformerEncoder(m.TransformerEncoderLayer(8, 2, 16), 2,
                                                          norm=m.LayerNorm(8)), [x(5, 2, 8)]),
}
ACTIVATIONS = ["ReLU", "Sigmoid", "Tanh", "SiLU", "Mish", "ReLU6", "SELU", "Hardswish", "Hardsigmoid",
               "LogSigmoid", "Softsign", "LeakyReLU", "ELU", "GELU", "Softplus", "Hardtanh"]
for _a in ACTIVATIONS:
    LAYERS[_a] = (lambda m, a=_a: getattr(m, a)(), [x(3, 4)])
LAYERS["Softmax"] = (lambda m: m.Softmax(dim=1), [x(3, 4)])
LAYERS["LogSoftmax"] = (lambda m: m.LogSoftmax(dim=0), [x(3, 4)])
LAYERS["GELU-tanh"] = (lambda m: m.GELU(approximate="tanh"), [x(3, 4)])


# eval mode for every layer; train mode where it changes the computation (batch statistics)
CASES = [(n, False) for n in LAYERS] + [(n, True) for n in LAYERS if "BatchNorm" in n]


@pytest.mark.parametrize("name,train", CASES)
def test_layer_matches_torch(name, train):
    make, inputs = LAYERS[name]
    loose = any(k in name for k in ("RNN", "LSTM", "GRU", "Attention", "Transformer"))
    parity(lambda: make(nn), lambda: make(torch.nn), inputs, train=train,
           rtol=2e-4 if loose else 1e-4)


def test_mha_masks_and_weights_match_torch():
    tl = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    el = nn.MultiheadAttention(8, 2, batch_first=True)
    el.load_state_dict({k: v.numpy() for k, v in tl.state_dict().items()})
    q = x(2, 5, 8)
    kpm = np.array([[False] * 5, [False, False, False, True, True]])
    causal = np.triu(np.ones((5, 5), dtype=bool), 1)
    float_mask = x(5, 5, seed=3)
    for mask in [causal, float_mask]:
        for avg in [True, False]:
            to, tw = tl(*(torch.tensor(q),) * 3, key_padding_mask=torch.tensor(kpm),
                        attn_mask=torch.tensor(mask), average_attn_weights=avg)
            eo, ew = el(*(em.tensor(q),) * 3, key_padding_mask=em.tensor(kpm), attn_mask=em.tensor(mask),
                        average_attn_weights=avg)
            np.testing.assert_allclose(_np(eo), _np(to), rtol=2e-4, atol=1e-5)
            np.testing.assert_allclose(_np(ew), _np(tw), rtol=2e-4, atol=1e-5)


def test_transformer_encoder_padding_mask_matches_torch():
    layer = lambda m: m.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    kpm = np.array([[False] * 5, [False, False, True, True, True]])
    parity(lambda: nn.TransformerEncoder(layer(nn), 2), lambda: torch.nn.TransformerEncoder(
        layer(torch.nn), 2, enable_nested_tensor=False), [x(2, 5, 8)],
        call=lambda m, xs: m(xs[0], src_key_padding_mask=(em.tensor(kpm) if isinstance(m, nn.Module)
                                                          else torch.tensor(kpm))), rtol=2e-4)


def test_lstm_initial_state_matches_torch():
    h0, c0 = x(2, 3, 4, seed=5), x(2, 3, 4, seed=6)
    parity(lambda: nn.LSTM(2, 4, num_layers=2, batch_first=True),
           lambda: torch.nn.LSTM(2, 4, num_layers=2, batch_first=True), [x(3, 5, 2), h0, c0],
           call=lambda m, xs: m(xs[0], (xs[1], xs[2])), rtol=2e-4)


def _init_stats(layer):
    return {k: (float(v.std()), float(abs(v).max()), v.numel()) for k, v in layer.state_dict().items()
            if v.numel() > 50}


@pytest.mark.parametrize("make", [
    lambda m: m.Linear(300, 200), lambda m: m.Conv2d(16, 32, 3), lambda m: m.ConvTranspose2d(16, 8, 3),
    lambda m: m.Embedding(100, 50), lambda m: m.LSTM(40, 60), lambda m: m.GRU(40, 60),
    lambda m: m.MultiheadAttention(64, 4), lambda m: m.BatchNorm2d(64), lambda m: m.LayerNorm(64),
])
def test_default_init_matches_torch_distribution(make):
    """Same initialisation distributions: bounds and standard deviations agree with PyTorch's
    defaults within sampling error (5 standard errors of the difference of two sample stds, at
    least 5%); seeded, so the comparison is deterministic."""
    em.manual_seed(0)
    torch.manual_seed(0)
    e, t = _init_stats(make(nn)), {k: (float(v.std()), float(v.abs().max()))
                                   for k, v in make(torch.nn).state_dict().items() if v.numel() > 50}
    assert e.keys() == t.keys()
    for k in e:
        n = e[k][2]
        np.testing.assert_allclose(e[k][0], t[k][0], rtol=max(0.05, 5 / np.sqrt(n)), atol=1e-7, err_msg=k)
        if t[k][1] < 2 * t[k][0]:  # bounded (uniform) init: the bound must match too
            np.testing.assert_allclose(e[k][1], t[k][1], rtol=0.05, atol=1e-7, err_msg=k)


def test_module_api():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.head = nn.Linear(8, 2)
            self.register_buffer("scale", em.ones(2))
            self.register_buffer("cache", em.zeros(3), persistent=False)
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.named = nn.ModuleDict({"a": nn.Linear(2, 2)})
            self.plain = em.zeros(2)  # a plain tensor attribute is not registered

        def forward(self, x):
            return self.head(self.body(x)) * self.scale

    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["body.0.weight", "body.0.bias", "head.weight", "head.bias", "blocks.0.weight",
                     "blocks.0.bias", "blocks.1.weight", "blocks.1.bias", "named.a.weight", "named.a.bias"]
    assert list(net.state_dict())[-1] == "named.a.bias" and "scale" in net.state_dict()
    assert "cache" not in net.state_dict() and "plain" not in net.state_dict()
    assert [n for n, _ in net.named_children()] == ["body", "head", "blocks", "named"]
    assert len(list(net.modules())) == 10  # Net, Sequential, Linear, ReLU, 2 containers, 4 Linear
    assert net.num_parameters() == sum(p.numel() for p in net.parameters())
    net.eval()
    assert not net.body[0].training
    net.train()
    assert net.blocks[1].training
    out = net(em.randn(3, 4))
    out.sum().backward()
    assert all(p.grad is not None for p in net.head.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen.count("Linear") == 5
    net.to(em.float64)
    assert net.head.weight.dtype == em.float64 and net.scale.dtype == em.float64
    assert "Linear(in_features=4, out_features=8, bias=True)" in repr(net)
    with pytest.raises(KeyError, match="missing keys"):
        net.load_state_dict({"head.weight": np.zeros((2, 8))})
    res = net.load_state_dict({"head.weight": np.zeros((2, 8))}, strict=False)
    assert "head.bias" in res.missing_keys and np.all(net.head.weight.detach().numpy() == 0)
    with pytest.raises(em.ShapeError, match="head.weight"):
        net.load_state_dict({"head.weight": np.zeros((3, 8))}, strict=False)


def test_load_state_dict_copies_values_in_place():
    lin = nn.Linear(3, 2)
    w = lin.weight
    lin.load_state_dict({"weight": np.ones((2, 3), np.float32), "bias": np.zeros(2, np.float32)})
    assert lin.weight is w and np.all(w.detach().numpy() == 1)


def test_deepcopy_and_forward_hooks():
    lin = nn.Linear(3, 2)
    twin = copy.deepcopy(lin)
    assert twin.weight is not lin.weight
    np.testing.assert_array_equal(twin.weight.detach().numpy(), lin.weight.detach().numpy())
    shapes = []
    handle = lin.register_forward_hook(lambda m, inp, out: shapes.append(out.shape))
    lin(em.randn(4, 3))
    handle.remove()
    lin(em.randn(4, 3))
    assert shapes == [(4, 2)]


def test_layer_errors_name_the_layer():
    with pytest.raises(em.ShapeError, match=r"Linear\(in_features=5.*\(4, 3\)"):
        nn.Linear(5, 2)(em.randn(4, 3))
    with pytest.raises(em.ShapeError, match=r"Conv2d\(3, 4\).*2 channels"):
        nn.Conv2d(3, 4, 3)(em.randn(1, 2, 5, 5))
    with pytest.raises(em.ShapeError, match="BatchNorm2d"):
        nn.BatchNorm2d(3)(em.randn(2, 3, 4))


def test_dropout_module_train_and_eval():
    d = nn.Dropout(0.5)
    x_ = em.ones(1000)
    y = d(x_)
    zeros = float((y.numpy() == 0).mean())
    assert 0.4 < zeros < 0.6 and set(np.unique(y.numpy())) <= {0.0, 2.0}
    d.eval()
    np.testing.assert_array_equal(d(x_).numpy(), x_.numpy())  # identity in eval
