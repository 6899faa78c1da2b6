"""``der`` and ``der++``: dark experience replay (Buzzega et al. 2020).

A reservoir memory keeps training examples together with the logits the model gave them when
they were seen. Every step adds ``alpha ×`` the mean squared error between the model's logits on
a memory sample and the stored logits (DER); DER++ adds ``beta ×`` the cross-entropy of a second,
independent memory sample with its labels. Each sample has ``round(ratio × batch size)``
examples (the paper draws as many as the batch has). The batch is offered to the memory after
the terms are computed, with its logits from this step's forward pass.

In task-incremental streams the stored logits are masked to the example's task (the other
entries are −inf) and the matching runs over the finite entries only. DER serves classification
streams only (``serves``): on a generative stream an example's logits are the whole vocabulary at
every answer token (vocabulary × answer tokens floats per example to store).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clbench import hookimpl
from clbench.params import require

from .buffer import Buffer, Policy


class DER:
    """Dark experience replay.

    :param memory_size: examples (with their logits) the memory holds.
    :param alpha: weight of the logit-matching term.
    :param ratio: memory examples per sample, per new example of the batch.
    :param policy: ``"reservoir"`` (the paper's) or ``"class-balanced"``.
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md): the term's weight, not the memory.
    search_space = {"alpha": {"log-uniform": [0.01, 1.0]}}

    plus = False
    #: The kinds of task it runs on (clbench.kinds): generative streams are refused before anything runs.
    serves = ("classification",)

    def __init__(self, memory_size: int = 200, alpha: float = 0.3, ratio: float = 1.0, policy: Policy = "reservoir"):
        require(alpha >= 0 and math.isfinite(alpha), "alpha", "a number >= 0", alpha)
        require(ratio > 0 and math.isfinite(ratio), "ratio", "a positive number", ratio)
        self.memory = Buffer(memory_size, policy, name="der++" if self.plus else "der")
        self.alpha = alpha
        self.beta = 0.0
        self.ratio = ratio

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        term = None
        if len(self.memory):
            k = max(1, round(self.ratio * len(batch)))
            mem, extra = self.memory.sample(k, cell.generator)
            target = extra["logits"]
            valid = torch.isfinite(target)
            out = cell.logits(mem)
            term = self.alpha * F.mse_loss(out[valid], target[valid])
            if self.plus and self.beta > 0:
                mem, _ = self.memory.sample(k, cell.generator)
                term = term + self.beta * cell.loss(mem)
        self.memory.add(batch, cell.rng, logits=logits)
        self.memory.report(cell)
        return term


class DERpp(DER):
    """DER++: DER plus the cross-entropy of a second memory sample.

    :param beta: weight of the memory cross-entropy term.
    """

    search_space = {"alpha": {"log-uniform": [0.01, 1.0]}, "beta": {"log-uniform": [0.05, 2.0]}}

    plus = True

    def __init__(
        self,
        memory_size: int = 200,
        alpha: float = 0.1,
        beta: float = 0.5,
        ratio: float = 1.0,
        policy: Policy = "reservoir",
    ):
        super().__init__(memory_size, alpha, ratio, policy)
        require(beta >= 0 and math.isfinite(beta), "beta", "a number >= 0", beta)
        self.beta = beta


@hookimpl
def register_strategies(register):
    register("der", DER, description="dark experience replay: match stored logits (Buzzega et al. 2020)")
    register("der++", DERpp, description="DER plus cross-entropy on memory labels (Buzzega et al. 2020)")
