"""em.layers: every layer through lazy build, output shapes (what Keras gives, channels-first),
summary, a training step and a save/load round trip; then 'same' padding, pooling, attention
masks, recurrent options and Keras's default initialisers checked numerically."""

import math

import numpy as np
import pytest
import torch

import ember as em
import ember.nn as nn
from ember import layers as L
from ember.errors import OpError

rng = np.random.default_rng(0)


class SelfAttention(em.Model):
    """MultiHeadAttention takes (query, value): a subclassed Model applies it to one input."""

    def __init__(self, num_heads, key_dim, **kwargs):
        super().__init__()
        self.mha = L.MultiHeadAttention(num_heads, key_dim, **kwargs)

    def forward(self, x):
        return self.mha(x, x)


def _x(shape, dtype=np.float32):
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, shape)
    return rng.standard_normal(shape).astype(dtype)


# id -> (layer factory, input shape, output shape Keras would give (channels-first), parameter
# count worked out by hand, factory of layers to put before a layer without weights so that
# something upstream trains, input dtype)
CASES = {
    "Dense": (lambda: L.Dense(5), (4, 3), (4, 5), 3 * 5 + 5, None, np.float32),
    "Dense-3d": (lambda: L.Dense(5, activation="relu"), (2, 7, 3), (2, 7, 5), 20, None, np.float32),
    "Dense-no-bias": (lambda: L.Dense(5, use_bias=False), (4, 3), (4, 5), 15, None, np.float32),
    "Conv2D-valid": (lambda: L.Conv2D(6, 3), (2, 3, 9, 9), (2, 6, 7, 7), 6 * 3 * 9 + 6, None, np.float32),
    "Conv2D-same": (lambda: L.Conv2D(6, 3, padding="same"), (2, 3, 9, 9), (2, 6, 9, 9), 168, None, np.float32),
    # 'same' with stride 2: ceil(n / 2)
    "Conv2D-same-stride2-odd": (lambda: L.Conv2D(6, 3, strides=2, padding="same"), (2, 3, 9, 9), (2, 6, 5, 5),
                                168, None, np.float32),
    "Conv2D-same-stride2-even": (lambda: L.Conv2D(6, 3, strides=2, padding="same", activation="relu"),
                                 (2, 3, 8, 7), (2, 6, 4, 4), 168, None, np.float32),
    "Conv2D-rect": (lambda: L.Conv2D(4, (3, 5), strides=(2, 1), padding="same"), (1, 2, 10, 7), (1, 4, 5, 7),
                    4 * 2 * 15 + 4, None, np.float32),
    "Conv2D-dilated": (lambda: L.Conv2D(4, 3, dilation_rate=2), (1, 2, 9, 9), (1, 4, 5, 5), 76, None, np.float32),
    "MaxPooling2D": (lambda: L.MaxPooling2D(), (2, 3, 9, 9), (2, 3, 4, 4), 0, lambda: [L.Conv2D(3, 1)], np.float32),
    "MaxPooling2D-same": (lambda: L.MaxPooling2D(padding="same"), (2, 3, 9, 9), (2, 3, 5, 5), 0,
                          lambda: [L.Conv2D(3, 1)], np.float32),
    "MaxPooling2D-3-stride2-same": (lambda: L.MaxPooling2D(3, strides=2, padding="same"), (1, 2, 8, 8),
                                    (1, 2, 4, 4), 0, lambda: [L.Conv2D(2, 1)], np.float32),
    "AveragePooling2D": (lambda: L.AveragePooling2D(), (2, 3, 9, 9), (2, 3, 4, 4), 0, lambda: [L.Conv2D(3, 1)],
                         np.float32),
    "AveragePooling2D-same": (lambda: L.AveragePooling2D(padding="same"), (2, 3, 9, 9), (2, 3, 5, 5), 0,
                              lambda: [L.Conv2D(3, 1)], np.float32),
    "AveragePooling2D-3-stride1-same": (lambda: L.AveragePooling2D(3, strides=1, padding="same"), (1, 2, 6, 5),
                                        (1, 2, 6, 5), 0, lambda: [L.Conv2D(2, 1)], np.float32),
    "GlobalAveragePooling2D": (lambda: L.GlobalAveragePooling2D(), (2, 3, 5, 4), (2, 3), 0, lambda: [L.Conv2D(3, 1)],
                               np.float32),
    "GlobalAveragePooling2D-keepdims": (lambda: L.GlobalAveragePooling2D(keepdims=True), (2, 3, 5, 4),
                                        (2, 3, 1, 1), 0, lambda: [L.Conv2D(3, 1)], np.float32),
    "Flatten": (lambda: L.Flatten(), (2, 3, 4, 5), (2, 60), 0, lambda: [L.Conv2D(3, 1)], np.float32),
    "Dropout": (lambda: L.Dropout(0.5), (4, 6), (4, 6), 0, lambda: [L.Dense(6)], np.float32),
    "Activation": (lambda: L.Activation("tanh"), (4, 6), (4, 6), 0, lambda: [L.Dense(6)], np.float32),
    "BatchNormalization": (lambda: L.BatchNormalization(), (4, 3), (4, 3), 6, None, np.float32),
    "BatchNormalization-images": (lambda: L.BatchNormalization(), (4, 3, 5, 5), (4, 3, 5, 5), 6, None,
                                  np.float32),
    "LayerNormalization": (lambda: L.LayerNormalization(), (4, 6), (4, 6), 12, None, np.float32),
    "Embedding": (lambda: L.Embedding(10, 4), (2, 7), (2, 7, 4), 40, None, np.int64),
    # PyTorch's layout has two bias vectors: 4 * (5 * 3 + 5 * 5 + 5 + 5)
    "LSTM": (lambda: L.LSTM(5), (2, 7, 3), (2, 5), 200, None, np.float32),
    "LSTM-sequences": (lambda: L.LSTM(5, return_sequences=True), (2, 7, 3), (2, 7, 5), 200, None, np.float32),
    # the same count as Keras's GRU (reset_after=True): 3 * (5 * 3 + 5 * 5) + 2 * 3 * 5
    "GRU": (lambda: L.GRU(5), (2, 7, 3), (2, 5), 150, None, np.float32),
    "GRU-sequences": (lambda: L.GRU(5, return_sequences=True), (2, 7, 3), (2, 7, 5), 150, None, np.float32),
    # q, k, v: 6 -> 2 heads x 4, output 8 -> 6: 3 * (6 * 8 + 8) + 8 * 6 + 6
    "MultiHeadAttention": (lambda: SelfAttention(2, 4), (2, 5, 6), (2, 5, 6), 222, None, np.float32),
    "MultiHeadAttention-output_shape": (lambda: SelfAttention(2, 3, value_dim=5, output_shape=7), (2, 5, 6),
                                        (2, 5, 7), 2 * (6 * 6 + 6) + (6 * 10 + 10) + 10 * 7 + 7, None,
                                        np.float32),
}
IDS = list(CASES)


