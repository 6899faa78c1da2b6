"""``si``: synaptic intelligence (Zenke, Poole & Ganguli 2017).

While a task trains, each parameter accumulates its contribution to the drop of the loss along
the training path, ``ω_i += −g_i · Δθ_i`` per step (``g`` is the gradient of the training loss
without SI's own penalty, as in the paper's code; ``Δθ`` the step the optimizer took). At the
end of the task the importance grows by ``Ω_i += ω_i / (Δ_i² + xi)`` with ``Δ_i`` the parameter's
total change over the task, and later tasks pay ``c · Σ_i Ω_i (θ_i − θ̃_i)²`` for moving away from
``θ̃``, the parameters at the end of the previous task.
"""

from __future__ import annotations

import math

import torch

from clbench import hookimpl
from clbench.params import require

from .ewc import quadratic_penalty


class SI:
    """Synaptic intelligence.

    :param c: strength of the penalty.
    :param xi: damping ξ of the importance (keeps it finite for parameters that did not move).
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md).
    search_space = {"c": {"log-uniform": [0.01, 100.0]}}

    def __init__(self, c: float = 10.0, xi: float = 1e-3):
        require(c >= 0 and math.isfinite(c), "c", "a number >= 0", c)
        require(xi > 0 and math.isfinite(xi), "xi", "a positive number", xi)
        self.c = c
        self.xi = xi
        self.omega: dict[str, torch.Tensor] = {}  # Ω, the consolidated importance
        self.anchor: dict[str, torch.Tensor] = {}  # θ̃
        self.w: dict[str, torch.Tensor] = {}  # ω, this task's path integral
        self.start: dict[str, torch.Tensor] = {}  # θ at the start of this task
        self.prev: dict[str, torch.Tensor] = {}  # θ before the current step
        self.grad: dict[str, torch.Tensor] = {}

    def _params(self, cell):
        return {n: p for n, p in cell.model.named_parameters() if p.requires_grad}

    @hookimpl
    def before_task(self, cell, task):
        params = self._params(cell)
        self.start = {n: p.detach().clone() for n, p in params.items()}
        self.prev = {n: p.detach().clone() for n, p in params.items()}
        self.w = {n: torch.zeros_like(p) for n, p in params.items()}

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if not self.omega or self.c == 0:
            return None
        return self.c * quadratic_penalty(cell.model, self.omega, self.anchor)

    @hookimpl
    def after_backward(self, cell, batch):
        self.grad = {}
        for n, p in self._params(cell).items():
            if p.grad is None or n not in self.w:
                continue
            g = p.grad.detach().clone()
            if n in self.omega and self.c:  # leave out d/dθ of c·Ω(θ − θ̃)²
                g -= 2 * self.c * self.omega[n] * (p.detach() - self.anchor[n])
            self.grad[n] = g

    @hookimpl
    def after_step(self, cell, step, loss):
        for n, p in self._params(cell).items():
            if n in self.grad:
                now = p.detach()
                self.w[n] -= self.grad[n] * (now - self.prev[n])
                self.prev[n] = now.clone()

    @hookimpl
    def after_task(self, cell, task):
        for n, p in self._params(cell).items():
            if n not in self.w:
                continue
            delta = p.detach() - self.start[n]
            gain = self.w[n] / (delta**2 + self.xi)
            self.omega[n] = self.omega[n] + gain if n in self.omega else gain
            self.anchor[n] = p.detach().clone()


@hookimpl
def register_strategies(register):
    register("si", SI, description="synaptic intelligence: path-integral importance (Zenke et al. 2017)")
