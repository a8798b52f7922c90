"""PyTorch eager (``torch``) and ``torch.compile`` (``torch-compile``).

The models are ``torchlike.build_model(torch, ...)``, the same lines as ember's runs. Eager
training is the textbook loop with the default optimizer implementation; ``torch-compile``
compiles the model with ``torch.compile(model)`` (default mode, inductor's C++ backend on CPU:
forward and backward through AOTAutograd) and the optimizer step with ``torch.compile(opt.step)``
(PyTorch's recipe for compiled optimizers). Inference runs under ``torch.inference_mode()``.
Threads: ``torch.set_num_threads(N)``, ``torch.set_num_interop_threads(1)``.
"""

from __future__ import annotations

from importlib import metadata

from . import torchlike


def available(options) -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed (pip install torch==2.13.0)"
    return True, ""


def versions() -> dict:
    return {"torch": metadata.version("torch")}


def setup(options, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


class Runner:
    def __init__(self, s, data, options):
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.spec = s
        self.model = torchlike.build_model(torch, s)
        self.data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
        compiled = bool(options.get("compile"))
        forward = torch.compile(self.model) if compiled else self.model
        if s["kind"] == "infer":
            self.model.eval()
            self.forward = forward
            self.method = ("torch.compile(model) under torch.inference_mode()" if compiled
                           else "model(x) under torch.inference_mode()")
            return
        opt = self.opt = torchlike.make_optimizer(torch, s, self.model.parameters())
        opt_step = torch.compile(opt.step) if compiled else opt.step

        def train_step(x, y):
            opt.zero_grad()
            loss = torchlike.loss_fn(torch, forward(x), y)
            loss.backward()
            opt_step()
            return loss.detach()

        self.train_step = train_step
        self.method = ("torch.compile(model) + torch.compile(opt.step), eager loss.backward()" if compiled
                       else "eager loop: zero_grad, forward, loss.backward(), opt.step()")

    def step(self, i):
        x, y = self.data[i % len(self.data)]
        if self.spec["kind"] == "infer":
            with self.torch.inference_mode():
                return self.forward(x)
        return self.train_step(x, y)

    def value(self, h):
        return float(h.sum()) if self.spec["kind"] == "infer" else float(h)

    def sync(self, h):
        pass

    def params(self):
        return [p.detach().numpy().copy() for p in self.model.parameters()]

    def extra(self):
        return {}


def build(s, data, options):
    return Runner(s, data, options)
