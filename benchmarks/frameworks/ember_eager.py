"""ember eager (``ember-eager``) and ember compiled with ``em.jit`` (``ember-jit``).

The models are ``torchlike.build_model(ember, ...)``: the same lines as the PyTorch runs. Eager:
``opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()``. jit: that
same step function wrapped in ``em.jit`` (the whole step, optimizer included, is one compiled
graph); inference: ``em.jit(model)`` under ``em.no_grad()``. NumPy's BLAS threads come from
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` (set by the runner before the process starts),
numba's from ``NUMBA_NUM_THREADS``.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np

from . import torchlike


def available(options) -> tuple[bool, str]:
    try:
        import ember
    except ImportError as exc:  # pragma: no cover - ember is the project itself
        return False, f"ember not importable: {exc}"
    if options.get("jit") and not hasattr(ember, "jit"):
        return False, "not implemented (ember has no em.jit)"
    return True, ""


def versions() -> dict:
    return {"ember": metadata.version("ember"), "numpy": np.__version__, "numba": _version("numba")}


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def setup(options, threads: int) -> None:
    """Threads are set through the environment before NumPy is imported (see run.py)."""


class Runner:
    def __init__(self, s, data, options):
        import ember as em

        self.em = em
        em.manual_seed(0)
        self.spec = s
        self.model = torchlike.build_model(em, s)
        self.data = [(em.tensor(x), em.tensor(y)) for x, y in data]
        self.jit = bool(options.get("jit"))
        if s["kind"] == "infer":
            self.model.eval()
            self.forward = em.jit(self.model) if self.jit else self.model
            self.method = "em.jit(model) under em.no_grad()" if self.jit else "model(x) under em.no_grad()"
            return
        self.opt = torchlike.make_optimizer(em, s, self.model.parameters())
        model, opt = self.model, self.opt

        def train_step(x, y):
            opt.zero_grad()
            loss = torchlike.loss_fn(em, model(x), y)
            loss.backward()
            opt.step()
            return loss

        self.train_step = em.jit(train_step) if self.jit else train_step
        self.method = ("em.jit(train_step): forward, backward and optimizer step in one graph" if self.jit
                       else "eager loop: zero_grad, forward, loss.backward(), opt.step()")

    def step(self, i):
        x, y = self.data[i % len(self.data)]
        if self.spec["kind"] == "infer":
            with self.em.no_grad():
                return self.forward(x)
        return self.train_step(x, y).detach()

    def value(self, h):
        return float(h.numpy().sum()) if self.spec["kind"] == "infer" else float(h.item())

    def sync(self, h):
        pass

    def params(self):
        return [np.array(p.data, copy=True) for p in self.model.parameters()]

    def extra(self):
        if self.jit and self.spec["kind"] == "train":
            return {"traces": self.train_step.traces, "compile_seconds": self.train_step.compile_seconds}
        if self.jit:
            return {"traces": self.forward.forward.traces, "compile_seconds": self.forward.forward.compile_seconds}
        return {}


def build(s, data, options):
    return Runner(s, data, options)
