"""``lora``: LoRA adapters (Hu et al. 2021) on the Transformer's projections, base weights frozen.

Each adapted ``nn.Linear`` computes ``W x + b + (alpha / rank) · B A x`` with ``A`` ``(rank, in)``
(Kaiming-uniform init) and ``B`` ``(out, rank)`` (zero init, so a new adapter starts as the
identity change). Four ways to use adapters through a stream (``mode``):

* ``per-task``: a new adapter, and a copy of the classification head, for every task; at test time
  each task is routed to its own adapter and head by its task id (task-incremental streams only).
  Nothing trained for a task is touched afterwards, so forgetting is zero.
* ``seq`` (SeqLoRA): one adapter trained on through the whole stream.
* ``inc`` (IncLoRA): a new adapter per task; the earlier ones stay in the forward pass, frozen.
* ``olora`` (O-LoRA, Wang et al. 2023): ``inc`` plus a penalty that keeps the new adapter's input
  subspace orthogonal to the earlier ones', ``lambda_orth · Σ_layers Σ |A_old A_newᵀ|``, and
  ``lambda_l2 · Σ ‖p‖₂`` over the new adapter's matrices (the L1 form of the authors' code).

The classification head always trains (a frozen random head cannot learn new classes): in
``per-task`` mode each task trains its own copy, in the other modes the model's one head is shared
by all tasks, as in ``naive``. ``train_base_first`` trains the whole model on the first task and
adapters only from the second task on. ``target_modules`` names projections: ``qkv`` (the fused
query/key/value layer), ``q``, ``k``, ``v`` (one third of it each: Hu et al. adapt ``q`` and
``v``), ``proj`` (attention output and MLP output), ``attn.proj``, ``mlp.proj``, ``fc`` (MLP in).
On a Hugging Face model (:class:`clbench.models.hf.HFCausalLM`) these names stand for its layers
(``q`` is ``q_proj``, or a third of GPT-2's fused ``c_attn``; ...) and any other name is one of
its module names; there is no classification head there, so only the adapters train (the LM
head and the embeddings stay frozen, as in O-LoRA).

``seq-lora``, ``inc-lora`` and ``o-lora`` are the same strategy with the mode fixed. See
docs/lora.md.
"""

from __future__ import annotations

import copy
import math
import typing
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from clbench import hookimpl
from clbench.errors import UserError
from clbench.models.backbones import is_pretrained, resolve
from clbench.params import require

