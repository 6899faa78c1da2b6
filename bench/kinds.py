"""Kinds of task: how a cell builds its model, turns a batch into outputs and a loss, and a task
into scores.

The loop (:mod:`clbench.loop`) never looks inside a batch: it asks the stream's kind
(``Stream.kind``). A kind has:

* ``class_logits``: True when a batch's outputs are one row of logits over the stream's label
  space per example (classification), False when they are next-token logits at the answer
  tokens (generation): what a strategy that works on class logits branches on;
* ``check(config, stream)``: a one-line :class:`~clbench.errors.UserError` if the cell's model
  cannot do the stream's tasks (called by :func:`clbench.cell.refuse`, before anything runs);
* ``build_model(config, stream)``: the cell's model, seeded with the cell's seed;
* ``logits(cell, batch, model, masked)``: the model's outputs for a batch (what strategies match,
  distil or store, and what ``loss_terms`` gets);
* ``loss(cell, batch, logits)``: the scalar training loss of those outputs;
* ``evaluate(cell, task_index, task)``: ``{metric: value}`` on the task's test split. Its
  ``"acc"`` entry is the task's primary score, the one that fills the accuracy matrix (and so
  ACC, BWT, FWT, forgetting); every entry becomes a row of ``measurements``;
* ``evaluate_stream(cell)``: ``{metric: value}`` about the stream as a whole, not a task (the
  perplexity of a generative stream's general text), recorded with ``eval_task = -1``.

``classification``: a label per example, the model's head over the stream's label space.
``generation``: a prompt and an answer per example (:mod:`clbench.tasks.generative`), a causal
language model, next-token cross-entropy on the answer's tokens, answers scored by the task's
metric (:mod:`clbench.tasks.scoring`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from .errors import UserError
from .models.backbones import is_pretrained, load_into, resolve
from .models.hf import load_causal_lm
from .models.transformer import Transformer

from clbench.tasks.generative import examples_of
from clbench.tasks.scoring import SCORERS

if TYPE_CHECKING:  # pragma: no cover
    from .cell import CellContext
    from .config import CellConfig
    from clbench.tasks import Batch, Examples, Stream, Task


class Kind(Protocol):
    class_logits: bool

    def check(self, config: CellConfig, stream: Stream) -> None: ...

    def build_model(self, config: CellConfig, stream: Stream) -> torch.nn.Module: ...

    def logits(self, cell: CellContext, batch: Batch, model: torch.nn.Module, masked: bool = True) -> torch.Tensor: ...

    def loss(self, cell: CellContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, cell: CellContext, task_index: int, task: Task) -> dict[str, float]: ...

    def evaluate_stream(self, cell: CellContext) -> dict[str, float]: ...


def _backbone(config: CellConfig):
    return resolve(config.model.init) if is_pretrained(config.model.init) else None


class Classification:
    """A label per example: ``(B, n_classes)`` logits from the model's head over the stream's
    label space (masked to the example's task in task-incremental streams), cross-entropy, and
    accuracy (``acc``) and mean cross-entropy (``loss``) on the test split."""

    class_logits = True

    def check(self, config: CellConfig, stream: Stream) -> None:
        pass

    def build_model(self, config: CellConfig, stream: Stream) -> torch.nn.Module:
        backbone = _backbone(config)
        torch.manual_seed(config.seed)
        model = Transformer(
            config.model,
            input_kind=stream.input_kind,
            input_dim=backbone.input_dim if backbone else stream.input_dim,  # a backbone may have extra ids ([MASK])
            n_classes=stream.n_classes,
        )
        if backbone is not None:
            load_into(model, backbone)
        return model

    def logits(self, cell: CellContext, batch: Batch, model: torch.nn.Module, masked: bool = True) -> torch.Tensor:
        x, lengths = batch.x, batch.lengths
        if cell.stream.input_kind == "tokens" and x.shape[1] > 1:
            x = x[:, : int(lengths.max())]  # a batch computes only up to its longest sequence
        mask = None if cell.class_mask is None or not masked else cell.class_mask[batch.t]
        return model(x, lengths, mask)

    def loss(self, cell: CellContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y)

    @torch.inference_mode()
    def evaluate(self, cell: CellContext, task_index: int, task: Task) -> dict[str, float]:
        data = task.test
        bs = cell.config.training.eval_batch_size
        correct = torch.zeros((), dtype=torch.long, device=cell.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=cell.device)
        for i in range(0, len(data), bs):
            batch = data[i : i + bs]
            logits = cell.logits(batch)
            loss_sum += F.cross_entropy(logits.float(), batch.y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == batch.y).sum()
        n = max(len(data), 1)
        return {"acc": correct.item() / n, "loss": loss_sum.item() / n}

    def evaluate_stream(self, cell: CellContext) -> dict[str, float]:
        return {}


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def answer_mask(batch: Batch, n: int) -> torch.Tensor:
    """``(B, n)`` bool: the positions whose next token is an answer token (``start - 1`` to
    ``length - 2``): where the model's outputs are trained and scored. With ``start`` 0 (a
    general text), every position but the last of each sequence."""
    pos = torch.arange(n, device=batch.x.device)[None, :]
    return (pos >= batch.start[:, None] - 1) & (pos < batch.lengths[:, None] - 1)


def _trim(batch: Batch) -> tuple[torch.Tensor, int]:
    n = int(batch.lengths.max())
    return batch.x[:, :n], n


def _by_length(examples: Examples, bs: int) -> list[torch.Tensor]:
    """Index batches of ``examples`` in order of length (little padding), on their device."""
    order = torch.argsort(examples.lengths, stable=True)
    return list(order.split(bs))


class Generation:
    """A prompt and an answer per example. Outputs are next-token logits ``(T, vocab)`` at the
    ``T`` positions that predict the batch's answer tokens only (the vocabulary projection of
    the prompt's positions, whose labels are masked, is never computed); the loss is their
    cross-entropy. A task is scored on its test split by its ``metric``: generated answers
    (batched greedy decoding with a KV cache, ``task.max_new_tokens``) against the references,
    or ``accuracy`` by the likelihood of each of the task's label texts after the prompt. Every
    task also gets ``loss``, the cross-entropy of its reference answers."""

    class_logits = False

    def check(self, config: CellConfig, stream: Stream) -> None:
        backbone = _backbone(config)
        if not config.model.causal and (backbone is None or backbone.family != "hf-causal"):
            raise UserError(f"stream '{stream.name}' has generative tasks: they need a causal model "
                            "(model.causal = true, a causal clbench checkpoint, or a Hugging Face causal LM)")

    def build_model(self, config: CellConfig, stream: Stream) -> torch.nn.Module:
        backbone = _backbone(config)
        if backbone is not None and backbone.family == "hf-causal":
            torch.manual_seed(config.seed)
            return load_causal_lm(backbone)
        self.check(config, stream)
        torch.manual_seed(config.seed)
        model = Transformer(config.model, input_kind="tokens", input_dim=backbone.input_dim if backbone else stream.input_dim,
                            n_classes=0, lm_head=True)
        if backbone is not None:
            load_into(model, backbone)
        return model

    def logits(self, cell: CellContext, batch: Batch, model: torch.nn.Module, masked: bool = True) -> torch.Tensor:
        x, n = _trim(batch)
        h = model.hidden_states(x, batch.lengths)  # (B, n, C)
        return model.lm_logits(h[answer_mask(batch, n)])  # (T, V)

    def loss(self, cell: CellContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.targets(batch))

    @staticmethod
    def targets(batch: Batch) -> torch.Tensor:
        """The answer tokens the outputs of :meth:`logits` predict, ``(T,)``."""
        x, n = _trim(batch)
        nxt = torch.cat([x[:, 1:], x[:, :1]], dim=1)
        return nxt[answer_mask(batch, n)]

    def _nll(self, cell: CellContext, batch: Batch) -> torch.Tensor:
        """Each sequence's summed negative log-likelihood of its answer tokens, ``(B,)``."""
        logits = cell.logits(batch).float()
        nll = F.cross_entropy(logits, self.targets(batch), reduction="none")
        rows = torch.nonzero(answer_mask(batch, int(batch.lengths.max())))[:, 0]
        return torch.zeros(len(batch), device=nll.device, dtype=torch.float64).index_add_(0, rows, nll.double())

    @torch.inference_mode()
    def evaluate(self, cell: CellContext, task_index: int, task: Task) -> dict[str, float]:
        data = task.test
        bs = cell.config.training.eval_batch_size
        nll = torch.zeros((), dtype=torch.float64, device=cell.device)
        for idx in _by_length(data, bs):
            nll += self._nll(cell, data[idx]).sum()
        tokens = int((data.lengths - data.start).sum())
        out = {"loss": nll.item() / max(tokens, 1)}
        if task.metric == "accuracy":
            score, out["acc_norm"] = self._rank(cell, task)
        else:
            predictions, references = self.answers(cell, task)
            score = SCORERS[task.metric](predictions, references)
        return {"acc": score, task.metric: score, **out}

    def answers(self, cell: CellContext, task: Task) -> tuple[list[str], list[str]]:
        """The model's greedy answers to ``task``'s test prompts, and the references, as text."""
        data, tok = task.test, cell.stream.tokenizer
        bs = cell.config.training.eval_batch_size
        preds: list[str | None] = [None] * len(data)
        for idx in _by_length(_prompts(data), bs):
            batch = data[idx]
            n = int(batch.start.max())
            out = cell.model.generate(batch.x[:, :n], batch.start, task.max_new_tokens, tok.eos_id)
            for i, row in zip(idx.tolist(), out.tolist()):
                preds[i] = tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row)
        refs = [tok.decode(data.x[i, int(data.start[i]) : int(data.lengths[i]) - 1].tolist()) for i in range(len(data))]
        return preds, refs

    def _rank(self, cell: CellContext, task: Task) -> tuple[float, float]:
        """Accuracy of choosing, for each prompt, the label text the model finds likeliest
        (summed log-probability of the label's tokens and the end token), and ``acc_norm``, the
        same with each log-probability divided by the label text's length in characters
        (lm-evaluation-harness's ``acc_norm``: ``lls / completion_len``). A prompt that would not
        fit the model with the longest label loses tokens from its left, the same for every label."""
        data, tok = task.test, cell.stream.tokenizer
        bs = cell.config.training.eval_batch_size
        labels = tok.encode_answers(list(task.labels))
        L = len(labels)
        room = cell.config.model.max_len - max(len(lab) for lab in labels) - 1  # every candidate fits the model
        chars = torch.tensor([max(len(lab), 1) for lab in task.labels], dtype=torch.float64)
        correct = correct_norm = 0
        for idx in _by_length(_prompts(data), max(1, bs // L)):
            seqs, starts = [], []
            for i in idx.tolist():
                prompt = data.x[i, max(0, int(data.start[i]) - room) : int(data.start[i])].tolist()  # shortened from the left
                for lab in labels:
                    seqs.append(prompt + list(lab) + [tok.eos_id])
                    starts.append(len(prompt))
            cand = examples_of(seqs, starts, [0] * len(seqs), 0).to(cell.device)
            scores = -self._nll(cell, cand).view(len(idx), L)
            correct += int((scores.argmax(1) == data.y[idx]).sum())
            correct_norm += int(((scores / chars.to(scores.device)).argmax(1) == data.y[idx]).sum())
        return correct / max(len(data), 1), correct_norm / max(len(data), 1)

    @torch.inference_mode()
    def evaluate_stream(self, cell: CellContext) -> dict[str, float]:
        from clbench.tasks.generative import scored_bytes

        general = cell.stream.general
        if general is None:
            return {}
        general = general.to(cell.device)
        nll = sum(float(self._nll(cell, general[idx]).sum()) for idx in _by_length(general, cell.config.training.eval_batch_size))
        tokens = int((general.lengths - 1).sum())
        scored = scored_bytes(cell.stream.tokenizer, cell.stream.general)  # bits per byte: tokenizer-independent
        return {"general_ppl": math.exp(nll / max(tokens, 1)), "general_bpb": nll / math.log(2) / max(scored, 1)}


def _prompts(data: Examples) -> Examples:
    """``data`` with each sequence's length cut to its prompt (to batch prompts by length)."""
    return type(data)(data.x, data.y, data.start, data.t, data.start)


KINDS: dict[str, Kind] = {"classification": Classification(), "generation": Generation()}


def kind_name(stream: Stream) -> str:
    """The name of ``stream``'s kind of task (``stream.kind``; "classification" by default)."""
    return getattr(stream, "kind", "classification")


def kind_of(stream: Stream) -> Kind:
    """The kind of ``stream``'s tasks (``stream.kind``, "classification" by default)."""
    name = kind_name(stream)
    if name not in KINDS:
        raise ValueError(f"stream {stream.name!r} has tasks of an unknown kind {name!r} (known: {', '.join(KINDS)})")
    return KINDS[name]
