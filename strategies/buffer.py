"""A memory of past examples for the rehearsal strategies (``replay``, ``agem``, ``der``,
``der++``, ``gdumb``), with two policies for what it keeps once it is full:

* ``reservoir``: every example offered so far has the same chance, ``capacity / seen``, of being
  held (Vitter's algorithm R, as in Chaudhry et al. 2019's experience replay).
* ``class-balanced``: class-balanced reservoir sampling (Chrysakis & Moens 2020): a full memory
  makes room for an example of a class that is not among the largest by evicting a random
  example of a largest class; an example of a largest class replaces a random one of its own
  class with probability ``held / seen`` of that class. The classes end up with equal counts
  (within one), each a uniform sample of what was offered of it.

Examples are stored as :class:`clbench.tasks.Examples` on the device they come from, with
optional extra per-example tensors (DER keeps logits). All randomness comes from the numpy
generator passed in (the cell's ``rng``), so a seeded cell fills its memory the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from clbench.params import require
from clbench.tasks import Examples

Policy = Literal["reservoir", "class-balanced"]
POLICIES: tuple[str, ...] = ("reservoir", "class-balanced")


def shuffled(examples: Examples, rng: np.random.Generator) -> Examples:
    """``examples`` in a random order (to offer a whole task to a memory)."""
    perm = torch.as_tensor(rng.permutation(len(examples)), device=examples.y.device)
    return examples[perm]


class Buffer:
    """A fixed-capacity memory of examples.

    :param capacity: the most examples it holds.
    :param policy: ``"reservoir"`` or ``"class-balanced"`` (see the module docstring).
    :param name: how :meth:`report` names it in ``cell.info`` (a cell may hold several).
    """

    def __init__(self, capacity: int, policy: Policy = "reservoir", name: str = "memory"):
        require(isinstance(capacity, int) and capacity > 0, "memory_size", "a positive integer", capacity)
        require(policy in POLICIES, "policy", " or ".join(repr(p) for p in POLICIES), policy)
        self.capacity = capacity
        self.policy = policy
        self.name = name
        self.data: Examples | None = None
        self.extras: dict[str, torch.Tensor] = {}
        self.seen = 0  # examples offered so far
        self.seen_per_class: dict[int, int] = {}
        self.full_classes: set[int] = set()  # CBRS: classes that are or were the largest

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def class_counts(self) -> dict[int, int]:
        """How many examples of each class the memory holds."""
        if self.data is None:
            return {}
        ys, counts = np.unique(self.data.y.cpu().numpy(), return_counts=True)
        return {int(y): int(c) for y, c in zip(ys, counts)}

    # -- adding --------------------------------------------------------------------------------
    def add(self, examples: Examples, rng: np.random.Generator, **extras: torch.Tensor) -> None:
        """Offer ``examples`` (in order) to the memory; ``extras`` are per-example tensors kept
        alongside (the same keys on every call)."""
        n = len(examples)
        if n == 0:
            return
        held = len(self)
        if self.policy == "reservoir":
            src = self._reservoir(n, held, rng)
        else:
            src = self._class_balanced(examples.y.cpu().numpy(), held, rng)
        # src[s] indexes cat(old, incoming): slot s keeps its old example or takes a new one
        index = torch.as_tensor(src, dtype=torch.long, device=examples.y.device)
        pool = examples if self.data is None else Examples.cat([self.data, examples])
        self.data = pool[index]
        for key, value in extras.items():
            value = value.detach()
            both = value if key not in self.extras else torch.cat([self.extras[key], value])
            self.extras[key] = both[index]

    def _reservoir(self, n: int, held: int, rng: np.random.Generator) -> np.ndarray:
        fill = min(self.capacity - held, n)
        src = np.arange(held + fill)  # old slots keep themselves; new slots take incoming 0..fill-1
        rest = np.arange(fill, n)
        if len(rest):
            # the i-th incoming example is the (seen + i + 1)-th offered: it replaces slot j if
            # j = uniform{0, ..., seen + i} falls inside the memory (later ones win, as in order)
            j = rng.integers(0, self.seen + rest + 1)
            keep = j < self.capacity
            slot, inc = j[keep][::-1], rest[keep][::-1]
            slot, last = np.unique(slot, return_index=True)  # the latest example for each slot
            src[slot] = held + inc[last]
        self.seen += n
        return src

    def _class_balanced(self, y: np.ndarray, held: int, rng: np.random.Generator) -> np.ndarray:
        old_y = np.zeros(0, dtype=np.int64) if self.data is None else self.data.y.cpu().numpy()
        slot_y = list(old_y)  # the class in each slot
        src = list(range(held))
        counts: dict[int, int] = {}
        for c in slot_y:
            counts[c] = counts.get(c, 0) + 1
        for i, c in enumerate(int(v) for v in y):
            self.seen += 1
            self.seen_per_class[c] = self.seen_per_class.get(c, 0) + 1
            new = held + i
            if len(src) < self.capacity:
                src.append(new)
                slot_y.append(c)
                counts[c] = counts.get(c, 0) + 1
                continue
            largest = max(counts.values())
            self.full_classes.update(k for k, v in counts.items() if v == largest)
            if c not in self.full_classes:
                victims = [k for k, v in counts.items() if v == largest]
                victim = victims[rng.integers(len(victims))]
                slots = [s for s, k in enumerate(slot_y) if k == victim]
                s = slots[rng.integers(len(slots))]
                counts[victim] -= 1
                counts[c] = counts.get(c, 0) + 1
                slot_y[s], src[s] = c, new
            elif rng.random() * self.seen_per_class[c] < counts.get(c, 0):
                slots = [s for s, k in enumerate(slot_y) if k == c]
                s = slots[rng.integers(len(slots))]
                src[s] = new
        return np.asarray(src, dtype=np.int64)

    # -- reading -------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> tuple[Examples, dict[str, torch.Tensor]]:
        """``n`` examples drawn without replacement (all of them when fewer are held) and their
        extras; ``generator`` is the cell's seeded torch generator."""
        assert self.data is not None, "sample() from an empty memory"
        k = min(n, len(self))
        idx = torch.randperm(len(self), generator=generator)[:k].to(self.data.y.device)
        return self.data[idx], {key: v[idx] for key, v in self.extras.items()}

    def report(self, cell) -> None:
        """Record this memory's size in ``cell.info``: ``buffer_size`` is the total over the
        memories of the cell's strategies (what the ``cells`` table shows)."""
        sizes = cell.info.setdefault("buffer_sizes", {})
        sizes[self.name] = len(self)
        cell.info["buffer_size"] = sum(sizes.values())
