"""Kinds of task: how a cell builds its model, turns a batch into outputs and a loss, and a task
into scores.

A kind belongs to a task (``Task.kind``), not to its stream: a stream may hold text domains,
instruction tasks and classification tasks in sequence (``Stream.kinds``). The loop
(:mod:`clbench.loop`) never looks inside a batch: it asks the kind of the task it trains for the
outputs and loss of a batch (:func:`kind_of`), the kind of each task for that task's scores, and
the stream's model kind (:func:`model_kind`) for the model and the stream's own scores. A kind has:

* ``name``: its name in :data:`KINDS` (what ``Task.kind`` and a strategy's ``serves`` say);
* ``model``: the model it trains, ``"classifier"`` (a head over the stream's labels) or
  ``"language-model"`` (a causal LM): every kind of a stream trains the same one
  (:func:`check_stream`), so a batch that mixes tasks (replay) has one kind of outputs;
* ``class_logits``: True when a batch's outputs are one row of logits over the stream's label
  space per example (classification), False when they are next-token logits (generation,
  corpus): what a strategy that works on class logits branches on;
* ``check(config, stream)``: a one-line :class:`~clbench.errors.UserError` if the cell's model
  cannot do the stream's tasks (called by :func:`clbench.cell.refuse`, before anything runs);
* ``build_model(config, stream)``: the cell's model, seeded with the cell's seed;
* ``logits(cell, batch, model, masked)``: the model's outputs for a batch (what strategies match,
  distil or store, and what ``loss_terms`` gets);
* ``loss(cell, batch, logits)``: the scalar training loss of those outputs;
* ``evaluate(cell, task_index, task)``: ``{metric: value}`` on the task's test split. Its
  ``"acc"`` entry is the task's primary score (``task.metric``, in its own unit: its direction is
  :func:`direction`), the one that fills the accuracy matrix (and so ACC, BWT, FWT, forgetting);
  every entry becomes a row of ``measurements``;
* ``evaluate_stream(cell)``: ``{metric: value}`` about the stream as a whole, not a task (the
  perplexity of a language-model stream's general text), recorded with ``eval_task = -1``.

``classification``: a label per example, the model's head over the stream's label space.
``generation``: a prompt and an answer per example (:mod:`clbench.tasks.generative`), a causal
language model, next-token cross-entropy on the answer's tokens, answers scored by the task's
metric (:mod:`clbench.tasks.scoring`). ``corpus``: a text domain (:mod:`clbench.tasks.corpus`),
packed sequences whose every token is predicted, scored by perplexity and bits per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from .errors import UserError
from .models.backbones import is_pretrained, load_into, resolve
from .models.decoding import decode, shared_prefix
from .models.hf import load_causal_lm
from .models.transformer import Transformer

from clbench.tasks.batching import length_groups
from clbench.tasks.generative import examples_of, scored_bytes
from clbench.tasks.scoring import SCORERS, direction

if TYPE_CHECKING:  # pragma: no cover
    from .cell import CellContext
    from .config import CellConfig
    from clbench.tasks import Batch, Examples, Stream, Task


class Kind(Protocol):
    name: str
    model: str
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

    name = "classification"
    model = "classifier"
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
        groups = computed_groups(cell, batch) if cell.stream.input_kind == "tokens" else None
        if groups is not None:  # rows of very different lengths: two passes, the rows back in their order
            parts = [self._logits(cell, batch[g], model, masked) for g in groups]
            return torch.cat(parts)[torch.argsort(torch.cat(groups))]
        return self._logits(cell, batch, model, masked)

    def _logits(self, cell: CellContext, batch: Batch, model: torch.nn.Module, masked: bool) -> torch.Tensor:
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


def computed_groups(cell, batch: Batch) -> list[torch.Tensor] | None:
    """With ``training.batching = "length"``, the two groups of similar lengths a batch of
    tokens is computed in, one forward pass each, in this order
    (:func:`clbench.tasks.batching.length_groups`), or None: one pass."""
    config = getattr(cell, "config", None)
    if config is None or config.training.batching != "length":
        return None
    return length_groups(batch.lengths)


def _trim(batch: Batch) -> tuple[torch.Tensor, int]:
    n = int(batch.lengths.max())
    return batch.x[:, :n], n


def _by_length(examples: Examples, bs: int) -> list[torch.Tensor]:
    """Index batches of ``examples`` in order of length (little padding), on their device."""
    order = torch.argsort(examples.lengths, stable=True)
    return list(order.split(bs))


@dataclass
class TaskRun:
    """What :meth:`Generation.run` computes for each test example of a task (``N`` of them)."""

    nll: torch.Tensor  # (N,) float64: the reference answer's negative log-likelihood (its tokens', the end token's)
    generated: torch.Tensor | None = None  # (N, max_new_tokens): greedy answers' ids, the end token after their end
    label_scores: torch.Tensor | None = None  # (N, L) float64: each label text's log-likelihood after the prompt


class Generation:
    """A prompt and an answer per example. Outputs are next-token logits ``(T, vocab)`` at the
    ``T`` positions that predict the batch's answer tokens only (the vocabulary projection of
    the prompt's positions, whose labels are masked, is never computed); the loss is their
    cross-entropy. A task is scored on its test split by its ``metric``: generated answers
    (batched greedy decoding with a KV cache, ``task.max_new_tokens``) against the references,
    or ``accuracy`` by the likelihood of each of the task's label texts after the prompt. Every
    task also gets ``loss``, the cross-entropy of its reference answers. All three come from one
    pass per example (:meth:`run`), after the prompts' shared prefix."""

    def __init__(self, share_prefix: bool = True):
        self.share_prefix = share_prefix  # compute the prompts' common prefix once per evaluation

    name = "generation"
    model = "language-model"
    class_logits = False
    what = "generative tasks"  # how a refusal names the stream's tasks

    def check(self, config: CellConfig, stream: Stream) -> None:
        backbone = _backbone(config)
        if not config.model.causal and (backbone is None or backbone.family != "hf-causal"):
            raise UserError(f"stream '{stream.name}' has {self.what}: they need a causal model "
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
        groups = computed_groups(cell, batch)
        if groups is not None:  # rows of very different lengths: two passes, the outputs back in their order
            parts = [self._logits(batch[g], model) for g in groups]
            count = batch.lengths - batch.start.clamp(min=1)  # each row's outputs (answer_mask)
            first = torch.cumsum(count, 0) - count
            dest = []
            for g in groups:
                c = count[g]
                within = torch.arange(int(c.sum()), device=c.device) - (torch.cumsum(c, 0) - c).repeat_interleave(c)
                dest.append(first[g].repeat_interleave(c) + within)
            return torch.cat(parts)[torch.argsort(torch.cat(dest))]
        return self._logits(batch, model)

    @staticmethod
    def _logits(batch: Batch, model: torch.nn.Module) -> torch.Tensor:
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
        logits = self.logits(cell, batch, cell.model).float()
        nll = F.cross_entropy(logits, self.targets(batch), reduction="none")
        rows = torch.nonzero(answer_mask(batch, int(batch.lengths.max())))[:, 0]
        return torch.zeros(len(batch), device=nll.device, dtype=torch.float64).index_add_(0, rows, nll.double())

    @torch.inference_mode()
    def evaluate(self, cell: CellContext, task_index: int, task: Task) -> dict[str, float]:
        data = task.test
        ranked = task.metric == "accuracy"
        run = self.run(cell, task, generate=not ranked, rank=ranked)
        tokens = int((data.lengths - data.start).sum())
        out = {"loss": float(run.nll.sum()) / max(tokens, 1)}
        if ranked:
            score = int((run.label_scores.argmax(1) == data.y).sum()) / max(len(data), 1)
            # lm-evaluation-harness's acc_norm: each log-likelihood over its label text's length in characters
            chars = torch.tensor([max(len(lab), 1) for lab in task.labels], dtype=torch.float64, device=data.y.device)
            out["acc_norm"] = int(((run.label_scores / chars).argmax(1) == data.y).sum()) / max(len(data), 1)
        else:
            predictions, references = self.texts(cell, data, run.generated)
            score = SCORERS[task.metric](predictions, references)
        return {"acc": score, task.metric: score, **out}

    @torch.inference_mode()
    def answers(self, cell: CellContext, task: Task) -> tuple[list[str], list[str]]:
        """The model's greedy answers to ``task``'s test prompts, and the references, as text."""
        return self.texts(cell, task.test, self.run(cell, task, generate=True).generated)

    @staticmethod
    def texts(cell: CellContext, data: Examples, generated: torch.Tensor) -> tuple[list[str], list[str]]:
        """Generated ids ``(N, max_new_tokens)`` as text (up to the end token), and the references."""
        tok = cell.stream.tokenizer
        preds = [tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row) for row in generated.tolist()]
        refs = [tok.decode(data.x[i, int(data.start[i]) : int(data.lengths[i]) - 1].tolist()) for i in range(len(data))]
        return preds, refs

    @torch.inference_mode()
    def run(self, cell: CellContext, task: Task, generate: bool = False, rank: bool = False) -> TaskRun:
        """One pass over ``task``'s test split: each example's prompt and reference answer are fed
        once, in batches of similar length, continuing from the keys and values of the prefix
        that every prompt shares (computed once, when ``share_prefix``). That pass gives the
        answer's negative log-likelihood, teacher-forced, and leaves the prompt's keys and values
        in a cache: greedy decoding (``generate``) and the label texts' likelihoods (``rank``)
        continue from it, and the first answer token's logits are the pass's own."""
        data, model = task.test, cell.model
        bs = cell.config.training.eval_batch_size
        N, device = len(data), data.x.device
        P = shared_prefix(data.x, data.start) if self.share_prefix else 0
        prefix = None
        if P:
            prefix = model.new_cache(1, device)
            model.extend(prefix, data.x[:1, :P])
        out = TaskRun(nll=torch.zeros(N, dtype=torch.float64, device=device))
        if generate:
            out.generated = torch.full((N, task.max_new_tokens), cell.stream.tokenizer.eos_id, dtype=torch.long, device=device)
        if rank:
            labels = cell.stream.tokenizer.encode_answers(list(task.labels))
            out.label_scores = torch.zeros(N, len(labels), dtype=torch.float64, device=device)
        for idx in _by_length(data, bs):
            batch = data[idx]
            B, n = len(batch), int(batch.lengths.max())
            cache = model.new_cache(B, device) if prefix is None else prefix.take(torch.zeros(B, dtype=torch.long, device=device))
            h = model.extend(cache, batch.x[:, P:n], batch.lengths - P)  # (B, n - P, C)
            logits = model.lm_logits(h[answer_mask(batch, n)[:, P:]]).float()  # (T, V): P < every answer position
            nll = F.cross_entropy(logits, self.targets(batch), reduction="none").double()
            answer = batch.lengths - batch.start
            out.nll[idx] = torch.zeros(B, dtype=torch.float64, device=device).index_add_(
                0, torch.arange(B, device=device).repeat_interleave(answer), nll)
            first = logits[torch.cumsum(answer, 0) - answer]  # (B, V): each prompt's next-token logits
            cache.truncate(batch.start)  # the prompts' keys and values; the answers' are forgotten
            if generate:
                limits = (cell.config.model.max_len - batch.start).clamp(max=task.max_new_tokens)
                out.generated[idx] = decode(model, cache, first, limits, task.max_new_tokens, cell.stream.tokenizer.eos_id)
            if rank:
                out.label_scores[idx] = self._label_scores(cell, batch, cache, first, labels)
        return out

    def _label_scores(self, cell: CellContext, batch: Batch, cache, first: torch.Tensor,
                      labels: list[list[int]]) -> torch.Tensor:
        """``(B, L)``: each label text's log-likelihood after each prompt (its tokens' and the end
        token's log-probabilities, summed), continuing from the prompts' ``cache`` and next-token
        logits ``first``. A prompt that would not fit the model with the longest label loses
        tokens from its left (the same for every label) and is scored on its own, from nothing."""
        model, tok = cell.model, cell.stream.tokenizer
        B, L, device = len(batch), len(labels), first.device
        seqs = [list(lab) + [tok.eos_id] for lab in labels]  # what each candidate's answer is
        width = max(len(q) for q in seqs) - 1
        feed = torch.full((L, max(width, 1)), tok.eos_id, dtype=torch.long, device=device)  # a label's tokens but its last
        target = torch.full((L, max(width, 1)), -100, dtype=torch.long, device=device)  # what they predict
        for j, q in enumerate(seqs):
            feed[j, : len(q) - 1] = torch.tensor(q[:-1], device=device)
            target[j, : len(q) - 1] = torch.tensor(q[1:], device=device)
        fed = torch.tensor([len(q) - 1 for q in seqs], device=device)
        scores = first.log_softmax(-1)[:, [q[0] for q in seqs]].double()  # (B, L): each label's first token
        chunk = max(1, cell.config.training.eval_batch_size // L)  # candidates per pass, as prompts × labels
        for rows in torch.arange(B, device=device).split(chunk):
            c = cache.take(rows.repeat_interleave(L))
            h = model.extend(c, feed.repeat(len(rows), 1), fed.repeat(len(rows)))
            logp = model.lm_logits(h).float().log_softmax(-1)  # (R·L, width, V)
            t = target.repeat(len(rows), 1)
            picked = logp.gather(-1, t.clamp(min=0)[..., None])[..., 0].masked_fill(t < 0, 0.0)
            scores[rows] += picked.double().sum(1).view(len(rows), L)
        room = cell.config.model.max_len - max(len(q) for q in seqs)  # every candidate fits the model
        for i in (batch.start > room).nonzero()[:, 0].tolist():
            s = int(batch.start[i])
            prompt = batch.x[i, s - room : s].tolist()  # shortened from the left
            cand = examples_of([prompt + q for q in seqs], [len(prompt)] * L, [0] * L, 0).to(device)
            scores[i] = -self._nll(cell, cand)
        return scores

    @torch.inference_mode()
    def text_scores(self, cell: CellContext, data: Examples) -> dict[str, float]:
        """The scores of text sequences with ``start`` 0 (a general text, a text domain's test
        split), every token after each sequence's first predicted: ``ppl``, ``exp`` of the mean
        negative log-likelihood per predicted token; ``bpb``, the summed negative log-likelihood
        in bits over the UTF-8 bytes of the predicted tokens
        (:func:`clbench.tasks.generative.scored_bytes`), comparable between models with
        different tokenizers; ``loss``, the mean per predicted token, in nats."""
        data = data.to(cell.device)
        nll = torch.zeros((), dtype=torch.float64, device=cell.device)
        for idx in _by_length(data, cell.config.training.eval_batch_size):
            nll += self._nll(cell, data[idx]).sum()
        total = nll.item()
        loss = total / max(int((data.lengths - 1).clamp(min=0).sum()), 1)
        return {"ppl": math.exp(loss), "bpb": total / math.log(2) / max(scored_bytes(cell.stream.tokenizer, data), 1),
                "loss": loss}

    def evaluate_stream(self, cell: CellContext) -> dict[str, float]:
        if cell.stream.general is None:
            return {}
        scores = self.text_scores(cell, cell.stream.general)
        return {"general_ppl": scores["ppl"], "general_bpb": scores["bpb"]}


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


class Corpus(Generation):
    """A text domain (continual pre-training): each example is a packed sequence of the domain's
    tokens with ``start`` 0, so the outputs and the loss are the generation kind's at every
    position but the last: next-token cross-entropy over every token. A batch may mix such
    sequences with prompt-and-answer examples (replay on a mixed stream): each is trained on its
    own targets. Scored on the test split by

    * ``ppl``: the perplexity, ``exp`` of the mean negative log-likelihood per predicted token;
    * ``bpb``: bits per byte, the summed negative log-likelihood in bits over the UTF-8 bytes of
      the predicted tokens (:func:`clbench.tasks.generative.scored_bytes`): unlike a perplexity
      per token, comparable between models with different tokenizers;
    * ``loss``: the mean negative log-likelihood per predicted token, in nats.

    The task's ``metric`` (``ppl`` or ``bpb``) is its primary score; both are lower-is-better."""

    name = "corpus"
    what = "text domains (corpus tasks)"

    def evaluate(self, cell: CellContext, task_index: int, task: Task) -> dict[str, float]:
        out = self.text_scores(cell, task.test)
        return {"acc": out[task.metric], **out}


KINDS: dict[str, Kind] = {"classification": Classification(), "generation": Generation(), "corpus": Corpus()}


def kind_of(task: Task) -> Kind:
    """The kind of ``task`` (``task.kind``)."""
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name!r} is of an unknown kind {task.kind!r} (known: {', '.join(KINDS)})")
    return KINDS[task.kind]


