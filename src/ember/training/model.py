"""``em.Model``: an ``nn.Module`` with Keras's ``compile``/``fit``/``evaluate``/``predict``/
``summary``/``save``; ``em.Sequential`` is a Model made of a list of layers."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..autograd.engine import no_grad
from ..tensor import Tensor
from . import trainer


class Model(nn.Module):
    """Subclass it, write ``forward``, and get Keras-style training for free."""

    def __init__(self, *args, name=None, **kwargs):
        if args or kwargs:
            raise TypeError("em.Model(...) takes only name=; subclass em.Model and write forward(), or "
                            "use em.Sequential([...]) (Keras's functional Model(inputs, outputs) is not "
                            "supported)")
        super().__init__()
        object.__setattr__(self, "name", name or type(self).__name__)
        object.__setattr__(self, "_built_input_shape", None)
        object.__setattr__(self, "_built_input_dtype", None)
        object.__setattr__(self, "compiled", None)
        object.__setattr__(self, "stop_training", False)

    def __call__(self, *args, **kwargs):
        if self._built_input_shape is None and args and isinstance(args[0], Tensor):
            object.__setattr__(self, "_built_input_shape", [None] + list(args[0].shape[1:]))
            object.__setattr__(self, "_built_input_dtype", args[0].dtype.name)
        return super().__call__(*args, **kwargs)

    # ---- building -------------------------------------------------------------------------
    def build(self, input_shape, dtype=None):
        """Create lazily-sized weights by running one sample of ``input_shape`` (the batch dim
        may be None) through the model in eval mode."""
        shape = tuple(1 if d is None else int(d) for d in input_shape)
        dtype = dtype or self._built_input_dtype or "float32"
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                self(Tensor._make(np.zeros(shape, dtype=dtype)))
        finally:
            self.train(was_training)
        object.__setattr__(self, "_built_input_shape", [None] + list(shape[1:]))
        return self

    @property
    def built(self):
        return self._built_input_shape is not None and not self._unbuilt_layers()

    def _unbuilt_layers(self):
        return [m for m in self.modules() if not isinstance(m, Model) and getattr(m, "built", True) is False]

    def _ensure_built(self):
        """Build lazily-sized layers if the input shape is known (from an Input layer or a call)."""
        if self._unbuilt_layers() and self._built_input_shape is not None:
            self.build(self._built_input_shape)

    def load_state_dict(self, state_dict, strict=True):
        self._ensure_built()
        if strict and self._unbuilt_layers():
            raise ValueError(f"load_state_dict: {self.name} has layers whose sizes are not known yet, so "
                             "they have no weights to load into; call model.build(input_shape) or run a "
                             "batch through the model first")
        return super().load_state_dict(state_dict, strict)

    # ---- Keras API (implemented in trainer.py) --------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, loss_weights=None, jit_compile=False):
        """Choose the optimizer (a name like "adam" or an ember Optimizer), the loss (a Keras name,
        "cross_entropy", a Loss/nn loss module or callable(y_true, y_pred)) and metrics."""
        trainer.compile(self, optimizer, loss, metrics, jit_compile)
        return self

    def fit(self, x=None, y=None, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, callbacks=None, verbose=1, initial_epoch=0, steps_per_epoch=None, resume_from=None,
            distributed=False):
        """Train; returns a ``History`` whose ``.history`` maps each log name to per-epoch values.

        ``x`` may be arrays/tensors (with ``y``), or a DataLoader/iterable of (x, y) batches.
        ``resume_from=dir`` is ``callbacks=[..., em.callbacks.BackupAndRestore(dir)]``: back up
        every epoch to ``dir`` and, if a backup is there, continue from it.
        ``distributed=True`` (under ``mpirun``) trains data-parallel: each rank takes its shard of
        array data, gradients and epoch logs are averaged over ranks, and only rank 0 prints and
        writes checkpoints (see docs/distributed.md).
        """
        return trainer.fit(self, x, y, epochs, batch_size, validation_data, validation_split, shuffle,
                           callbacks, verbose, initial_epoch, steps_per_epoch, resume_from, distributed)

    def evaluate(self, x=None, y=None, batch_size=32, verbose=0, return_dict=True):
        """Loss and metrics over the data, e.g. ``{"loss": 0.12, "accuracy": 0.97}``."""
        return trainer.evaluate(self, x, y, batch_size, verbose, return_dict)

    def predict(self, x, batch_size=32, verbose=0):
        """Model outputs for ``x`` as a NumPy array (eval mode, no gradients)."""
        return trainer.predict(self, x, batch_size, verbose)

    def train_step(self, x, y):
        """One optimisation step on a batch; returns (loss tensor, predictions). Override for
        custom training logic, as in Keras."""
        return trainer.default_train_step(self, x, y)

    def test_step(self, x, y):
        return trainer.default_test_step(self, x, y)

    def summary(self, input_shape=None, print_fn=print):
        """Print layers, output shapes and parameter counts (Keras's table)."""
        from .summary import summary

        return summary(self, input_shape, print_fn)

    # ---- files ------------------------------------------------------------------------------
    def save(self, path):
        from .. import saving

        self._ensure_built()
        return saving.save(self, path)

    def save_weights(self, path):
        from .. import saving

        return saving.save_weights(self, path)

    def load_weights(self, path, strict=True):
        from .. import saving

        return saving.load_weights(self, path, strict)

    def get_config(self):
        from .. import saving

        return saving.get_config(self)


class Sequential(Model):
    """Layers applied in order: ``em.Sequential([em.layers.Dense(64, activation="relu"), ...])``."""

    def __init__(self, layers=None, name=None):
        super().__init__(name=name or "sequential")
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Sequential.add: expected a layer (nn.Module), got {type(layer).__name__}")
        self.add_module(str(len(self._modules)), layer)
        from ..layers import Input

        if isinstance(layer, Input) and len(self._modules) == 1:
            object.__setattr__(self, "_built_input_shape", [None, *layer.shape])
            object.__setattr__(self, "_built_input_dtype", layer.dtype)

    def pop(self):
        last = list(self._modules)[-1]
        del self._modules[last]
        object.__delattr__(self, last)

    @property
    def layers(self):
        return list(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self._modules)
