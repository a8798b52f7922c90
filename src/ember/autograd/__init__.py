"""Autograd: the graph engine (``engine``) and functional transforms (``functional``)."""

from .engine import Node, enable_grad, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401
from .functional import grad, value_and_grad  # noqa: F401
