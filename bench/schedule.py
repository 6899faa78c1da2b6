"""Learning-rate schedules of a cell (``training.schedule``; docs/cpt.md).

* ``constant``: every step at ``training.lr`` (the default; an optimizer is rebuilt for each task).
* ``cosine``: one schedule over the whole stream, as one pre-training run that knew every task in
  advance would have: a linear warm-up over the first ``warmup`` fraction of the stream's steps,
  then a cosine decay to ``decay_to`` × ``lr`` at the stream's end. The stream's steps are planned
  from each task's own training set (``epochs × ⌈n / batch_size⌉``); a task takes its planned
  share of the schedule even where a strategy trains it on more or less data (``cumulative``).
* ``rewarm``: each task re-warms and re-decays (Ibrahim et al. 2024, "Simple and Scalable
  Strategies to Continually Pre-train Large Language Models"): a linear warm-up over the first
  ``warmup`` fraction of the task's steps, then a cosine decay to ``decay_to`` × ``lr`` at the
  task's end.

A schedule multiplies the learning rate each parameter group of the task's optimizer was built
with (a strategy's own groups keep their ratios).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainingConfig

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "rewarm")


def warmup_cosine(step: int, steps: int, warmup_steps: int, decay_to: float) -> float:
    """The factor of the peak learning rate at ``step`` (0-based) of ``steps``: ``(step + 1) /
    warmup_steps`` during the warm-up, then a cosine from 1 down to ``decay_to`` at the last
    step (and ``decay_to`` past it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    return decay_to + (1 - decay_to) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def warmup_steps(fraction: float, steps: int) -> int:
    """The warm-up's steps: ``fraction`` of ``steps``, rounded up (0 when ``fraction`` is 0)."""
    return math.ceil(fraction * steps) if fraction > 0 else 0


class LRSchedule:
    """The learning rate of each step of a cell, for ``training.schedule`` ``cosine`` or
    ``rewarm``. ``planned`` is each task's planned steps (for ``cosine``)."""

    def __init__(self, cfg: TrainingConfig, planned: list[int]):
        if cfg.schedule not in ("cosine", "rewarm"):
            raise ValueError(f"no learning-rate schedule {cfg.schedule!r} to follow")
        self.kind, self.warmup, self.decay_to = cfg.schedule, cfg.warmup, cfg.decay_to
        self.planned = list(planned)
        self.total = sum(self.planned)
        self.task, self.steps, self.step = 0, 0, 0
        self.base: list[float] = []
        self.last_lr = float("nan")

    def start_task(self, index: int, steps: int, optimizer: torch.optim.Optimizer) -> None:
        """Task ``index`` starts: it will take ``steps`` steps with ``optimizer`` (built at the
        peak learning rates)."""
        self.task, self.steps, self.step = index, steps, 0
        self.base = [g["lr"] for g in optimizer.param_groups]

    def factor(self) -> float:
        """The factor of the peak learning rate at the current step."""
        if self.kind == "rewarm":
            return warmup_cosine(self.step, self.steps, warmup_steps(self.warmup, self.steps), self.decay_to)
        share = self.planned[self.task] if self.task < len(self.planned) else 0
        offset = sum(self.planned[: self.task])
        position = offset + int(share * self.step / max(self.steps, 1))  # the task's planned share
        return warmup_cosine(position, self.total, warmup_steps(self.warmup, self.total), self.decay_to)

    def set_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """Set the learning rate of the step about to be taken, and count it."""
        f = self.factor()
        for group, base in zip(optimizer.param_groups, self.base):
            group["lr"] = base * f
        self.last_lr = self.base[0] * f if self.base else float("nan")
        self.step += 1
