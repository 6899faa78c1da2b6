"""``i-lora``: interpolation-based LoRA (Ren et al., "Analyzing and Reducing Catastrophic
Forgetting in Parameter Efficient Tuning", 2024; the authors' code is the LLMCL repository).

Two LoRA adapters on the same layers (chosen by ``target_modules``, as the LoRA strategies
choose them): a *fast* learner θ_f, trained with experience replay, and a *slow* learner θ_s,
which only follows it. After every optimizer step s of a task (s = 1, 2, ...; the count restarts
with each task, as the Trainer's ``global_step`` of the authors' code does),

    ``θ_s ← a_s · θ_s + (1 − a_s) · θ_f``,   ``a_s = min(1 − 1/(s + 1), lambda_)``

for each matrix of the adapters (``A`` and ``B`` interpolated apiece). From the second task on,
every batch of ``b`` new examples gets ``round(ratio · b)`` examples of a reservoir memory mixed
in (:class:`~clbench.strategies.buffer.Buffer`, every batch offered to it, as ``replay`` with
``update = "online"``), and the loss gets the consistency term on the memory examples

    ``consistency_weight · mean_{layers l, tokens, features} (h_f,l − target_l)²``

where ``h_f,l`` and ``h_s,l`` are the outputs of the model's l-th block (Transformer layer) with
the fast adapter (as trained, with gradients) and with the slow one (no gradients). With
``consistency = "mse"`` (the default) the target is the slow learner's output,
``target_l = h_s,l``; with ``consistency = "max"`` it is the ``torch.where(plastic > stable,
plastic, stable)`` of the authors' code, ``target_l = max(h_f,l, h_s,l)``: the fast learner is
pulled up to the slow one wherever the slow one's activation is larger, and never down. ``"max"``
ran away on ``llm-quick`` (the loss past 10⁹, every task at 0) where ``"mse"`` was the best
sequential method of the suite (docs/lora.md). The memory examples' own loss is part of the
batch's. The slow learner is what is evaluated.

The slow adapter starts as a freshly initialised one (random ``A``, zero ``B``), as the authors'
``add_adapter('ema', ...)`` does. The classification head (if the model has one) trains with the
fast learner and is shared by both (the authors' models have only a frozen LM head). See
docs/lora.md for the parameters, the defaults and what differs from the authors' code.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from clbench import hookimpl
from clbench.kinds import computed_groups
from clbench.errors import UserError
from clbench.params import require
from clbench.tasks import Examples

from .buffer import Buffer
from .lora import LoRALinear, check_target_names, check_targets, inject

#: The LLMCL repository's adapter: q, k, v and the attention output (its ``target_modules``
#: ``q_proj,k_proj,v_proj,o_proj``; here q, k, v are thirds of the fused qkv layer).
ILORA_TARGETS = ("q", "k", "v", "attn.proj")


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The model's Transformer blocks, in order: clbench's ``blocks``, or the decoder layers of a
    Hugging Face model (``layers`` of Llama and Qwen2, ``h`` of GPT-2). A one-line
    :class:`UserError` for a model that has none of them."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return blocks
    hf = getattr(model, "hf", None)
    base = getattr(hf, "base_model", None) if hf is not None else None
    for name in ("layers", "h", "blocks", "layer"):
        stack = getattr(base, name, None)
        if isinstance(stack, nn.ModuleList) and len(stack):
            return stack
    raise UserError(f"strategy 'i-lora': no stack of Transformer layers found in the {type(model).__name__} model "
                    "(its consistency term compares every layer's output)")


class ILoRA:
    """I-LoRA: a fast LoRA learner trained with replay, a slow one that follows it by
    interpolation and is evaluated, and a consistency term between them on memory examples.

    :param lambda_: the slow learner's share in each interpolation (λ; ``lambda`` in a suite).
    :param consistency_weight: weight of the consistency term.
    :param memory_size: examples the replay memory holds.
    :param ratio: memory examples mixed in per new example.
    :param rank: the rank of both adapters.
    :param alpha: the adapters' output is scaled by ``alpha / rank``.
    :param target_modules: the projections to adapt (the LoRA strategies' names, docs/lora.md).
    :param dropout: dropout on the adapters' input.
    :param consistency: ``"mse"``: the target ``h_s``; ``"max"``: the authors' code's target, ``max(h_f, h_s)``.
    """

    #: It replaces layers of the model: its hooks run before those of the strategies it is combined with.
    changes_model = True
    #: What ``clbench tune`` searches by default (the learning rate: as for every strategy, docs/tuning.md).
    search_space = {"lambda": {"uniform": [0.0, 0.99]}, "consistency_weight": {"log-uniform": [0.1, 10.0]}}

    def __init__(
        self,
        lambda_: float = 0.25,
        consistency_weight: float = 1.0,
        memory_size: int = 500,
        ratio: float = 1.0,
        rank: int = 8,
        alpha: float = 32.0,
        target_modules: list[str] = ILORA_TARGETS,
        dropout: float = 0.1,
        consistency: Literal["mse", "max"] = "mse",
    ):
        require(0.0 <= lambda_ < 1.0, "lambda", "in [0, 1)", lambda_)
        require(consistency_weight >= 0 and math.isfinite(consistency_weight), "consistency_weight", "a number >= 0",
                consistency_weight)
        require(ratio > 0 and math.isfinite(ratio), "ratio", "a positive number", ratio)
        require(rank >= 1, "rank", ">= 1", rank)
        require(alpha > 0, "alpha", "> 0", alpha)
        require(0.0 <= dropout < 1.0, "dropout", "in [0, 1)", dropout)
        check_targets(target_modules)
        self.lambda_, self.consistency_weight, self.ratio = lambda_, consistency_weight, ratio
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.targets = tuple(target_modules)
        self.consistency = consistency
        self.memory = Buffer(memory_size, "reservoir", name="i-lora")
        self.layers: list[LoRALinear] | None = None
        self.blocks: list[nn.Module] = []
        self.steps = 0  # optimizer steps in the current task
        self._trainable: list[nn.Parameter] = []
        self._new = 0  # rows of the current batch that are new examples (the rest: memory)
        self._captured: list[torch.Tensor] | None = None  # block outputs of the forward pass being captured

    # -- the model ---------------------------------------------------------------------------
    @hookimpl
    def check_cell(self, config, stream):
        check_target_names(self.targets, config)

    def _install(self, model: nn.Module) -> None:
        stack = layer_stack(model)
        self.layers = inject(model, self.targets, self.rank, self.alpha, self.dropout)
        for layer in self.layers:
            layer.add("fast")
            layer.add("slow")
            for p in layer.parameters_of("slow"):
                p.requires_grad_(False)
        self.blocks = list(stack)
        ids = {id(b) for b in self.blocks}
        for block in self.blocks:
            block.register_forward_hook(lambda m, args, out, ids=ids: self._capture(m, out, ids))

    def _capture(self, module, out, ids) -> None:
        # (a copy of the model made by another strategy, e.g. LwF's, has other modules: not captured)
        if self._captured is not None and id(module) in ids:
            self._captured.append(out[0] if isinstance(out, tuple) else out)

    def route(self, adapter: str) -> None:
        """Make ``adapter`` (``"fast"`` or ``"slow"``) the one in the forward pass."""
        for layer in self.layers or []:
            layer.active = [adapter]

    def pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(slow, fast) parameter pairs, matrix by matrix."""
        return [(s, f) for layer in self.layers for s, f in zip(layer.parameters_of("slow"), layer.parameters_of("fast"))]

    @torch.no_grad()
    def interpolate(self) -> float:
        """One step of the slow learner: ``θ_s ← a θ_s + (1 − a) θ_f``; returns ``a``."""
        self.steps += 1
        a = min(1.0 - 1.0 / (self.steps + 1), self.lambda_)
        for slow, fast in self.pairs():
            slow.mul_(a).add_(fast, alpha=1.0 - a)
        return a

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def before_task(self, cell, task):
        model = cell.model
        if self.layers is None:
            self._install(model)
        head = getattr(model, "head", None)
        train = [p for layer in self.layers for p in layer.parameters_of("fast")]
        train += list(head.parameters()) if head is not None else []
        keep = {id(p) for p in train}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        self._trainable = train
        self.steps = 0
        self.route("fast")

    @hookimpl
    def trainable_parameters(self, cell):
        return self._trainable

    @hookimpl
    def train_batch(self, cell, batch):
        mixed = None
        self._captured = None
        if cell.task_index > 0 and len(self.memory):  # replay from the second task on, as the authors'
            mem, _ = self.memory.sample(max(1, round(self.ratio * len(batch))), cell.generator)
            mixed = Examples.cat([batch, mem])
            self._new = len(batch)
            if self.consistency_weight:
                self._captured = []  # capture the block outputs of this batch's forward pass
        self.memory.add(batch, cell.rng)
        self.memory.report(cell)
        return mixed

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        fast, self._captured = self._captured, None
        if not fast:
            return None
        fast = self._whole_batch(cell, batch, fast)
        mem = batch[self._new :]
        n = fast[0].shape[1]  # the positions the forward pass computed (a batch is trimmed to its longest)
        x = mem.x[:, :n]
        self.route("slow")
        try:
            self._captured = []
            with torch.no_grad():
                cell.model.hidden_states(x, mem.lengths)
            slow, self._captured = self._captured, None
        finally:
            self.route("fast")
        valid = (torch.arange(n, device=x.device)[None, :] < mem.lengths[:, None])  # (M, n)
        terms = []
        for hf, hs in zip(fast, slow):
            hf = hf[self._new :]
            target = torch.maximum(hf, hs) if self.consistency == "max" else hs
            gap = (hf - target).float() ** 2  # (M, n, C); "max": zero where the fast one is larger
            terms.append(gap[valid].mean())
        return self.consistency_weight * torch.stack(terms).mean()

    def _whole_batch(self, cell, batch, captured: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each block's output for the whole batch, ``(B, n, C)``. A batch of very different
        lengths (new examples and memory) is computed in two passes of similar lengths
        (:func:`clbench.kinds.computed_groups`): the blocks then ran once per pass, and their
        outputs are put back in the batch's row order, zero beyond each pass's own length
        (positions the ``valid`` mask leaves out)."""
        L = len(self.blocks)
        if len(captured) == L:
            return captured
        groups = computed_groups(cell, batch)
        if groups is None or len(captured) != L * len(groups):
            raise RuntimeError(f"i-lora captured {len(captured)} block outputs for {L} blocks: "
                               "the forward pass was not one pass, nor one per length group")
        n = max(int(t.shape[1]) for t in captured)
        out = []
        for k in range(L):
            parts = [captured[p * L + k] for p in range(len(groups))]
            whole = parts[0].new_zeros(len(batch), n, parts[0].shape[-1])
            for g, part in zip(groups, parts):
                whole[g, : part.shape[1]] = part
            out.append(whole)
        return out

    @hookimpl
    def after_step(self, cell, step, loss):
        if self.layers is not None and cell.optimizer is not None:
            self.interpolate()

    @hookimpl
    def before_eval(self, cell, task_index, task):
        if self.layers is not None:
            self.route("slow")  # the slow learner answers


@hookimpl
def register_strategies(register):
    register("i-lora", ILoRA, description="interpolation-based LoRA: a fast learner with replay, a slow one by EMA, evaluated (Ren et al. 2024)")
