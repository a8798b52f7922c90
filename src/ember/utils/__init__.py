"""Training utilities: ``SummaryWriter`` (TensorBoard event files, PyTorch's API) and
``plot_history`` (loss/metric curves to a PNG).

Their heavy dependencies (tensorboardX, matplotlib) are imported only when a writer is created
or a plot is drawn, so ``import ember`` stays fast.
"""

from .plotting import plot_history  # noqa: F401
from .tensorboard import SummaryWriter, graph_def  # noqa: F401

__all__ = ["SummaryWriter", "graph_def", "plot_history"]
