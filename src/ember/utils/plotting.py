"""Training curves: ``plot_history`` draws a ``History``'s loss and metrics per epoch with
matplotlib (imported when called; the ``plot`` extra)."""

from __future__ import annotations

import io
import math

_COLORS = {"train": "#1f77b4", "validation": "#ff7f0e"}


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install 'ember[plot]'  (or pip install "
                          "matplotlib)") from None
    return Figure, FigureCanvasAgg


def _series(history):
    """(epochs, {name: values}) from a History, or a dict like ``History.history``."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(f"plot_history: expected a History (what fit returns) or a dict of per-epoch values, "
                        f"got {type(history).__name__}")
    if not logs or not any(len(v) for v in logs.values()):
        raise ValueError("plot_history: the history is empty; train for at least one epoch first")
    epochs = list(getattr(history, "epoch", None) or [])
    n = max(len(v) for v in logs.values())
    if len(epochs) != n:
        epochs = list(range(n))
    return [e + 1 for e in epochs], logs  # Keras prints epochs from 1


def plot_history(history, path=None, metrics=None, figsize=None, dpi=100):
    """Draw each metric's curve per epoch, training and validation (``val_<name>``) in one panel.

    Args:
        history: the ``History`` returned by ``fit`` (or its ``.history`` dict).
        path: where to write the PNG (atomically); None only returns the figure.
        metrics: names to draw, e.g. ``["loss", "accuracy"]``; default: every training log.
        figsize: inches (width, height); default 5 x 3.6 per panel, up to 3 panels a row.

    Returns the matplotlib ``Figure``.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    epochs, logs = _series(history)
    if metrics is None:
        metrics = [k for k in logs if not k.startswith("val_")] or [k[4:] for k in logs]
    elif isinstance(metrics, str):
        metrics = [metrics]
    missing = [m for m in metrics if m not in logs and "val_" + m not in logs]
    if missing:
        raise KeyError(f"plot_history: no values logged for {missing}; the history has {sorted(logs)}")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=figsize or (5 * cols, 3.6 * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for k, name in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        for label, key in (("train", name), ("validation", "val_" + name)):
            values = logs.get(key)
            if values:
                ax.plot(epochs[:len(values)], values, marker="o", markersize=3, label=label, color=_COLORS[label])
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
        ax.legend()
    if path is not None:
        from ..saving import atomic_write_bytes

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write_bytes(path, buffer.getvalue())
    return fig