def check_stream(stream: Stream) -> None:
    """A one-line :class:`UserError` unless one model can train every task of ``stream``: all its
    kinds train the same ``model`` (a classifier with a head over the labels, or a language
    model), and the tasks of a kind whose primary score is lower-is-better share that score (so
    that a kind's tasks can be averaged in one unit)."""
    for task in stream.tasks:
        kind_of(task)
    models: dict[str, list[str]] = {}
    for name in stream.kinds:
        models.setdefault(KINDS[name].model, []).append(name)
    if len(models) > 1:
        raise UserError(
            f"stream '{stream.name}' mixes {' and '.join(models['classifier'])} tasks (a head over its labels) with "
            f"{' and '.join(models['language-model'])} tasks (a language model): one model cannot train both; "
            "give it classification tasks as generative tasks scored by ranking their labels (metric 'accuracy')")
    for name in stream.kinds:
        lower = sorted({t.metric for t in stream.tasks if t.kind == name and direction(t.metric) == "lower"})
        if len(lower) > 1:
            raise UserError(f"stream '{stream.name}': its {name} tasks are scored by {' and '.join(lower)}: "
                            "give them one score")


def model_kind(stream: Stream) -> Kind:
    """The kind that builds ``stream``'s model and scores the stream as a whole (its general
    text): its first task's (every kind of a stream trains the same model: :func:`check_stream`)."""
    return kind_of(stream.tasks[0])
