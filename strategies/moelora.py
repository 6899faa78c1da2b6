"""``moe-lora``: a mixture of LoRA experts per adapted layer, mixed by a learned router, with
LoRAMoE's localized balancing constraint (Dou et al., "LoRAMoE: Alleviating World Knowledge
Forgetting in Large Language Models via MoE-Style Plugin", ACL 2024).

Each adapted layer ``W`` (chosen by ``target_modules``, as the LoRA strategies choose them) gets
``E = experts`` LoRA adapters ``(A_e, B_e)`` and a router ``W_r`` ``(E, in)`` (no bias), and
computes, for every token ``x``,

    ``y = W x + b + (alpha / rank) · Σ_e g_e(x) · B_e A_e x``,   ``g(x) = softmax(W_r x)``

(dense routing: every expert, weighted; the softmax in float32). The experts, the routers and
the classification head (if the model has one) train through the whole stream; every base
weight stays frozen.

The localized balancing constraint splits the experts in two halves, each for one type of
example, and adds to the loss, for every adapted layer, ``blc_weight`` times the squared
coefficient of variation of

    ``Z[m, e] = I[m, e] · Q[m, e]``,   ``I[m, e] = Σ_{tokens n of example m} g_e(x_mn)``,
    ``Q[m, e] = 1 + blc_alpha`` if expert e is of example m's type, else ``1 − blc_alpha``

over all examples m of the batch and experts e: ``Var(Z) / (mean(Z)² + 1e-10)`` (the unbiased
variance, as ``torch.var``). LoRAMoE types an example by its data (world-knowledge tasks or
other downstream tasks); a continual stream has no such label, so here an example of an earlier
task (one a combined ``replay`` mixed in: ``t < cell.task_index``) has the type of the experts
``0 .. E/2 − 1`` and an example of the task being trained that of ``E/2 .. E − 1``. Without
replay every example is of the current type. ``blc_alpha = 0`` gives the plain (unlocalized)
balancing term. Only the tokens of each example count in ``I`` (LoRAMoE's code sums its padding
too).

Recorded: the router's load per task. While task t trains, each batch adds, per expert e, the
mean over the adapted layers of the share of the router's weight that went to e over the batch's
tokens; after the task, ``cell.record("router_load", mean over the task's batches, eval_task=e)``
writes one ``measurements`` row per expert (``train_task`` t, ``eval_task`` the expert). The
rows of a task sum to one.

See docs/lora.md for the parameters, the defaults and what differs from the authors' code.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from clbench import hookimpl
from clbench.params import require

from .lora import LoRALinear, check_target_names, check_targets, inject

#: LoRAMoE's script adapts the MLP's projections (``gate_proj``, ``up_proj``, ``down_proj``).
MOE_TARGETS = ("fc", "mlp.proj")


class _NoOutput(nn.Module):
    """Stands in for the base layer inside the experts' :class:`LoRALinear`: zeros of the base's
    output shape (so the LoRALinear returns its adapter's change alone), and the base's
    ``weight`` for the device, dtype and shapes the LoRALinear reads (not a parameter here)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self._base = [base]  # in a list: not registered as a submodule (its parameters stay the model's)
        self.in_features = getattr(base, "in_features", None) or base.weight.shape[0]
        self.out_features = getattr(base, "out_features", None) or base.weight.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        return self._base[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class MoELoRALinear(nn.Module):
    """A base layer plus ``n`` LoRA experts (adapters ``e0`` .. of ``experts``, a
    :class:`LoRALinear` with the same parts) mixed per token by ``router``. While the module
    trains with gradients on, ``gates`` holds the router's last ``(..., n)`` weights."""

    def __init__(self, lora: LoRALinear, n: int):
        super().__init__()
        self.base = lora.base
        lora.base = _NoOutput(self.base)
        self.experts = lora
        self.n = n
        for e in range(n):
            lora.add(f"e{e}")
        lora.active = [f"e{e}" for e in range(n)]
        w = self.base.weight
        self.router = nn.Linear(lora.in_features, n, bias=False, device=w.device, dtype=w.dtype)  # Kaiming-uniform, as theirs
        self.gates: torch.Tensor | None = None
        self._whole = lora.parts == {"": (0, self.experts.base.out_features)}

    def parameters_to_train(self) -> list[nn.Parameter]:
        return [p for e in range(self.n) for p in self.experts.parameters_of(f"e{e}")] + list(self.router.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        g = F.softmax(self.router(x), dim=-1, dtype=torch.float32).to(y.dtype)  # (..., n)
        if self.training and torch.is_grad_enabled():
            self.gates = g
        lora = self.experts
        if self._whole:  # one product for all experts: Σ_e g_e B_e A_e x = B_cat (g ⊗ A_cat x)
            keys = [f"e{e}" for e in range(self.n)]
            B = torch.cat([lora.lora_B[k] for k in keys], dim=1)  # (out, n · r)
            if self.training and lora.dropout.p > 0:  # a dropout mask per expert, as theirs
                z = torch.cat([F.linear(lora.dropout(x), lora.lora_A[k]) for k in keys], dim=-1)
            else:
                z = F.linear(x, torch.cat([lora.lora_A[k] for k in keys]))  # (..., n · r)
            z = (z.unflatten(-1, (self.n, lora.rank)) * g[..., None]).flatten(-2)
            return y + F.linear(z, B) * lora.scaling
        for e in range(self.n):  # parts of a fused layer: LoRALinear places each expert's rows
            lora.active = [f"e{e}"]
            y = y + g[..., e : e + 1] * lora(x)
        lora.active = [f"e{e}" for e in range(self.n)]
        return y


def moe_layers(model: nn.Module) -> list[MoELoRALinear]:
    return [m for m in model.modules() if isinstance(m, MoELoRALinear)]


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """LoRAMoE's ``cv_squared``: ``Var(x) / (mean(x)² + 1e-10)`` of the flattened values (the
    unbiased variance), 0 for a single value."""
    x = x.float().flatten()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


def balance_weights(old: torch.Tensor, n: int, blc_alpha: float) -> torch.Tensor:
    """``Q`` ``(B, n)``: ``1 + blc_alpha`` where expert e is of example m's type (the first half
    of the experts for an example of an earlier task, ``old[m]``, the second half otherwise), else
    ``1 − blc_alpha``."""
    first = torch.arange(n, device=old.device) < n // 2  # (n,)
    match = torch.where(old[:, None], first[None, :], ~first[None, :])
    return torch.where(match, 1.0 + blc_alpha, 1.0 - blc_alpha)


def balancing_loss(gates: torch.Tensor, valid: torch.Tensor, old: torch.Tensor, blc_alpha: float) -> torch.Tensor:
    """LoRAMoE's localized balancing term of one layer, unweighted: ``cv²(I ∘ Q)`` with
    ``I[m, e]`` the router's weight on expert e summed over example m's tokens (``valid``
    ``(B, N)``) and ``Q`` from :func:`balance_weights`."""
    importance = (gates.float() * valid[..., None]).sum(1)  # (B, n)
    return cv_squared(importance * balance_weights(old, gates.shape[-1], blc_alpha))


class MoELoRA:
    """LoRAMoE: several LoRA experts per adapted layer, mixed by a learned router, with the
    localized balancing constraint.

    :param experts: experts per adapted layer (LoRAMoE's ``lora_nums``); even when
        ``blc_alpha`` > 0 (two halves).
    :param rank: the rank of every expert.
    :param alpha: each expert's output is scaled by ``alpha / rank``.
    :param target_modules: the projections to adapt (the LoRA strategies' names, docs/lora.md).
    :param dropout: dropout on the experts' input.
    :param blc_weight: weight of the balancing term (β), summed over the adapted layers.
    :param blc_alpha: how much the balancing term favours an example's own half of the experts (δ).
    """

    #: It replaces layers of the model: its hooks run before those of the strategies it is combined with.
    changes_model = True
    #: What ``clbench tune`` searches by default (the learning rate: as for every strategy, docs/tuning.md).
    search_space = {"blc_weight": {"log-uniform": [0.01, 1.0]}}

    def __init__(
        self,
        experts: int = 8,
        rank: int = 4,
        alpha: float = 32.0,
        target_modules: list[str] = MOE_TARGETS,
        dropout: float = 0.05,
        blc_weight: float = 0.1,
        blc_alpha: float = 0.1,
    ):
        require(experts >= 2, "experts", ">= 2", experts)
        require(rank >= 1, "rank", ">= 1", rank)
        require(alpha > 0, "alpha", "> 0", alpha)
        require(0.0 <= dropout < 1.0, "dropout", "in [0, 1)", dropout)
        require(blc_weight >= 0 and math.isfinite(blc_weight), "blc_weight", "a number >= 0", blc_weight)
        require(0.0 <= blc_alpha < 1.0, "blc_alpha", "in [0, 1)", blc_alpha)
        require(blc_alpha == 0 or experts % 2 == 0, "experts", "even when blc_alpha > 0 (two halves of experts)", experts)
        check_targets(target_modules)
        self.experts, self.rank, self.alpha, self.dropout = experts, rank, alpha, dropout
        self.targets = tuple(target_modules)
        self.blc_weight, self.blc_alpha = blc_weight, blc_alpha
        self.layers: list[MoELoRALinear] | None = None
        self._trainable: list[nn.Parameter] = []
        self._load = None  # (experts,) summed over the task's batches
        self._batches = 0

    @hookimpl
    def check_cell(self, config, stream):
        check_target_names(self.targets, config)

    def _install(self, model: nn.Module) -> None:
        loras = inject(model, self.targets, self.rank, self.alpha, self.dropout)
        where = {id(m): name for name, m in model.named_modules()}
        self.layers = []
        for lora in loras:
            parent_name, _, attr = where[id(lora)].rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = MoELoRALinear(lora, self.experts)
            setattr(parent, attr, layer)
            self.layers.append(layer)

    @hookimpl
    def before_task(self, cell, task):
        model = cell.model
        if self.layers is None:
            self._install(model)
        head = getattr(model, "head", None)  # a classifier's head trains too, as in the LoRA strategies
        train = [p for layer in self.layers for p in layer.parameters_to_train()]
        train += list(head.parameters()) if head is not None else []
        keep = {id(p) for p in train}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        self._trainable = train
        self._load, self._batches = torch.zeros(self.experts, dtype=torch.float64), 0

    @hookimpl
    def trainable_parameters(self, cell):
        return self._trainable

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        # the gates of this batch's forward pass: (B, N, experts) in every layer that sees positions
        gates = [layer.gates for layer in self.layers or []
                 if layer.gates is not None and layer.gates.dim() == 3 and layer.gates.shape[0] == len(batch)]
        for layer in self.layers or []:
            layer.gates = None
        if not gates:
            return None
        n = gates[0].shape[1]
        valid = (torch.arange(n, device=batch.lengths.device)[None, :] < batch.lengths[:, None]).float()
        with torch.no_grad():  # the load: the share of the router's weight per expert, over the batch's tokens
            tokens = valid.sum().clamp_min(1.0)
            share = torch.stack([(g.float() * valid[..., None]).sum((0, 1)) / tokens for g in gates]).mean(0)
            self._load += share.double().cpu()
            self._batches += 1
        if not self.blc_weight:
            return None
        old = batch.t < cell.task_index
        return self.blc_weight * sum(balancing_loss(g, valid, old, self.blc_alpha) for g in gates)

    @hookimpl
    def after_task(self, cell, task):
        if self._batches:
            for e, value in enumerate((self._load / self._batches).tolist()):
                cell.record("router_load", value, eval_task=e)


@hookimpl
def register_strategies(register):
    register("moe-lora", MoELoRA, description="LoRAMoE: LoRA experts mixed by a router, localized balancing (Dou et al. 2024)")
