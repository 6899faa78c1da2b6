"""``agem``: averaged gradient episodic memory (Chaudhry et al. 2019, "Efficient Lifelong
Learning with A-GEM").

An episodic memory of earlier tasks' examples is filled after each task. At every step, after
``backward()``, the gradient ``g`` of the batch is compared with the gradient ``g_ref`` of the
loss on ``sample_size`` examples drawn from the memory; when they conflict (``g·g_ref < 0``), ``g``
is replaced by its projection ``g − (g·g_ref / g_ref·g_ref) g_ref``, whose dot product with
``g_ref`` is zero: the step does not increase the memory loss, to first order.
"""

from __future__ import annotations

import torch

from clbench import hookimpl
from clbench.params import require

from .buffer import Buffer, Policy, shuffled


def project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection of the flat gradient ``g`` against the memory gradient ``g_ref``:
    ``g`` itself when ``g·g_ref >= 0``, else ``g − (g·g_ref / g_ref·g_ref) g_ref``."""
    dot = torch.dot(g, g_ref)
    return g - (dot.clamp(max=0) / torch.dot(g_ref, g_ref).clamp_min(1e-12)) * g_ref


class AGEM:
    """A-GEM.

    :param memory_size: examples of earlier tasks the episodic memory holds.
    :param sample_size: memory examples per reference gradient (256 in the paper).
    :param policy: which examples the memory keeps: ``"reservoir"`` or ``"class-balanced"``.
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md): the reference sample, not the memory.
    search_space = {"sample_size": {"log-int": [32, 512]}}

    def __init__(self, memory_size: int = 200, sample_size: int = 256, policy: Policy = "reservoir"):
        require(sample_size > 0, "sample_size", "a positive integer", sample_size)
        self.memory = Buffer(memory_size, policy, name="agem")
        self.sample_size = sample_size

    @hookimpl
    def after_backward(self, cell, batch):
        if not len(self.memory):
            return
        params = [p for group in cell.optimizer.param_groups for p in group["params"] if p.grad is not None]
        g = torch.cat([p.grad.reshape(-1) for p in params])
        mem, _ = self.memory.sample(self.sample_size, cell.generator)
        grads = torch.autograd.grad(cell.loss(mem), params, allow_unused=True)
        g_ref = torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1) for gr, p in zip(grads, params)])
        new = project(g, g_ref)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(new[offset : offset + n].view_as(p))
            offset += n

    @hookimpl
    def after_task(self, cell, task):
        self.memory.add(shuffled(task.train, cell.rng), cell.rng)
        self.memory.report(cell)


@hookimpl
def register_strategies(register):
    register("agem", AGEM, description="A-GEM: project gradients that would raise the memory loss (Chaudhry et al. 2019)")