def _case(name):
    make, shape, out, params, pre, dtype = CASES[name]
    return make, shape, out, params, pre() if pre else [], dtype


def _inner(layer):
    return layer.mha if isinstance(layer, SelfAttention) else layer


@pytest.mark.parametrize("name", IDS)
def test_output_shape_and_lazy_build(name):
    make, shape, out_shape, params, _, dtype = _case(name)
    layer = make()
    inner = _inner(layer)
    lazy = params and not isinstance(inner, L.Embedding)  # Embedding's sizes are its arguments
    if lazy:
        assert inner.built is False
        assert list(layer.parameters()) == []
    out = layer(em.tensor(_x(shape, dtype)))
    assert out.shape == out_shape
    assert inner.built is True
    assert sum(p.numel() for p in layer.parameters()) == params
    # a second call with another batch size reuses the weights
    weights = [p for p in layer.parameters()]
    assert layer(em.tensor(_x((3,) + shape[1:], dtype))).shape == (3,) + out_shape[1:]
    assert [p for p in layer.parameters()] == weights


@pytest.mark.parametrize("name", IDS)
def test_summary_row(name):
    make, shape, out_shape, params, _, dtype = _case(name)
    layer = make()
    model = em.Sequential([L.Input(shape[1:], dtype=np.dtype(dtype).name), layer])
    text = model.summary(print_fn=lambda s: None)
    row = next(line for line in text.splitlines() if f"({type(layer).__name__})" in line)
    assert "(" + ", ".join(["None"] + [str(d) for d in out_shape[1:]]) + ")" in row
    assert row.rstrip().endswith(f"{params:,}")
    assert f"Total params: {params:,}" in text


