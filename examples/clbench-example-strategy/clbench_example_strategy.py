"""``l2-anchor``: an example clbench strategy, in its own package.

Before each task it remembers the model's weights; while training on the task it adds
``strength · Σ (θ − θ_prev)²`` to the loss, a pull towards the weights the previous task left
(the "L2" baseline of Kirkpatrick et al. 2017: EWC with every Fisher weight set to 1).
"""

import torch

from clbench import hookimpl
from clbench.params import require


class L2Anchor:
    """Pull the weights towards those of the previous task (an L2 penalty)."""

    def __init__(self, strength: float = 1.0):
        require(strength >= 0, "strength", ">= 0", strength)  # else a one-line UserError
        self.strength = strength
        self.anchor: dict[str, torch.Tensor] = {}

    @hookimpl
    def before_task(self, cell, task):
        if cell.task_index > 0:  # the first task has nothing to remember
            self.anchor = {n: p.detach().clone() for n, p in cell.model.named_parameters()}

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if not self.anchor or not self.strength:
            return None
        params = dict(cell.model.named_parameters())
        return self.strength * sum(((params[n] - a) ** 2).sum() for n, a in self.anchor.items())


@hookimpl
def register_strategies(register):
    register("l2-anchor", L2Anchor)
