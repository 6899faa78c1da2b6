"""The built-in split-digits stream."""

import pytest
import torch

from clbench.errors import UserError
from clbench.tasks.digits import split_digits


def test_five_tasks_of_two_classes_as_patch_sequences():
    s = split_digits()
    assert s.n_tasks == 5 and s.scenario == "class-incremental" and s.input_kind == "patches"
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    t = s.tasks[0]
    assert t.train.x.shape[1:] == (16, 4) and s.input_dim == 4 and s.max_len == 16
    assert set(t.train.y.tolist()) == {0, 1} and set(t.train.t.tolist()) == {0}
    assert float(t.train.x.min()) >= 0.0 and float(t.train.x.max()) <= 1.0
    assert sum(len(t.train) + len(t.test) for t in s.tasks) == 1797


def test_the_split_is_fixed_and_disjoint():
    a, b = split_digits(), split_digits()
    assert torch.equal(a.tasks[1].test.x, b.tasks[1].test.x)
    c = split_digits(split_seed=1)
    assert not torch.equal(a.tasks[1].test.x, c.tasks[1].test.x)
    train = {tuple(x.flatten().tolist()) for x in a.tasks[0].train.x}
    test = [tuple(x.flatten().tolist()) for x in a.tasks[0].test.x]
    assert sum(x in train for x in test) < 0.05 * len(test)  # a few digits are exact duplicates in the data


def test_scenarios():
    ti = split_digits(scenario="task-incremental")
    assert ti.class_mask()[1].nonzero().flatten().tolist() == [2, 3]
    di = split_digits(scenario="domain-incremental")
    assert di.n_classes == 2 and di.class_mask() is None
    assert all(set(t.train.y.tolist()) == {0, 1} for t in di.tasks)


def test_orders_and_patch_sizes():
    s = split_digits(order=[4, 3, 2, 1, 0], patch_size=4)
    assert [t.classes for t in s.tasks] == [(8, 9), (6, 7), (4, 5), (2, 3), (0, 1)]
    assert s.tasks[0].train.t.unique().tolist() == [0]
    assert s.tasks[0].train.x.shape[1:] == (4, 16)
    s = split_digits(class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], n_tasks=2, classes_per_task=5)
    assert s.tasks[0].classes == (5, 6, 7, 8, 9)
    with pytest.raises(UserError, match="not a permutation"):
        split_digits(order=[0, 1])
    with pytest.raises(UserError, match="between 1 and 10"):
        split_digits(n_tasks=6)