@pytest.mark.parametrize("name", IDS)
def test_one_fit_step_trains_and_save_load_round_trip(name, tmp_path):
    """The layer's weights (or, for a layer without weights, those before it, through which
    the gradient must flow) change in one step; the saved model predicts the same after load."""
    make, shape, out_shape, params, pre, dtype = _case(name)
    layer = make()
    model = em.Sequential([L.Input(shape[1:], dtype=np.dtype(dtype).name), *pre, layer, L.Flatten(), L.Dense(1)])
    model.compile("sgd", "mse")
    watched = layer if params else pre[0]
    before = [p.data.copy() for p in watched.parameters()]
    x, y = _x(shape, dtype), rng.standard_normal(shape[0]).astype(np.float32)
    model.fit(x, y, epochs=1, batch_size=shape[0], verbose=0)
    after = [p.data for p in watched.parameters()]
    assert before and all(not np.array_equal(a, b) for a, b in zip(before, after))

    expected = model.predict(x)
    model.save(tmp_path / "m.ember")
    loaded = em.load(tmp_path / "m.ember")
    assert type(loaded[2 + len(pre) - 1]) is type(layer)
    np.testing.assert_array_equal(loaded.predict(x), expected)
    assert loaded.state_dict().keys() == model.state_dict().keys()


# ---- 'same' padding and pooling, numerically --------------------------------------------------

