"""Keras-style training: ``Model``/``Sequential`` (compile, fit, evaluate, predict, summary),
losses, metrics and callbacks."""

from . import callbacks, losses, metrics  # noqa: F401
from .model import Model, Sequential  # noqa: F401
