"""``gdumb``: greedy sampler and dumb learner (Prabhu, Torr & Dokania 2020).

A class-balanced memory is the only thing carried from task to task: each task's training data
is offered to it, and the model is then trained **from scratch** (re-initialised to the cell's
seeded initial weights) on the memory alone, through the ``train_data`` hook. The paper trains
once, when it is asked to predict; clbench evaluates after every task, so GDumb retrains after
every task. Its sampler is greedy (a new example of an under-represented class evicts one of
the largest class, other examples are dropped); clbench's class-balanced policy is the same rule
with a within-class reservoir instead of dropping, so each class holds a uniform sample of its
examples rather than the first ones offered.

``repeat`` presents the memory several times per epoch: the memory is small and the model starts
from scratch, so it needs more passes than a sequential learner makes over one task.
"""

from __future__ import annotations

import torch

from clbench import hookimpl
from clbench.params import require

from clbench.tasks import Examples

from .buffer import Buffer, Policy, shuffled


class GDumb:
    """GDumb.

    :param memory_size: examples the memory holds.
    :param repeat: passes over the memory per epoch of the training config.
    :param policy: ``"class-balanced"`` (the paper's) or ``"reservoir"``.
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md): passes over the memory, not its size.
    search_space = {"repeat": {"int": [1, 8]}}

    def __init__(self, memory_size: int = 200, repeat: int = 4, policy: Policy = "class-balanced"):
        require(repeat > 0, "repeat", "a positive integer", repeat)
        self.memory = Buffer(memory_size, policy, name="gdumb")
        self.repeat = repeat
        self.initial: dict[str, torch.Tensor] | None = None

    @hookimpl
    def before_task(self, cell, task):
        if self.initial is None:  # the first task: the model is still at its seeded initialisation
            self.initial = {k: v.detach().clone() for k, v in cell.model.state_dict().items()}
        cell.model.load_state_dict(self.initial)

    @hookimpl
    def train_data(self, cell, task):
        self.memory.add(shuffled(task.train, cell.rng), cell.rng)
        self.memory.report(cell)
        return Examples.cat([self.memory.data] * self.repeat)


@hookimpl
def register_strategies(register):
    register("gdumb", GDumb, description="GDumb: retrain from scratch on a class-balanced memory (Prabhu et al. 2020)")
