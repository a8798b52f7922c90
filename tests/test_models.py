"""The reference language models learn real text: the char GPT and the LSTM reach a
validation loss clearly below the unigram entropy of the Python standard library's source
(the best loss a model without context can reach)."""

import numpy as np
import pytest

import ember as em
import ember.nn.functional as F
from ember.data import datasets
from ember.models import GPT, CharLSTM


@pytest.fixture(scope="module")
def corpus():
    vocab = datasets.CharVocab()
    ids = vocab.encode(datasets.python_stdlib_text(400_000))
    cut = int(len(ids) * 0.9)
    return vocab, datasets.CharDataset(ids[:cut], 32), datasets.CharDataset(ids[cut:], 32), \
        datasets.unigram_entropy(ids[:cut], len(vocab))


def _train(model, train, val, lr, steps=200, batch=16):
    rng = np.random.default_rng(0)
    opt = em.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        x, y = train.batch(rng.integers(0, len(train), batch))
        loss = F.cross_entropy(model(em.tensor(x)).reshape(-1, 96), em.tensor(y.reshape(-1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    vx, vy = val.batch(np.random.default_rng(1).integers(0, len(val), 128))
    with em.no_grad():
        return F.cross_entropy(model(em.tensor(vx)).reshape(-1, 96), em.tensor(vy.reshape(-1))).item()


def test_char_gpt_beats_unigram_entropy(corpus):
    vocab, train, val, entropy = corpus
    em.manual_seed(0)
    val_loss = _train(GPT(96, 32, 64, 4, 2), train, val, lr=3e-3)
    assert val_loss < 0.8 * entropy, (val_loss, entropy)


def test_char_lstm_beats_unigram_entropy(corpus):
    vocab, train, val, entropy = corpus
    em.manual_seed(0)
    val_loss = _train(CharLSTM(96, 32, 128), train, val, lr=1e-2)
    assert val_loss < 0.7 * entropy, (val_loss, entropy)


def test_gpt_generate_and_save_round_trip(tmp_path):
    em.manual_seed(0)
    model = GPT(96, 16, 32, 2, 1)
    out = model.generate(em.tensor([[1, 2, 3]]), 5)
    assert out.shape == (1, 8) and out.dtype == em.int64
    path = tmp_path / "gpt.ember"
    model.save(path)
    again = em.load(path)
    x = em.tensor(np.arange(12).reshape(2, 6) % 96)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