Mode = Literal["per-task", "seq", "inc", "olora"]
Target = Literal["qkv", "q", "k", "v", "proj", "attn.proj", "mlp.proj", "fc"]
DEFAULT_TARGETS = ("qkv", "proj", "fc")  # every attention and MLP projection


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (``base``; or transformers' ``Conv1D``, whose weight is ``(in, out)``)
    plus named low-rank adapters, of which ``active`` ones are added to its output. ``parts``
    maps a part name to the ``(start, stop)`` output rows it adapts: ``{"": (0, out)}`` for the
    whole layer, ``{"q": (0, C), "v": (2C, 3C)}`` for slices of a fused qkv layer; each part of
    an adapter has its own ``A`` and ``B``."""

    def __init__(self, base: nn.Linear, parts: dict[str, tuple[int, int]], rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features = getattr(base, "in_features", None) or base.weight.shape[0]
        self.parts = dict(sorted(parts.items(), key=lambda kv: kv[1]))
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.ParameterDict()  # "<adapter>" or "<adapter>_<part>" -> (rank, in)
        self.lora_B = nn.ParameterDict()  # same keys -> (stop - start, rank)
        self.adapters: list[str] = []  # in the order they were added
        self.active: list[str] = []

    @staticmethod
    def key(adapter: str, part: str) -> str:
        return f"{adapter}_{part}" if part else adapter

    def add(self, adapter: str) -> None:
        w = self.base.weight
        for part, (start, stop) in self.parts.items():
            a = torch.empty(self.rank, self.in_features, device=w.device, dtype=w.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and Hu et al.'s code)
            self.lora_A[self.key(adapter, part)] = nn.Parameter(a)
            self.lora_B[self.key(adapter, part)] = nn.Parameter(w.new_zeros(stop - start, self.rank))
        self.adapters.append(adapter)

    def parameters_of(self, adapter: str) -> list[nn.Parameter]:
        keys = [self.key(adapter, part) for part in self.parts]
        return [self.lora_A[k] for k in keys] + [self.lora_B[k] for k in keys]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.active:
            return y
        pieces, pos = [], 0
        for part, (start, stop) in self.parts.items():
            xd = self.dropout(x)  # a mask per part, as separate q and v layers would each draw
            keys = [self.key(a, part) for a in self.active]
            # several active adapters are one adapter of the summed rank: concatenate them
            A = self.lora_A[keys[0]] if len(keys) == 1 else torch.cat([self.lora_A[k] for k in keys])
            B = self.lora_B[keys[0]] if len(keys) == 1 else torch.cat([self.lora_B[k] for k in keys], dim=1)
            delta = F.linear(F.linear(xd, A), B) * self.scaling  # (..., stop - start)
            if (start, stop) == (0, y.shape[-1]):
                return y + delta
            if start > pos:
                pieces.append(y.new_zeros(*y.shape[:-1], start - pos))
            pieces.append(delta)
            pos = stop
        if pos < y.shape[-1]:
            pieces.append(y.new_zeros(*y.shape[:-1], y.shape[-1] - pos))
        return y + torch.cat(pieces, dim=-1)

    def orthogonality(self) -> torch.Tensor:
        """``Σ_parts Σ |A_old A_newᵀ|`` between the newest adapter and all earlier ones (O-LoRA's
        penalty, unweighted); zero with fewer than two adapters."""
        total = self.base.weight.new_zeros(())
        if len(self.adapters) < 2:
            return total
        *old, new = self.adapters
        for part in self.parts:
            a_old = torch.cat([self.lora_A[self.key(a, part)] for a in old])  # (rank · n_old, in)
            total = total + (a_old @ self.lora_A[self.key(new, part)].T).abs().sum()
        return total


class TaskHeads(nn.Module):
    """The model's classification head (``base``) plus one copy per adapter (``per-task`` mode);
    ``active`` names the copy that answers, None for the base head."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.copies = nn.ModuleDict()
        self.active: str | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.base if self.active is None else self.copies[self.active])(h)


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def orthogonality(model: nn.Module) -> torch.Tensor:
    """O-LoRA's (unweighted) orthogonality term of ``model``: the sum over its adapted layers of
    :meth:`LoRALinear.orthogonality` (newest adapter against the earlier ones)."""
    terms = [layer.orthogonality() for layer in lora_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def inject(model: nn.Module, targets, rank: int, alpha: float, dropout: float = 0.0) -> list[LoRALinear]:
    """Wrap the layers of ``model`` that ``targets`` name in :class:`LoRALinear` (in place; the
    wrapped layers keep their parameter objects). A model with a ``lora_targets(targets)``
    method (a Hugging Face model) says itself which layers and parts those are; otherwise a
    target matches an ``nn.Linear`` whose qualified name is it or ends with ``"." + target``,
    and ``q``, ``k``, ``v`` match a layer named ``qkv`` and adapt a third of its outputs each."""
    find = getattr(model, "lora_targets", None)
    found = find(targets) if callable(find) else _named_linears(model, targets)
    if not found:
        raise UserError(f"strategy 'lora': no layer of the model matches target_modules {list(targets)}")
    layers = []
    for name, module, parts in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = LoRALinear(module, parts, rank, alpha, dropout)
        setattr(parent, attr, layer)
        layers.append(layer)
    return layers


def _named_linears(model: nn.Module, targets) -> list[tuple[str, nn.Module, dict[str, tuple[int, int]]]]:
    """The layers of clbench's Transformer that ``targets`` name, and their parts."""
    slices = [t for t in ("q", "k", "v") if t in targets]
    whole = [t for t in targets if t not in slices]
    found = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        parts = {}
        if any(name == t or name.endswith("." + t) for t in whole):
            parts = {"": (0, module.out_features)}
        elif slices and name.rsplit(".", 1)[-1] == "qkv":
            c = module.out_features // 3
            parts = {s: (i * c, (i + 1) * c) for i, s in enumerate(("q", "k", "v")) if s in slices}
        if parts:
            found.append((name, module, parts))
    return found


def _on_hf_model(config) -> bool:
    return is_pretrained(config.model.init) and resolve(config.model.init).family == "hf-causal"


def _check_targets(targets) -> None:
    targets = list(targets)
    require(len(targets) > 0, "target_modules", "at least one projection", targets)
    require(len(set(targets)) == len(targets), "target_modules", "a list without repeats", targets)
    for whole, parts in (("qkv", ("q", "k", "v")), ("proj", ("attn.proj", "mlp.proj"))):
        overlap = [p for p in parts if p in targets]
        must = f"without {', '.join(repr(p) for p in overlap)} when it names '{whole}' (which contains them)"
        require(whole not in targets or not overlap, "target_modules", must, targets)


class LoRA:
    """LoRA adapters on the attention and MLP projections, base weights frozen.

    :param mode: ``per-task`` (one adapter and head per task, routed by task id), ``seq`` (one
        adapter through the stream), ``inc`` (a new adapter per task, earlier ones frozen) or
        ``olora`` (``inc`` with O-LoRA's orthogonality and L2 penalties).
    :param rank: the rank r of every adapter.
    :param alpha: the adapter output is scaled by ``alpha / rank``.
    :param target_modules: the projections to adapt (see the module docstring).
    :param dropout: dropout on the adapters' input.
    :param train_base_first: train the whole model on the first task, adapters from the second.
    :param lambda_orth: O-LoRA's orthogonality weight (``olora`` only; default 0.5).
    :param lambda_l2: O-LoRA's L2 weight on the new adapter (``olora`` only; default 0).
    """

    #: LoRA replaces layers of the model (and, per task, its head): the loop lets its hooks run
    #: before those of the strategies it is combined with (EWC, SI see the adapters).
    changes_model = True
    #: What ``clbench tune`` searches by default (docs/tuning.md): the rank, and the learning rate
    #: (adapters train well at rates full fine-tuning does not).
    search_space = {"rank": {"choice": [2, 4, 8, 16]}, "training": {"lr": {"log-uniform": [1e-4, 1e-2]}}}

    def __init__(
        self,
        mode: Mode = "per-task",
        rank: int = 8,
        alpha: float = 16.0,
        target_modules: list[str] = DEFAULT_TARGETS,
        dropout: float = 0.0,
        train_base_first: bool = False,
        lambda_orth: float | None = None,
        lambda_l2: float | None = None,
    ):
        require(rank >= 1, "rank", ">= 1", rank)
        require(alpha > 0, "alpha", "> 0", alpha)
        require(0.0 <= dropout < 1.0, "dropout", "in [0, 1)", dropout)
        _check_targets(target_modules)
        for name, value in (("lambda_orth", lambda_orth), ("lambda_l2", lambda_l2)):
            require(value is None or mode == "olora", name, f"left out unless mode is 'olora' (mode is {mode!r})", value)
            require(value is None or value >= 0, name, ">= 0", value)
        self.mode = mode
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.targets = tuple(target_modules)
        self.train_base_first = train_base_first
        self.lambda_orth = 0.5 if lambda_orth is None else lambda_orth
        self.lambda_l2 = 0.0 if lambda_l2 is None else lambda_l2
        self.layers: list[LoRALinear] | None = None  # set at the first task
        self.heads: TaskHeads | None = None  # per-task mode only
        self.adapters: list[str] = []
        self.new: str | None = None  # the adapter trained on the current task (None: the base)
        self._trainable: list[nn.Parameter] | None = None

    # -- the model ---------------------------------------------------------------------------
    @hookimpl
    def check_cell(self, config, stream):
        names = typing.get_args(Target)
        if not all(t in names for t in self.targets) and not _on_hf_model(config):
            require(False, "target_modules", f"a list of {' | '.join(map(repr, names))} (or, on a Hugging Face "
                    "model, of its module names)", list(self.targets))
        if self.mode == "per-task" and stream.scenario != "task-incremental":
            raise UserError(
                f"strategy 'lora': mode 'per-task' picks each task's adapter by its task id, which "
                f"only task-incremental streams give at test time; {stream.name} is "
                f"{stream.scenario} (use seq-lora, inc-lora or o-lora)"
            )

    def _install(self, cell) -> None:
        model = cell.model
        self.layers = inject(model, self.targets, self.rank, self.alpha, self.dropout)
        if self.mode == "per-task" and getattr(model, "head", None) is not None:
            self.heads = model.head = TaskHeads(model.head)

    def _head_params(self, model) -> list[nn.Parameter]:
        """The head parameters the coming task trains: none where the model has no
        classification head (a language model: its LM head stays frozen)."""
        if self.heads is not None:
            return list(self.heads.copies[self.new].parameters()) if self.new else []
        head = getattr(model, "head", None)
        return list(head.parameters()) if head is not None else []

    def _route(self, adapters: list[str], head: str | None) -> None:
        for layer in self.layers:
            layer.active = list(adapters)
        if self.heads is not None:
            self.heads.active = head

    def _add(self, name: str) -> None:
        for layer in self.layers:
            layer.add(name)
        if self.heads is not None:
            self.heads.copies[name] = copy.deepcopy(self.heads.base).requires_grad_(True)
        self.adapters.append(name)

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.parameters_of(name)]

    def _train(self, model) -> list[nn.Parameter]:
        """The parameters the coming task trains; everything else gets ``requires_grad=False``."""
        train = (self.adapter_parameters(self.new) if self.new else []) + self._head_params(model)
        keep = {id(p) for p in train}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        return train

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def before_task(self, cell, task):
        if self.layers is None:
            self._install(cell)
        i = cell.task_index
        if self.train_base_first and i == 0:
            self.new = None  # the whole model trains on the first task
            self._route([], None)
            self._trainable = None
            return
        if self.mode == "seq":
            self.new = "shared"
            if not self.adapters:
                self._add("shared")
        else:
            self.new = f"task{i}"
            self._add(self.new)
        self._route([self.new] if self.mode in ("seq", "per-task") else self.adapters, self.new)
        self._trainable = self._train(cell.model)

    @hookimpl
    def trainable_parameters(self, cell):
        return self._trainable

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if self.mode != "olora" or self.new is None:
            return None
        term = None
        if self.lambda_orth and len(self.adapters) > 1:
            term = self.lambda_orth * orthogonality(cell.model)
        if self.lambda_l2:
            l2 = self.lambda_l2 * sum(p.norm(p=2) for p in self.adapter_parameters(self.new))
            term = l2 if term is None else term + l2
        return term

    @hookimpl
    def after_task(self, cell, task):
        if self.new is not None and self.mode != "seq":  # this task's adapter (and head) is done
            done = self.adapter_parameters(self.new)
            if self.heads is not None:
                done += list(self.heads.copies[self.new].parameters())
            for p in done:
                p.requires_grad_(False)
                p.grad = None

    @hookimpl
    def before_eval(self, cell, task_index, task):
        if self.layers is None or self.mode != "per-task":
            return  # the other modes evaluate every task with what they trained
        name = f"task{task_index}"
        if name in self.adapters:
            self._route([name], name)
        else:  # not trained yet (or the base's task): the base model answers
            self._route([], None)


