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
by their meaning (``q`` is ``q_proj``, or the query rows of a fused layer: GPT-2's ``c_attn``,
Phi-3's ``qkv_proj``, GPT-NeoX's ``query_key_value`` interleaved per head; ...) and any other name
is one of its module names; there is no classification head there, so only the adapters train (the LM
head and the embeddings stay frozen, as in O-LoRA).

``seq-lora``, ``inc-lora`` and ``o-lora`` are the same strategy with the mode fixed. See
docs/lora.md.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from clbench import hookimpl
from clbench.errors import UserError
from clbench.models.backbones import is_pretrained, resolve
from clbench.models.hf import causal_lm_skeleton
from clbench.params import require

Mode = Literal["per-task", "seq", "inc", "olora"]
Target = Literal["qkv", "q", "k", "v", "proj", "attn.proj", "mlp.proj", "fc"]
DEFAULT_TARGETS = ("qkv", "proj", "fc")  # every attention and MLP projection


Rows = typing.Union[tuple[int, int], typing.Sequence[tuple[int, int]]]


def row_ranges(rows: Rows) -> tuple[tuple[int, int], ...]:
    """The output rows of a part as sorted, merged ``(start, stop)`` ranges: ``rows`` is one
    range, or several (the query rows of a fused layer interleaved per head are one per head)."""
    pairs = [tuple(rows)] if len(rows) == 2 and all(isinstance(r, int) for r in rows) else [tuple(r) for r in rows]
    merged: list[list[int]] = []
    for start, stop in sorted(pairs):
        if not 0 <= start < stop:
            raise ValueError(f"an empty or negative row range ({start}, {stop})")
        if merged and start < merged[-1][1]:
            raise ValueError(f"overlapping row ranges in {rows}")
        if merged and start == merged[-1][1]:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return tuple((a, b) for a, b in merged)


