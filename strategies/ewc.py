"""``ewc``: elastic weight consolidation (Kirkpatrick et al. 2017), and online EWC (Schwarz et
al. 2018, "Progress & Compress").

After each task, the diagonal of the empirical Fisher information is estimated on that task's
training data: the mean over examples of the squared gradient of the example's log-likelihood
of its true label (one backward pass per example, on at most ``fisher_samples`` examples). While
training later tasks the loss gets the quadratic penalty

    ``lambda_ / 2 · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²``

with ``θ*_t`` the parameters after task t. ``mode = "separate"`` keeps one (F_t, θ*_t) pair per
task, as the paper does for several tasks; ``mode = "online"`` keeps one running Fisher
``F ← gamma · F + F_t`` anchored at the latest parameters (online EWC; ``gamma`` < 1 lets old
tasks fade). Suites write λ as ``lambda`` (its Python name is ``lambda_``, ``lambda`` being a
keyword).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from clbench import hookimpl
from clbench.params import require

from .buffer import shuffled


def empirical_fisher(cell, examples, max_samples: int, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``cell.model`` on (at most ``max_samples`` of) ``examples``:
    ``{name: mean over examples of (∂ log p(y|x) / ∂θ)²}`` for every trainable parameter.

    Per-example gradients come from ``torch.func.vmap`` over examples of one length at a time
    (each trimmed to its length, so no padding is involved); where the model does not support
    vmap (a custom kernel), and for generative tasks (whose log-likelihood is that of the
    answer's tokens), one backward pass per example gives the same numbers, slower."""
    model = cell.model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    data = shuffled(examples, cell.rng)[:max_samples]
    was_training = model.training
    model.eval()
    try:
        if not cell.kind.class_logits:
            raise NotImplementedError  # the loss of an example is its answer's: the loop below
        with warnings.catch_warnings():  # "performance drop": ops vmap runs one by one
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            _fisher_vmap(cell, data, params, fisher, chunk)
    except Exception:  # no vmap rule for some op of the model: per-example backward passes
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        _fisher_loop(cell, data, params, fisher)
    finally:
        model.train(was_training)
    n = max(len(data), 1)
    return {k: v / n for k, v in fisher.items()}


def _fisher_vmap(cell, data, params, fisher, chunk) -> None:
    frozen = {n: p.detach() for n, p in cell.model.named_parameters() if n not in params}

    def nll(p, x, y, mask):  # one example, unpadded
        logits = functional_call(cell.model, {**p, **frozen}, (x[None], None, None if mask is None else mask[None]))
        return F.cross_entropy(logits, y[None])

    per_example = vmap(grad(nll), in_dims=(None, 0, 0, 0 if cell.class_mask is not None else None))
    detached = {n: p.detach() for n, p in params.items()}
    for length in data.lengths.unique().tolist():
        group = data[data.lengths == length]
        for s in range(0, len(group), chunk):
            part = group[s : s + chunk]
            mask = None if cell.class_mask is None else cell.class_mask[part.t]
            grads = per_example(detached, part.x[:, :length], part.y, mask)
            for n, g in grads.items():
                fisher[n] += (g**2).sum(0)


def _fisher_loop(cell, data, params, fisher) -> None:
    names, tensors = list(params), list(params.values())
    for i in range(len(data)):
        loss = cell.loss(data[i : i + 1])  # − log p(y|x) of one example (mean over an answer's tokens)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                fisher[n] += g.detach() ** 2


def quadratic_penalty(model, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ_i importance_i (θ_i − anchor_i)²`` over the parameters named in ``importance``."""
    total = None
    for name, p in model.named_parameters():
        if name in importance:
            term = (importance[name] * (p - anchor[name]) ** 2).sum()
            total = term if total is None else total + term
    return total if total is not None else next(model.parameters()).new_zeros(())


class EWC:
    """Elastic weight consolidation.

    :param lambda_: strength of the penalty (λ in the paper; ``lambda`` in a suite).
    :param mode: ``"separate"`` (one penalty per earlier task) or ``"online"`` (one running one).
    :param gamma: decay of the running Fisher in ``"online"`` mode (1.0: no decay).
    :param fisher_samples: most training examples of a task used to estimate its Fisher.
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md): λ over six decades.
    search_space = {"lambda": {"log-uniform": [1.0, 1e6]}}

    def __init__(
        self,
        lambda_: float = 10000.0,
        mode: Literal["separate", "online"] = "separate",
        gamma: float = 1.0,
        fisher_samples: int = 1000,
    ):
        require(lambda_ >= 0 and math.isfinite(lambda_), "lambda", "a number >= 0", lambda_)
        require(0 < gamma <= 1, "gamma", "in (0, 1]", gamma)
        require(mode == "online" or gamma == 1.0, "gamma", "1.0 unless mode is 'online'", gamma)
        require(fisher_samples > 0, "fisher_samples", "a positive integer", fisher_samples)
        self.lambda_ = lambda_
        self.mode = mode
        self.gamma = gamma
        self.fisher_samples = fisher_samples
        self.penalties: list[tuple[dict, dict]] = []  # (Fisher, anchor) pairs

    def penalty(self, model) -> torch.Tensor:
        """``lambda_ / 2 · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²`` for ``model``'s current parameters."""
        total = sum(quadratic_penalty(model, f, a) for f, a in self.penalties)
        return self.lambda_ / 2 * total

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if self.penalties and self.lambda_ > 0:
            return self.penalty(cell.model)
        return None

    @hookimpl
    def after_task(self, cell, task):
        fisher = empirical_fisher(cell, task.train, self.fisher_samples)
        anchor = {n: p.detach().clone() for n, p in cell.model.named_parameters() if n in fisher}
        if self.mode == "online" and self.penalties:
            old, _ = self.penalties[0]
            fisher = {n: f + self.gamma * old[n] if n in old else f for n, f in fisher.items()}
            self.penalties = []
        self.penalties.append((fisher, anchor))


@hookimpl
def register_strategies(register):
    register("ewc", EWC, description="elastic weight consolidation, separate or online (Kirkpatrick et al. 2017; Schwarz et al. 2018)")
