"""``replay``: experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual
Learning"): a small memory of past examples, mixed into every training batch.

Each training batch of ``b`` new examples gets ``round(ratio × b)`` examples drawn from the
memory (without replacement) appended to it, through the ``train_batch`` hook. The memory is a
:class:`~clbench.strategies.buffer.Buffer`: ``reservoir`` (a uniform sample of everything seen)
or ``class-balanced`` (equal counts per class). With ``update = "online"`` every new batch is
offered to the memory after it was mixed (the paper's reservoir ER); with ``"task-end"`` the
whole task is offered once it has been trained on, so the memory only ever holds earlier tasks.

With ``training.batching = "length"`` (batches of similar length, little padding), the memory
examples of ``length_window`` batches are drawn at once, uniformly as above, and each batch takes
those of the pool nearest its own lengths (:meth:`Replay.by_length`): every memory example has
the chance it had. Memory examples still longer or shorter than the new ones are computed as a
group of their own (:func:`clbench.tasks.batching.length_groups`), so mixing spends little padding.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from clbench import hookimpl
from clbench.params import require
from clbench.tasks import Examples

from .buffer import Buffer, Policy, shuffled


class Replay:
    """Experience replay.

    :param memory_size: examples the memory holds.
    :param policy: ``"reservoir"`` or ``"class-balanced"``.
    :param ratio: memory examples mixed in per new example (1.0: as many as the batch has).
    :param update: ``"online"`` (offer each batch) or ``"task-end"`` (offer each whole task).
    """

    #: What ``clbench tune`` searches by default (docs/tuning.md): the mix, not the memory (a budget the suite fixes).
    search_space = {"ratio": {"log-uniform": [0.25, 4.0]}}

    def __init__(
        self,
        memory_size: int = 200,
        policy: Policy = "reservoir",
        ratio: float = 1.0,
        update: Literal["online", "task-end"] = "online",
    ):
        require(ratio > 0 and math.isfinite(ratio), "ratio", "a positive number", ratio)
        self.memory = Buffer(memory_size, policy, name="replay")
        self.ratio = ratio
        self.update = update
        self.pool: Examples | None = None  # memory examples drawn for the next batches (length batching)

    @hookimpl
    def train_batch(self, cell, batch):
        mixed = None
        if len(self.memory):
            k = max(1, round(self.ratio * len(batch)))
            if cell.config.training.batching == "length":
                mem = self.by_length(batch, k, cell.generator, cell.config.training.length_window)
            else:
                mem, _ = self.memory.sample(k, cell.generator)
            mixed = Examples.cat([batch, mem])
        if self.update == "online":
            self.memory.add(batch, cell.rng)
            self.memory.report(cell)
        return mixed

    def by_length(self, batch: Examples, k: int, generator, window: int) -> Examples:
        """``k`` memory examples for ``batch``: from a pool of ``k × window`` drawn at once (and
        drawn again when it runs short), the ``k`` whose lengths are nearest the range of the
        batch's (inside it first, in the order drawn)."""
        if self.pool is None or len(self.pool) < k:
            fresh, _ = self.memory.sample(k * max(window, 1), generator)
            self.pool = fresh if self.pool is None else Examples.cat([self.pool, fresh])
        lengths = self.pool.lengths
        outside = (lengths - lengths.clamp(int(batch.lengths.min()), int(batch.lengths.max()))).abs()
        order = torch.argsort(outside, stable=True)
        mem, self.pool = self.pool[order[:k]], self.pool[order[k:]]
        return mem

    @hookimpl
    def after_task(self, cell, task):
        self.pool = None  # the next task draws from the memory as it is then
        if self.update == "task-end":
            self.memory.add(shuffled(task.train, cell.rng), cell.rng)
            self.memory.report(cell)


@hookimpl
def register_strategies(register):
    register("replay", Replay, description="experience replay: a memory mixed into every batch (Chaudhry et al. 2019)")