class SeqLoRA(LoRA):
    """SeqLoRA: one LoRA adapter trained on through the whole stream (``lora``, mode 'seq')."""

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        target_modules: list[str] = DEFAULT_TARGETS,
        dropout: float = 0.0,
        train_base_first: bool = False,
    ):
        super().__init__("seq", rank, alpha, target_modules, dropout, train_base_first)


class IncLoRA(LoRA):
    """IncLoRA: a new LoRA adapter per task, earlier ones frozen (``lora``, mode 'inc')."""

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        target_modules: list[str] = DEFAULT_TARGETS,
        dropout: float = 0.0,
        train_base_first: bool = False,
    ):
        super().__init__("inc", rank, alpha, target_modules, dropout, train_base_first)


#: The adapter of the O-LoRA repository (r 8, lora_alpha 32, lora_dropout 0.1 on T5's q and v).
OLORA_TARGETS = ("q", "v")


class OLoRA(LoRA):
    """O-LoRA: IncLoRA with new adapters kept orthogonal to earlier ones (``lora``, mode 'olora').

    The defaults are the O-LoRA repository's adapter: rank 8, alpha 32, dropout 0.1, on the
    query and value projections (here slices of the fused ``qkv`` layer; docs/lora.md)."""

    search_space = {**LoRA.search_space, "lambda_orth": {"log-uniform": [0.01, 10.0]}}

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 32.0,
        target_modules: list[str] = OLORA_TARGETS,
        dropout: float = 0.1,
        train_base_first: bool = False,
        lambda_orth: float = 0.5,
        lambda_l2: float = 0.0,
    ):
        super().__init__("olora", rank, alpha, target_modules, dropout, train_base_first, lambda_orth, lambda_l2)


@hookimpl
def register_strategies(register):
    register("lora", LoRA, description="LoRA adapters, base frozen: per-task (routed by task id), seq, inc or olora")
    register("seq-lora", SeqLoRA, description="one LoRA adapter trained through the stream (lora, mode 'seq')")
    register("inc-lora", IncLoRA, description="a new LoRA adapter per task, earlier ones frozen (lora, mode 'inc')")
    register("o-lora", OLoRA, description="IncLoRA with orthogonal adapter subspaces (Wang et al. 2023)")
