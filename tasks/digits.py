"""``split-digits``: scikit-learn's bundled 8×8 handwritten digits, split into tasks.

Real data that ships with scikit-learn, so it runs offline. Each image becomes a sequence of
patch vectors (``patch_size`` × ``patch_size`` pixels, scaled to [0, 1]), the way a ViT sees an
image. The train/test split is stratified and fixed by ``split_seed``, independent of the cell's
seed, so every cell of a suite sees the same data.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from clbench import hookimpl
from clbench.errors import UserError

from .base import Examples, Stream, Task


def _patches(images: np.ndarray, patch_size: int) -> np.ndarray:
    """(n, 8, 8) -> (n, (8/p)^2, p*p), row-major patch order."""
    n, h, w = images.shape
    p = patch_size
    x = images.reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, (h // p) * (w // p), p * p)


def check_order(order: list | None, n_tasks: int) -> list[int]:
    """A task order given as task indices: the identity when None, else a permutation."""
    if order is None:
        return list(range(n_tasks))
    if sorted(order) != list(range(n_tasks)):
        raise UserError(
            f"task order {order} is not a permutation of the {n_tasks} task indices 0..{n_tasks - 1}"
        )
    return list(order)


def split_digits(
    *,
    scenario: Literal["class-incremental", "task-incremental", "domain-incremental"] = "class-incremental",
    n_tasks: int = 5,
    classes_per_task: int = 2,
    class_order: list[int] | None = None,
    order: list[int] | None = None,
    patch_size: Literal[1, 2, 4, 8] = 2,
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> Stream:
    """Build the split-digits stream.

    :param class_order: the 10 digits in the order they are dealt into tasks (default 0..9):
        task i holds ``class_order[i*classes_per_task:(i+1)*classes_per_task]``.
    :param order: the order in which those tasks arrive (indices; default 0..n_tasks-1).
    """
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes seconds (every host loads this plugin)
    from sklearn.model_selection import train_test_split

    if n_tasks * classes_per_task > 10 or n_tasks < 1 or classes_per_task < 1:
        raise UserError(
            f"split-digits: n_tasks × classes_per_task must be between 1 and 10, got {n_tasks} × {classes_per_task}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"split-digits: test_fraction must be in (0, 1), got {test_fraction}")
    class_order = list(range(10)) if class_order is None else list(class_order)
    if sorted(class_order) != list(range(10)):
        raise UserError(f"split-digits: class_order {class_order} is not a permutation of 0..9")
    order = check_order(order, n_tasks)

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    x_all = _patches(images, patch_size)
    y_all = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y_all)), test_size=test_fraction, stratify=y_all, random_state=split_seed
    )

    def examples(idx: np.ndarray, labels: np.ndarray, pos: int) -> Examples:
        n, seq = len(idx), x_all.shape[1]
        return Examples(
            x=torch.from_numpy(np.ascontiguousarray(x_all[idx])),
            y=torch.from_numpy(labels),
            lengths=torch.full((n,), seq, dtype=torch.long),
            t=torch.full((n,), pos, dtype=torch.long),
        )

    if scenario == "domain-incremental":
        labels = tuple(f"class {k + 1} of the task" for k in range(classes_per_task))
    else:
        labels = tuple(str(d) for d in range(10))

    tasks = []
    for pos, ti in enumerate(order):
        digits_here = class_order[ti * classes_per_task : (ti + 1) * classes_per_task]
        split = {}
        for part, idx in (("train", idx_train), ("test", idx_test)):
            sel = idx[np.isin(y_all[idx], digits_here)]
            if scenario == "domain-incremental":
                lab = np.array([digits_here.index(d) for d in y_all[sel]], dtype=np.int64)
            else:
                lab = y_all[sel]
            split[part] = examples(sel, lab, pos)
        classes = tuple(range(classes_per_task)) if scenario == "domain-incremental" else tuple(sorted(digits_here))
        tasks.append(Task(f"digits {'-'.join(map(str, digits_here))}", classes, split["train"], split["test"]))

    return Stream(
        name="split-digits",
        scenario=scenario,
        input_kind="patches",
        labels=labels,
        tasks=tasks,
        input_dim=patch_size * patch_size,
        max_len=x_all.shape[1],
    )


@hookimpl
def register_streams(register):
    register(
        "split-digits",
        split_digits,
        description="scikit-learn's 8×8 digits, 5 tasks × 2 classes, as patch sequences",
    )
