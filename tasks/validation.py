"""A validation split carved from each task's training data (``clbench tune``'s protocols).

:func:`validation_split` returns the stream with each task's training examples split in two:
the larger part to train on, the other in place of the test split. The test split itself is
dropped, and so is every statistic the stream took from it: a generative task's
``max_new_tokens`` (derived from the longest test answer) is derived again from the validation
answers, and the stream's ``max_len`` from the training examples and the general text. Nothing
that runs on the returned stream can read the test split or anything computed from it: two data
folders that differ only in their test files give identical validation streams (tested).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from clbench.errors import UserError

from .base import Stream
from .generative import answer_cap


def validation_indices(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of a validation sample of ``fraction`` of the examples with labels ``y``,
    stratified: ``round(fraction × n_c)`` of each label's ``n_c`` examples (at least one where
    the label has two or more), drawn with ``rng``."""
    picked = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def validation_split(stream: Stream, fraction: float = 0.2, seed: int = 0) -> Stream:
    """``stream`` with each task's training data split into training and validation examples
    (stratified by label, seeded by ``seed`` and the task's position); the validation examples
    take the place of the test split, which is left out."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the validation fraction must be in (0, 1), got {fraction}")
    tasks = []
    for pos, task in enumerate(stream.tasks):
        y = task.train.y.cpu().numpy()
        val = validation_indices(y, fraction, np.random.default_rng([seed, pos]))
        if len(val) == 0 or len(val) == len(y):
            raise UserError(f"task {task.name!r}: {len(y)} training examples cannot give a validation split "
                            f"of {fraction} and keep some to train on")
        keep = np.setdiff1d(np.arange(len(y)), val)
        train, test = task.train[torch.from_numpy(keep)], task.train[torch.from_numpy(val)]
        caps = {"max_new_tokens": answer_cap(test)} if task.max_new_tokens_derived else {}
        tasks.append(replace(task, train=train, test=test, **caps))
    seqs = [t.train.lengths for t in stream.tasks] + ([stream.general.lengths] if stream.general is not None else [])
    return replace(stream, tasks=tasks, max_len=max(int(n.max()) for n in seqs if len(n)))