def out_features(layer: nn.Module) -> int:
    """The outputs of an ``nn.Linear`` or of transformers' ``Conv1D`` (weight ``(in, out)``)."""
    return getattr(layer, "out_features", None) or layer.weight.shape[1]


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (``base``; or transformers' ``Conv1D``, whose weight is ``(in, out)``)
    plus named low-rank adapters, of which ``active`` ones are added to its output. ``parts``
    maps a part name to the output rows it adapts, one ``(start, stop)`` range or several:
    ``{"": (0, out)}`` for the whole layer, ``{"q": (0, C), "v": (2C, 3C)}`` for slices of a
    fused qkv layer, ``{"q": ((0, h), (3h, 4h), ...)}`` for the query rows of a layer that
    interleaves query, key and value per head (GPT-NeoX). Each part of an adapter has its own
    ``A`` and ``B``; ``B``'s rows are the part's rows in output order."""

    def __init__(self, base: nn.Linear, parts: dict[str, Rows], rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features = getattr(base, "in_features", None) or base.weight.shape[0]
        self.out_features = out_features(base)
        ranges = {part: row_ranges(rows) for part, rows in parts.items()}
        self.ranges = dict(sorted(ranges.items(), key=lambda kv: kv[1]))
        # as given: one range as (start, stop), several as a tuple of them
        self.parts = {p: r[0] if len(r) == 1 else r for p, r in self.ranges.items()}
        # the output in row order: (start, stop, part, index of the part's range); rows between are gaps
        self.segments = sorted((s, e, p, i) for p, r in self.ranges.items() for i, (s, e) in enumerate(r))
        for (_, stop, p, _), (start, _, q, _) in zip(self.segments, self.segments[1:]):
            if start < stop:
                raise ValueError(f"parts {p!r} and {q!r} overlap")
        if self.segments[-1][1] > self.out_features:
            raise ValueError(f"parts {self.parts} exceed the layer's {self.out_features} outputs")
        ends = [0] + [stop for _, stop, *_ in self.segments]
        starts = [start for start, *_ in self.segments] + [self.out_features]
        self.widest_gap = max(start - end for start, end in zip(starts, ends))  # zeros for rows left alone
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.ParameterDict()  # "<adapter>" or "<adapter>_<part>" -> (rank, in)
        self.lora_B = nn.ParameterDict()  # same keys -> (rows of the part, rank)
        self.adapters: list[str] = []  # in the order they were added
        self.active: list[str] = []

    @staticmethod
    def key(adapter: str, part: str) -> str:
        return f"{adapter}_{part}" if part else adapter

    def rows(self, part: str) -> int:
        return sum(e - s for s, e in self.ranges[part])

    def add(self, adapter: str) -> None:
        w = self.base.weight
        for part in self.ranges:
            a = torch.empty(self.rank, self.in_features, device=w.device, dtype=w.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and Hu et al.'s code)
            self.lora_A[self.key(adapter, part)] = nn.Parameter(a)
            self.lora_B[self.key(adapter, part)] = nn.Parameter(w.new_zeros(self.rows(part), self.rank))
        self.adapters.append(adapter)

    def parameters_of(self, adapter: str) -> list[nn.Parameter]:
        keys = [self.key(adapter, part) for part in self.ranges]
        return [self.lora_A[k] for k in keys] + [self.lora_B[k] for k in keys]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.active:
            return y
        deltas = {}
        for part, ranges in self.ranges.items():
            xd = self.dropout(x)  # a mask per part, as separate q and v layers would each draw
            keys = [self.key(a, part) for a in self.active]
            # several active adapters are one adapter of the summed rank: concatenate them
            A = self.lora_A[keys[0]] if len(keys) == 1 else torch.cat([self.lora_A[k] for k in keys])
            B = self.lora_B[keys[0]] if len(keys) == 1 else torch.cat([self.lora_B[k] for k in keys], dim=1)
            delta = F.linear(F.linear(xd, A), B) * self.scaling  # (..., rows of the part)
            if ranges == ((0, y.shape[-1]),):
                return y + delta
            # one split (its backward is one cat), not a slice per range
            deltas[part] = delta.split([e - s for s, e in ranges], dim=-1) if len(ranges) > 1 else (delta,)
        zeros = y.new_zeros(*y.shape[:-1], self.widest_gap) if self.widest_gap else None
        pieces, pos = [], 0
        for start, stop, part, i in self.segments:
            if start > pos:
                pieces.append(zeros[..., : start - pos])
            pieces.append(deltas[part][i])
            pos = stop
        if pos < y.shape[-1]:
            pieces.append(zeros[..., : y.shape[-1] - pos])
        return y + torch.cat(pieces, dim=-1)

    def orthogonality(self) -> torch.Tensor:
        """``Σ_parts Σ |A_old A_newᵀ|`` between the newest adapter and all earlier ones (O-LoRA's
        penalty, unweighted); zero with fewer than two adapters."""
        total = self.base.weight.new_zeros(())
        if len(self.adapters) < 2:
            return total
        *old, new = self.adapters
        for part in self.ranges:
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


def _hf_layers(config, targets) -> list[tuple[str, nn.Module, dict]] | str:
    """The layers and parts ``targets`` name in the cell's Hugging Face model, read off its
    skeleton (no weights loaded); a one-line :class:`UserError` where a target matches none; why
    not, where the skeleton cannot be built (the cell's own model is checked when it runs)."""
    try:
        skeleton = causal_lm_skeleton(str(resolve(config.model.init).folder))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model transformers cannot build without its weights
        return f"its layers cannot be read without loading it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return skeleton.lora_targets(targets)


def describe_layers(found, rank: int) -> list[str]:
    """What an adapter of ``rank`` on ``found`` (``lora_targets``' answer) adapts, one line per
    layer of a block, the blocks' indices gathered (``model.layers.{0-23}.self_attn.qkv_proj
    [q, v]``), with the parameters per layer; and the total per adapter first."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    total = 0
    for name, module, parts in found:
        name = name.removeprefix("hf.")
        ranges = {part: row_ranges(rows) for part, rows in parts.items()}
        n = sum(rank * ((getattr(module, "in_features", None) or module.weight.shape[0]) + sum(e - s for s, e in r))
                for r in ranges.values())
        total += n
        block = re.search(r"\.(\d+)\.", name)
        key = re.sub(r"\.(\d+)\.", ".{}.", name, count=1) if block else name
        label = "" if "" in parts else f" [{', '.join(sorted(parts, key=lambda p: ranges[p]))}]"
        groups.setdefault((key, label, n), []).append(int(block.group(1)) if block else -1)
    lines = [f"{total:,} parameters per adapter (rank {rank}) in {len(found)} layers:"]
    for (key, label, n), blocks in groups.items():
        where = key.replace("{}", "{" + _spans(blocks) + "}") if "{}" in key else key
        lines.append(f"  {where}{label}: {len(blocks)} × {n:,}" if len(blocks) > 1 else f"  {where}{label}: {n:,}")
    return lines


def _spans(numbers: list[int]) -> str:
    """``0-3,5`` for ``[0, 1, 2, 3, 5]``."""
    spans: list[list[int]] = []
    for i in sorted(numbers):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def check_targets(targets) -> None:
    targets = list(targets)
    require(len(targets) > 0, "target_modules", "at least one projection", targets)
    require(len(set(targets)) == len(targets), "target_modules", "a list without repeats", targets)
    for whole, parts in (("qkv", ("q", "k", "v")), ("proj", ("attn.proj", "mlp.proj"))):
        overlap = [p for p in parts if p in targets]
        must = f"without {', '.join(repr(p) for p in overlap)} when it names '{whole}' (which contains them)"
        require(whole not in targets or not overlap, "target_modules", must, targets)


def check_target_names(targets, config) -> None:
    """Refuse (one line) a ``target_modules`` name outside clbench's projection names
    (:data:`Target`) when the cell's model is clbench's own Transformer (a Hugging Face model
    also takes its module names): what :meth:`LoRA.check_cell` checks, for the strategies built
    on these adapters (``i-lora``, ``moe-lora``)."""
    names = typing.get_args(Target)
    if not all(t in names for t in targets) and not _on_hf_model(config):
        require(False, "target_modules", f"a list of {' | '.join(map(repr, names))} (or, on a Hugging Face "
                "model, of its module names)", list(targets))


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
    search_space = {"rank": {"choice": [2, 4, 8, 16]}}

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
        check_targets(target_modules)
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
        if _on_hf_model(config):
            _hf_layers(config, self.targets)  # a target that matches no layer: refused before anything runs

    def describe(self, config) -> list[str]:
        """The layers (and parts of fused ones) that each adapter will adapt in the cell's model,
        and its parameter count, for ``clbench check``; nothing unless the model is a Hugging Face
        causal LM."""
        if not _on_hf_model(config):
            return []
        found = _hf_layers(config, self.targets)
        return [found] if isinstance(found, str) else describe_layers(found, self.rank)

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
