"""The rehearsal memory (clbench.strategies.buffer): reservoir holds a uniform sample,
class-balanced holds equal counts, extras follow their examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from clbench.errors import UserError
from clbench.strategies.buffer import Buffer
from clbench.tasks import Examples


def items(ids, labels=None) -> Examples:
    """Examples whose x carries an id (to see which were kept)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    y = ids if labels is None else torch.as_tensor(labels, dtype=torch.long)
    n = len(ids)
    return Examples(ids.float().view(n, 1, 1), y, torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))


def held_ids(buf: Buffer) -> np.ndarray:
    return buf.data.x.view(-1).long().numpy()


def offer(buf: Buffer, ids, labels, rng, chunks) -> None:
    """Offer the stream in chunks of the given sizes (cycled), as batches arrive."""
    s, k = 0, 0
    while s < len(ids):
        n = chunks[k % len(chunks)]
        buf.add(items(ids[s : s + n], labels[s : s + n]), rng)
        s, k = s + n, k + 1


def test_reservoir_fills_then_stays_at_capacity():
    rng = np.random.default_rng(0)
    buf = Buffer(10)
    buf.add(items(range(4)), rng)
    assert len(buf) == 4 and sorted(held_ids(buf)) == [0, 1, 2, 3]
    buf.add(items(range(4, 30)), rng)
    assert len(buf) == 10 and buf.seen == 30
    assert len(set(held_ids(buf))) == 10  # no example held twice


def test_reservoir_holds_a_uniform_sample():
    """Over many fills with a fixed seed, every one of N offered examples is held with
    probability capacity / N, whatever the chunking of the stream: a chi-square test of the
    inclusion counts, and first-offered vs last-offered halves held equally often."""
    rng = np.random.default_rng(1234)
    N, cap, trials = 200, 20, 600
    ids = np.arange(N)
    counts = np.zeros(N)
    for trial in range(trials):
        buf = Buffer(cap)
        offer(buf, ids, ids, rng, chunks=[[3, 16], [64], [1, 50, 7]][trial % 3])
        held = held_ids(buf)
        assert len(held) == cap and len(set(held)) == cap
        counts[held] += 1
    expected = trials * cap / N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    p = stats.chi2.sf(chi2, df=N - 1)
    assert p > 1e-3, f"inclusion counts are not uniform (chi2={chi2:.0f}, p={p:.2g})"
    first, last = counts[: N // 2].sum(), counts[N // 2 :].sum()
    assert abs(first - last) / (first + last) < 0.02
    # a position-biased sampler fails the same test: keeping the last `cap` offered examples
    biased = np.zeros(N)
    biased[-cap:] = trials
    assert stats.chi2.sf(((biased - expected) ** 2 / expected).sum(), df=N - 1) < 1e-3


def test_class_balanced_holds_equal_counts():
    """Classes arrive two at a time with unequal numbers of examples; after each arrival the
    memory holds the seen classes in equal numbers (within one)."""
    rng = np.random.default_rng(0)
    buf = Buffer(60, "class-balanced")
    next_id = 0
    for task in range(5):
        sizes = {2 * task: 40 + 13 * task, 2 * task + 1: 32}  # unequal, each more than a share
        labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
        rng.shuffle(labels)
        ids = np.arange(next_id, next_id + len(labels))
        next_id += len(labels)
        offer(buf, ids, labels, rng, chunks=[16])
        counts = buf.class_counts()
        seen = 2 * (task + 1)
        assert sorted(counts) == list(range(seen))
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        assert sum(counts.values()) == 60
    assert set(buf.class_counts().values()) == {6}  # 60 slots, 10 classes: exactly equal


def test_class_balanced_within_class_is_uniform():
    """Within a class, which examples are kept is a uniform sample of those offered."""
    rng = np.random.default_rng(7)
    N, cap, trials = 60, 12, 500
    labels = np.repeat([0, 1], N // 2)
    counts = np.zeros(N)
    for _ in range(trials):
        buf = Buffer(cap, "class-balanced")
        order = rng.permutation(N)
        offer(buf, order, labels[order], rng, chunks=[20])
        assert buf.class_counts() == {0: 6, 1: 6}
        counts[held_ids(buf)] += 1
    expected = trials * cap / N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=N - 1) > 1e-3


def test_extras_follow_their_examples():
    rng = np.random.default_rng(3)
    buf = Buffer(8)
    for s in range(0, 40, 5):
        ids = torch.arange(s, s + 5)
        buf.add(items(ids), rng, logits=ids.float()[:, None] * torch.ones(1, 3))
    assert torch.equal(buf.extras["logits"][:, 0].long(), buf.data.x.view(-1).long())
    mem, extra = buf.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(extra["logits"][:, 0].long(), mem.x.view(-1).long())
    assert len(set(mem.x.view(-1).tolist())) == 5


def test_report_sums_the_memories_of_a_cell():
    class Cell:
        info: dict = {}

    cell = Cell()
    rng = np.random.default_rng(0)
    a, b = Buffer(5, name="a"), Buffer(7, name="b")
    a.add(items(range(10)), rng)
    b.add(items(range(3)), rng)
    a.report(cell)
    b.report(cell)
    assert cell.info["buffer_size"] == 5 + 3


@pytest.mark.parametrize(
    "kwargs, name", [({"capacity": 0}, "memory_size"), ({"capacity": 10, "policy": "fifo"}, "policy")]
)
def test_bad_parameters_are_one_line_errors(kwargs, name):
    with pytest.raises(UserError, match=f"parameter '{name}'") as exc:
        Buffer(**kwargs)
    assert "\n" not in str(exc.value)
