"""Neural-network building blocks: ``functional`` (stateless ops) and modules."""

from . import functional  # noqa: F401
