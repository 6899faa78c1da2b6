"""``lwf``: learning without forgetting (Li & Hoiem 2017).

Before each task after the first, a frozen copy of the model is kept. While training the task,
the loss gets ``alpha ×`` a distillation term: on the current batch, the soft cross-entropy at
temperature ``temperature`` between the frozen model's and the model's outputs over the classes
of earlier tasks (the paper's ``λ_o · L_old`` with ``T = 2``). In task-incremental streams each
earlier task's head (its classes) is distilled separately and the terms are summed; in
class-incremental streams the classes of all earlier tasks form one group; in domain-incremental
streams, where every task shares the labels, it is all of them. The paper's warm-up step
(training the new head alone first) is left out: clbench's head is shared and already sized.

On generative tasks the outputs are next-token distributions over the vocabulary at each answer
token, and the term distils the whole vocabulary there (LwF for language models, as in the
O-LoRA and TRACE baselines: the frozen model's token distributions as soft targets).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from clbench import hookimpl
from clbench.params import require


def distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft cross-entropy ``−Σ softmax(old/T) · log_softmax(new/T)``, mean over the batch."""
    target = F.softmax(old_logits / temperature, dim=1)
    return -(target * F.log_softmax(new_logits / temperature, dim=1)).sum(1).mean()


class LwF:
    """Learning without forgetting.

    :param alpha: weight of the distillation term (λ_o in the paper).
    :param temperature: softmax temperature of the distillation (T in the paper).
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md).
    search_space = {"alpha": {"log-uniform": [0.1, 10.0]}, "temperature": {"choice": [1.0, 2.0, 4.0]}}

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        require(alpha >= 0 and math.isfinite(alpha), "alpha", "a number >= 0", alpha)
        require(temperature > 0 and math.isfinite(temperature), "temperature", "a positive number", temperature)
        self.alpha = alpha
        self.temperature = temperature
        self.old: torch.nn.Module | None = None
        self.groups: list[torch.Tensor] = []  # class indices distilled together

    @hookimpl
    def before_task(self, cell, task):
        if cell.task_index == 0:
            return
        self.old = copy.deepcopy(cell.model).eval().requires_grad_(False)
        if not cell.kind.class_logits:  # next-token logits at the answer tokens
            self.groups = [None]  # the whole vocabulary
            return
        earlier = cell.stream.tasks[: cell.task_index]
        device = cell.device
        if cell.stream.scenario == "task-incremental":
            self.groups = [torch.tensor(t.classes, device=device) for t in earlier]
        else:
            classes = sorted({c for t in earlier for c in t.classes})
            self.groups = [torch.tensor(classes, device=device)]

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if self.old is None or self.alpha == 0:
            return None
        with torch.no_grad():
            old = cell.logits(batch, self.old, masked=False)
        new = logits if cell.class_mask is None else cell.logits(batch, masked=False)
        total = sum(distillation(new if g is None else new[:, g], old if g is None else old[:, g], self.temperature)
                    for g in self.groups)
        return self.alpha * total


@hookimpl
def register_strategies(register):
    register("lwf", LwF, description="learning without forgetting: distil the previous model (Li & Hoiem 2017)")
