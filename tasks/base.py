"""Stream and task types.

A :class:`Stream` is an ordered list of :class:`Task` objects plus what a model needs to know
about its inputs and labels. Examples are held as tensors, ready to batch:

* ``x``: ``(n, N)`` int64 token ids (input kind ``tokens``), or ``(n, N, P)`` float32 patch
  vectors (input kind ``patches``), padded to a common ``N``;
* ``y``: ``(n,)`` int64 labels, indices into ``Stream.labels``;
* ``lengths``: ``(n,)`` int64 number of valid positions of each sequence (padding is expressed
  as lengths, never as a mask tensor);
* ``t``: ``(n,)`` int64 index of the task each example comes from (its position in the stream),
  so a batch that mixes tasks (replay) can still be masked per example in task-incremental runs;
* ``start``: ``(n,)`` int64, in generative streams only (else None): the position where each
  sequence's answer begins (the length of its prompt). ``x`` holds prompt, answer and the end
  token; the loss is taken on the answer's positions only.

A stream's ``kind`` says which: ``"classification"`` (``y`` is the label) or ``"generation"``
(``y`` is the index of the answer among the task's ``labels`` where it has label texts, else 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import torch

Scenario = Literal["class-incremental", "task-incremental", "domain-incremental"]
SCENARIOS: tuple[str, ...] = ("class-incremental", "task-incremental", "domain-incremental")
InputKind = Literal["tokens", "patches"]
Kind = Literal["classification", "generation"]


@dataclass
class Examples:
    """A set of examples as tensors (see the module docstring for shapes)."""

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor
    t: torch.Tensor
    start: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, idx) -> "Examples":
        return Examples(self.x[idx], self.y[idx], self.lengths[idx], self.t[idx],
                        None if self.start is None else self.start[idx])

    def to(self, device) -> "Examples":
        return Examples(*(None if a is None else a.to(device) for a in (self.x, self.y, self.lengths, self.t, self.start)))

    @staticmethod
    def cat(parts: Sequence["Examples"]) -> "Examples":
        """Concatenate examples; sequences are right-padded to the longest ``N``."""
        parts = [p for p in parts if len(p)] or list(parts[:1])
        n_max = max(p.x.shape[1] for p in parts)
        xs = []
        for p in parts:
            pad = n_max - p.x.shape[1]
            if pad:
                shape = (p.x.shape[0], pad, *p.x.shape[2:])
                p_x = torch.cat([p.x, p.x.new_zeros(shape)], dim=1)
            else:
                p_x = p.x
            xs.append(p_x)
        starts = [p.start for p in parts]
        if any(s is None for s in starts) and not all(s is None for s in starts):
            raise ValueError("cannot concatenate generative examples (with answer starts) and others")
        return Examples(
            torch.cat(xs),
            torch.cat([p.y for p in parts]),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.t for p in parts]),
            None if starts[0] is None else torch.cat(starts),
        )

    def empty(self) -> "Examples":
        return self[self.y.new_zeros(0, dtype=torch.long)]


#: A training batch is a set of examples too.
Batch = Examples


@dataclass
class Task:
    """One task of a stream.

    :param name: a readable name (``"digits 0-1"``, ``"TC/agnews"``).
    :param classes: the label indices (into ``Stream.labels``) this task uses (classification).
    :param metric: the task's primary score, the one its accuracy matrix holds (generation:
        ``exact_match``, ``rouge_l``, ``accuracy`` by ranking ``labels``, ...;
        :mod:`clbench.tasks.scoring`).
    :param labels: the answer texts to rank (generation tasks with a label set), else empty.
    :param max_new_tokens: the most tokens generated for an answer (generation).
    :param max_new_tokens_derived: ``max_new_tokens`` was derived from the test answers (the
        longest + 8, :func:`clbench.tasks.generative.answer_cap`), not given: a validation split
        derives it again from its own examples, so that no statistic of the test split reaches it.
    """

    name: str
    classes: tuple[int, ...]
    train: Examples
    test: Examples
    metric: str = "acc"
    labels: tuple[str, ...] = ()
    max_new_tokens: int = 0
    max_new_tokens_derived: bool = False


@dataclass
class Stream:
    """An ordered list of tasks and what a model needs to know about them.

    :param input_dim: the vocabulary size (tokens) or the patch vector size (patches).
    :param max_len: the longest sequence, in positions.
    :param params: the factory's parameters, as the cell recorded them.
    :param kind: ``"classification"`` or ``"generation"`` (:mod:`clbench.kinds`).
    :param general: generative streams: held-out general text (token sequences, ``start`` 0)
        whose perplexity measures the loss of general ability; None for none.
    """

    name: str
    scenario: Scenario
    input_kind: InputKind
    labels: tuple[str, ...]
    tasks: list[Task]
    input_dim: int
    max_len: int
    tokenizer: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "classification"
    general: Examples | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}")

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def class_mask(self) -> torch.Tensor | None:
        """``(n_tasks, n_classes)`` bool: which logits each task may use, in task-incremental
        scenarios of classification tasks (None otherwise: the head is not masked)."""
        if self.scenario != "task-incremental" or self.kind != "classification":
            return None
        mask = torch.zeros(self.n_tasks, self.n_classes, dtype=torch.bool)
        for i, task in enumerate(self.tasks):
            mask[i, list(task.classes)] = True
        return mask

    def union(self, upto: int | None = None) -> Examples:
        """The training examples of tasks ``0..upto`` (all tasks when None)."""
        tasks = self.tasks if upto is None else self.tasks[: upto + 1]
        return Examples.cat([t.train for t in tasks])

    def reorder(self, order: Sequence[int]) -> "Stream":
        """The same stream with its tasks in ``order`` (positions into the current list)."""
        tasks = []
        for pos, i in enumerate(order):
            task = self.tasks[i]
            tasks.append(
                replace(
                    task,
                    train=replace(task.train, t=torch.full_like(task.train.t, pos)),
                    test=replace(task.test, t=torch.full_like(task.test.t, pos)),
                )
            )
        return replace(self, tasks=tasks)