def _tf_same_pads(n, k, s, d=1):
    """TensorFlow's documented rule: out = ceil(n / s), total padding split with the extra cell
    at the end."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("hw,k,s,d", [((9, 9), 3, 2, 1), ((8, 7), 3, 2, 1), ((8, 8), 4, 2, 1),
                                      ((7, 10), (2, 5), (1, 3), 1), ((9, 9), 3, 1, 2)])
def test_conv2d_same_padding_matches_explicit_tf_padding(hw, k, s, d):
    k2, s2 = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s
    x = _x((2, 3) + hw)
    layer = L.Conv2D(4, k, strides=s, padding="same", dilation_rate=d)
    out = layer(em.tensor(x)).detach().numpy()
    assert out.shape[2:] == tuple(math.ceil(n / st) for n, st in zip(hw, s2))
    (t, b), (lf, r) = (_tf_same_pads(n, kk, st, d) for n, kk, st in zip(hw, k2, s2))
    tx = torch.nn.functional.pad(torch.tensor(x), (lf, r, t, b))
    ref = torch.nn.functional.conv2d(tx, torch.tensor(layer.weight.data), torch.tensor(layer.bias.data),
                                     stride=s2, dilation=d)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-5)


def _pool_reference(x, k, s, padding, op):
    """Keras pooling by its definition: windows of the input (cells outside it ignored)."""
    n, c, h, w = x.shape
    if padding == "same":
        (pt, _), (pl, _) = _tf_same_pads(h, k, s), _tf_same_pads(w, k, s)
        oh, ow = math.ceil(h / s), math.ceil(w / s)
    else:
        pt = pl = 0
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - pt, j * s - pl
            win = x[:, :, max(r0, 0):r0 + k, max(c0, 0):c0 + k]
            out[:, :, i, j] = op(win, axis=(2, 3))
    return out


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("k,s,hw", [(2, 2, (9, 9)), (3, 2, (8, 7)), (3, 1, (5, 6)), (2, 1, (4, 4))])
@pytest.mark.parametrize("cls,op", [(L.MaxPooling2D, np.max), (L.AveragePooling2D, np.mean)])
def test_pooling_matches_its_definition(cls, op, k, s, hw, padding):
    x = _x((2, 3) + hw) - 2.0  # negative values: padding must not win a max
    out = cls(k, strides=s, padding=padding)(em.tensor(x)).detach().numpy()
    np.testing.assert_allclose(out, _pool_reference(x, k, s, padding, op), rtol=1e-6, atol=1e-6)


def test_global_average_pooling_and_flatten_values():
    x = _x((2, 3, 4, 5))
    np.testing.assert_allclose(L.GlobalAveragePooling2D()(em.tensor(x)).detach().numpy(), x.mean((2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(L.Flatten()(em.tensor(x)).detach().numpy(), x.reshape(2, -1))


# ---- attention and recurrent options --------------------------------------------------------------

def test_multi_head_attention_masks():
    q, v = em.tensor(_x((2, 4, 6))), em.tensor(_x((2, 7, 6)))
    mha = L.MultiHeadAttention(2, 3)
    out, scores = mha(q, v, return_attention_scores=True)
    assert out.shape == (2, 4, 6) and scores.shape == (2, 2, 4, 7)
    np.testing.assert_allclose(scores.detach().numpy().sum(-1), 1.0, rtol=1e-5)
    # a mask allowing the first 3 value positions == attending to value[:, :3] alone
    mask = np.zeros((2, 4, 7), bool)
    mask[:, :, :3] = True
    masked = mha(q, v, attention_mask=em.tensor(mask)).detach().numpy()
    np.testing.assert_allclose(masked, mha(q, v[:, :3]).detach().numpy(), rtol=1e-5, atol=1e-6)
    # causal self-attention: position t sees only positions <= t
    x = em.tensor(_x((2, 5, 6)))
    causal = mha(x, x, use_causal_mask=True).detach().numpy()
    for t in range(1, 6):
        prefix = x[:, :t]
        np.testing.assert_allclose(causal[:, :t], mha(prefix, prefix, use_causal_mask=True).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(causal[:, 0], mha(x[:, :1], x[:, :1]).detach().numpy()[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,torch_cls,n_states", [(L.LSTM, torch.nn.LSTM, 2), (L.GRU, torch.nn.GRU, 1)])
def test_recurrent_options_match_torch_with_the_same_weights(cls, torch_cls, n_states):
    x = _x((3, 6, 4))
    layer = cls(5, return_sequences=True, return_state=True)
    seq, *states = layer(em.tensor(x))
    assert seq.shape == (3, 6, 5) and len(states) == n_states and all(s.shape == (3, 5) for s in states)
    ref = torch_cls(4, 5, batch_first=True)
    ref.load_state_dict({k: torch.tensor(v.data) for k, v in layer.state_dict().items()})
    t_seq, t_state = ref(torch.tensor(x))
    t_states = t_state if isinstance(t_state, tuple) else (t_state,)
    np.testing.assert_allclose(seq.detach().numpy(), t_seq.detach().detach().numpy(), rtol=2e-4, atol=1e-5)
    for s, ts in zip(states, t_states):
        np.testing.assert_allclose(s.detach().numpy(), ts[0].detach().detach().numpy(), rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(states[0].detach().numpy(), seq.detach().numpy()[:, -1], rtol=1e-6)  # h == last output
    # initial_state, Keras style: a list of (batch, units) tensors
    init = [_x((3, 5)) for _ in range(n_states)]
    seq2, *_ = layer(em.tensor(x), initial_state=[em.tensor(s) for s in init])
    hx = tuple(torch.tensor(s)[None] for s in init)
    t_seq2, _ = ref(torch.tensor(x), hx if n_states == 2 else hx[0])
    np.testing.assert_allclose(seq2.detach().numpy(), t_seq2.detach().detach().numpy(), rtol=2e-4, atol=1e-5)
    # go_backwards reads the sequence from the end
    back = cls(5, go_backwards=True)
    last = back(em.tensor(x))
    fwd = cls(5)
    fwd(em.tensor(x))
    fwd.load_state_dict(back.state_dict())
    np.testing.assert_allclose(last.detach().numpy(), fwd(em.tensor(x[:, ::-1].copy())).detach().numpy(), rtol=1e-6)


# ---- Keras's default initialisers ---------------------------------------------------------------------

def _glorot_bound(fan_in, fan_out):
    return math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("make,shape,fans", [
    (lambda: L.Dense(300), (2, 200), (200, 300)),
    (lambda: L.Conv2D(64, 3), (1, 32, 5, 5), (32 * 9, 64 * 9)),
])
def test_kernels_are_glorot_uniform_and_biases_zero(make, shape, fans):
    layer = make()
    layer(em.zeros(*shape))
    w = layer.weight.data
    bound = _glorot_bound(*fans)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # uses the whole range, not a narrower one
    np.testing.assert_allclose(w.var(), bound ** 2 / 3, rtol=0.05)  # variance of U(-b, b)
    assert abs(w.mean()) < 0.01 * bound
    assert not layer.bias.data.any()


@pytest.mark.parametrize("cls,gates", [(L.LSTM, 4), (L.GRU, 3)])
def test_recurrent_initialisers(cls, gates):
    units, features = 16, 40
    layer = cls(units)
    layer(em.zeros(1, 2, features))
    w_ih, w_hh = layer.weight_ih_l0.data, layer.weight_hh_l0.data
    bound = _glorot_bound(features, gates * units)  # Keras's kernel is (features, gates * units)
    assert np.abs(w_ih).max() <= bound and np.abs(w_ih).max() > 0.95 * bound
    # Keras's recurrent kernel (units, gates * units) is orthogonal as a whole
    np.testing.assert_allclose(w_hh.T @ w_hh, np.eye(units), atol=1e-5)
    bias = layer.bias_ih_l0.data + layer.bias_hh_l0.data
    expected = np.zeros(gates * units)
    if cls is L.LSTM:  # unit_forget_bias: gates are ordered (input, forget, cell, output)
        expected[units:2 * units] = 1.0
    np.testing.assert_array_equal(bias, expected)


def test_other_defaults_follow_keras():
    emb = L.Embedding(1000, 8)  # RandomUniform(-0.05, 0.05)
    assert np.abs(emb.weight.data).max() <= 0.05 and np.abs(emb.weight.data).max() > 0.049
    bn = L.BatchNormalization()
    bn(em.zeros(2, 3))
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)  # Keras momentum 0.99
    ln = L.LayerNormalization()
    ln(em.zeros(2, 3))
    assert ln.eps == 1e-3
    he = L.Dense(200, kernel_initializer="he_normal")
    he(em.zeros(1, 500))
    np.testing.assert_allclose(he.weight.data.std(), math.sqrt(2 / 500), rtol=0.05)


# ---- building, names and errors ------------------------------------------------------------------

@pytest.mark.parametrize("layer,module,call_shape,names", [
    (L.Dense(3), nn.Linear, (2, 4), ["weight", "bias"]),
    (L.Conv2D(3, 2), nn.Conv2d, (2, 1, 4, 4), ["weight", "bias"]),
    (L.BatchNormalization(), nn.BatchNorm1d, (2, 3), ["weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked"]),
    (L.LayerNormalization(), nn.LayerNorm, (2, 3), ["weight", "bias"]),
    (L.Embedding(5, 2), nn.Embedding, None, ["weight"]),
    (L.LSTM(2), nn.LSTM, (1, 3, 4), ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]),
    (L.GRU(2), nn.GRU, (1, 3, 4), ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]),
    (L.Dropout(0.1), nn.Dropout, None, []),
    (L.Flatten(), nn.Flatten, None, []),
])
def test_layers_are_the_nn_modules_with_pytorch_state_dict_names(layer, module, call_shape, names):
    if call_shape:
        layer(em.zeros(*call_shape))
    assert isinstance(layer, module)
    assert list(layer.state_dict()) == names


def test_input_layer_builds_the_model_and_checks_shapes():
    model = em.Sequential([L.Input((3,)), L.Dense(4)])
    assert model.built is False  # built at compile/summary/fit time, from the Input's shape
    model.summary(print_fn=lambda s: None)
    assert model.built and model[1].weight.shape == (4, 3)
    with pytest.raises(OpError, match=r"Input\(shape=\(3,\)\): got a batch of shape \(2, 5\), expected \(batch, 3\)"):
        model(em.zeros(2, 5))


def test_layer_names_are_unique_and_user_names_kept():
    a, b, c = L.Dense(1), L.Dense(1), L.Dense(1, name="head")
    assert a.name != b.name and a.name.startswith("dense") and b.name.startswith("dense")
    assert c.name == "head"
    assert L.Conv2D(1, 1).name.startswith("conv2d") and L.MaxPooling2D().name.startswith("max_pooling2d")


@pytest.mark.parametrize("fn,exc,match", [
    (lambda: L.Dense(3, activation="relux"), ValueError, r"unknown activation 'relux'.*'relu'"),
    (lambda: L.Conv2D(3, 3, padding="full"), ValueError, "padding must be 'valid' or 'same'"),
    (lambda: L.MaxPooling2D(padding="full"), ValueError, "padding must be 'valid' or 'same'"),
    (lambda: L.Conv2D(3, 3, name="c")(em.zeros(2, 8, 8)), OpError, r"c \(Conv2D\): expects channels-first"),
    (lambda: L.LSTM(3, name="r")(em.zeros(2, 8)), OpError, r"r \(LSTM\): expects \(batch, time, features\)"),
    (lambda: L.BatchNormalization(axis=2), ValueError, "channels-first"),
    (lambda: L.Dense(3, kernel_initializer="glorot"), ValueError, "unknown initializer 'glorot'"),
    (lambda: L.LSTM(3, recurrent_initializer="orth"), ValueError, "unknown initializer 'orth'"),
])
def test_clear_errors(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_dense_on_a_shape_it_was_not_built_for_names_the_sizes():
    layer = L.Dense(4)
    layer(em.zeros(2, 3))
    assert isinstance(layer, nn.Linear) and layer.in_features == 3
    with pytest.raises(em.ShapeError, match=r"in_features=3.*input has shape \(2, 5\), expected the last dim to be 3"):
        layer(em.zeros(2, 5))
