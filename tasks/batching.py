"""The order in which a task's training examples are cut into batches.

``training.batching`` in a suite picks one:

* ``"random"``: a random permutation cut into consecutive batches (the default).
* ``"length"``: the permutation is cut into windows of ``training.length_window`` batches; each
  window is sorted by sequence length and cut into batches, and the batches of the epoch are
  shuffled. Sequences in a batch then have similar lengths, so trimming a batch to its longest
  sequence leaves few padding positions to compute; within a window the examples still mix.

Both draw only from the cell's seeded generator, so a cell runs the same batches every time.

With ``"length"``, a batch that a strategy made of sequences of different lengths (replay mixing
its memory into a batch of new examples) is computed in two groups of similar lengths, each
trimmed to its own longest, where that saves a tenth of the positions or more
(:func:`length_groups`): the outputs are the same, row for row, and the padding that length
batching saved is not spent again.
"""

from __future__ import annotations

import torch

BATCHINGS = ("random", "length")


def batch_indices(
    lengths: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    batching: str = "random",
    window: int = 16,
) -> list[torch.Tensor]:
    """One epoch of batches: index tensors (on the CPU) into the ``n`` examples.

    :param lengths: ``(n,)`` sequence lengths of the examples.
    :param window: batches per length-sorted window (``batching="length"``).
    """
    n = int(lengths.shape[0])
    perm = torch.randperm(n, generator=generator)
    if batching == "random":
        return list(perm.split(batch_size))
    if batching != "length":
        raise ValueError(f"unknown batching {batching!r} (known: {', '.join(BATCHINGS)})")
    lens = lengths.detach().cpu()[perm]
    batches: list[torch.Tensor] = []
    for w in perm.split(batch_size * max(window, 1)):
        # stable sort: equal lengths keep their random order
        order = torch.sort(lens[: len(w)], stable=True).indices
        batches.extend(w[order].split(batch_size))
        lens = lens[len(w) :]
    shuffle = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffle.tolist()]


#: A batch is computed in two groups when that saves at least this share of its positions.
MIN_GROUP_SAVING = 0.1


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor] | None:
    """The rows of a batch in two groups of similar lengths (index tensors on the lengths'
    device, each in ascending order), when computing the groups apart, each trimmed to its
    longest sequence, saves at least :data:`MIN_GROUP_SAVING` of the positions that one pass
    trimmed to the batch's longest computes; None when one pass is as good."""
    n = len(lengths)
    if n < 2:
        return None
    order = torch.argsort(lengths.detach().cpu(), stable=True)
    s = lengths.detach().cpu()[order]
    cut = torch.arange(1, n)
    cost = cut * s[:-1] + (n - cut) * s[-1]  # the first group is the `cut` shortest
    best = int(cost.argmin())
    if float(cost[best]) > (1 - MIN_GROUP_SAVING) * n * float(s[-1]):
        return None
    k = best + 1
    return [order[:k].sort().values.to(lengths.device), order[k:].sort().values.to(lengths.device)]


def computed_positions(lengths: torch.Tensor, trimmed: bool = True, grouped: bool = False) -> torch.Tensor:
    """Positions a batch of sequences of ``lengths`` computes: ``max(lengths) × batch size`` when
    it is trimmed to its longest sequence (token batches), else ``sum(lengths)``; with
    ``grouped`` (length batching), summed over its :func:`length_groups`. A tensor on the
    lengths' device (summing them on a GPU needs no sync, unless ``grouped``)."""
    if not trimmed:
        return lengths.sum()
    groups = length_groups(lengths) if grouped else None
    if groups is not None:
        return sum(lengths[g].max() * len(g) for g in groups)
    return lengths.max() * len(lengths) if len(lengths) else lengths.sum()


def padding_fraction(lengths: torch.Tensor, batches: list[torch.Tensor]) -> float:
    """The share of computed positions that are padding when each batch is trimmed to its
    longest sequence (what the runner records as ``padding_fraction``)."""
    lengths = lengths.detach().cpu()
    real = sum(int(lengths[b].sum()) for b in batches)
    computed = sum(int(computed_positions(lengths[b])) for b in batches)
    return 1.0 - real / computed if computed else float("nan")
