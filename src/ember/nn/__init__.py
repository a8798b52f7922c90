"""Neural-network building blocks: modules (PyTorch names, signatures, state-dict layout),
``functional`` (stateless ops), ``init`` and ``utils``."""

from . import functional, init, parallel, utils  # noqa: F401
from .module import Module, Parameter  # noqa: F401
from .modules import *  # noqa: F401,F403
