"""em.utils.plot_history: the figure's curves hold the History's values, and the PNG decodes to
the figure's size with both curves' colours drawn in every panel."""

import sys

import numpy as np
import pytest
from PIL import Image

import ember as em
from ember.training.callbacks import History
from ember.utils import plot_history

LOGS = {"loss": [1.2, 0.8, 0.5, 0.4], "accuracy": [0.5, 0.7, 0.8, 0.85],
        "val_loss": [1.3, 1.0, 0.7, 0.65], "val_accuracy": [0.45, 0.6, 0.75, 0.8]}
TRAIN_RGB, VAL_RGB = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


def history_():
    h = History()
    h.on_train_begin()
    for epoch in range(4):
        h.on_epoch_end(epoch, {k: v[epoch] for k, v in LOGS.items()})
    return h


def colour_pixels(img, rgb, tol=40):
    return np.all(np.abs(img[..., :3].astype(int) - rgb) < tol, axis=-1)


def test_curves_hold_the_history_and_the_png_shows_them(tmp_path):
    path = tmp_path / "plots" / "history.png"
    fig = plot_history(history_(), path)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy"]
    for ax, name in zip(axes, ("loss", "accuracy")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == ["train", "validation"]
        np.testing.assert_array_equal(lines["train"].get_xdata(), [1, 2, 3, 4])  # epochs from 1
        np.testing.assert_array_equal(lines["train"].get_ydata(), LOGS[name])
        np.testing.assert_array_equal(lines["validation"].get_ydata(), LOGS["val_" + name])
        assert ax.get_xlabel() == "epoch"
    img = np.asarray(Image.open(path).convert("RGB"))
    width, height = fig.get_size_inches() * fig.dpi
    assert img.shape == (round(height), round(width), 3) == (360, 1000, 3)
    assert img.std() > 10  # not blank
    for half in (img[:, :500], img[:, 500:]):  # each panel draws both curves
        assert colour_pixels(half, TRAIN_RGB).sum() > 200
        assert colour_pixels(half, VAL_RGB).sum() > 200


def test_selected_metrics_and_training_only_history(tmp_path):
    fig = plot_history({"loss": [3.0, 2.0], "accuracy": [0.1, 0.2]}, tmp_path / "a.png", metrics="loss")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["train"]
    assert Image.open(tmp_path / "a.png").size == (500, 360)


def test_history_plot_after_fit(tmp_path):
    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    m = em.Sequential([em.nn.Linear(3, 2)])
    m.compile("adam", "cross_entropy", metrics=["accuracy"])
    h = m.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
    fig = h.plot(tmp_path / "fit.png")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    np.testing.assert_array_equal(fig.axes[0].get_lines()[1].get_ydata(), h.history["val_loss"])
    assert Image.open(tmp_path / "fit.png").format == "PNG"


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(KeyError, match=r"no values logged for \['f1'\]; the history has \['accuracy', 'loss'"):
        plot_history(history_(), tmp_path / "x.png", metrics=["loss", "f1"])
    with pytest.raises(ValueError, match="the history is empty"):
        plot_history(History(), tmp_path / "x.png")
    with pytest.raises(TypeError, match="expected a History"):
        plot_history([1, 2], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'ember\[plot\]'"):
        plot_history(history_(), tmp_path / "x.png")
