"""Kinds of task: how a cell turns a batch into outputs and a loss, and a task into scores.

The loop (:mod:`clbench.loop`) never looks inside a batch: it asks the stream's kind. A kind has
three methods:

* ``logits(cell, batch, model, masked)``: the model's outputs for a batch (what strategies match,
  distil or store, and what ``loss_terms`` gets);
* ``loss(cell, batch, logits)``: the scalar training loss of those outputs;
* ``evaluate(cell, task_index, task)``: ``{metric: value}`` on the task's test split. Its
  ``"acc"`` entry is the task's primary score, the one that fills the accuracy matrix (and so
  ACC, BWT, FWT, forgetting); every entry becomes a row of ``measurements``.

``classification`` is the kind of every stream whose ``Stream.kind`` says nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from .cell import CellContext
    from clbench.tasks import Batch, Stream, Task


class Kind(Protocol):
    def logits(self, cell: CellContext, batch: Batch, model: torch.nn.Module, masked: bool = True) -> torch.Tensor: ...

    def loss(self, cell: CellContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, cell: CellContext, task_index: int, task: Task) -> dict[str, float]: ...


class Classification:
    """A label per example: ``(B, n_classes)`` logits from the model's head over the stream's
    label space (masked to the example's task in task-incremental streams), cross-entropy, and
    accuracy (``acc``) and mean cross-entropy (``loss``) on the test split."""

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


KINDS: dict[str, Kind] = {"classification": Classification()}


def kind_of(stream: Stream) -> Kind:
    """The kind of ``stream``'s tasks (``stream.kind``, "classification" by default)."""
    name = getattr(stream, "kind", "classification")
    if name not in KINDS:
        raise ValueError(f"stream {stream.name!r} has tasks of an unknown kind {name!r} (known: {', '.join(KINDS)})")
    return KINDS[name]
