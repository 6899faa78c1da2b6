"""The example strategy's own test: its penalty, and a run through clbench."""

import pytest
import torch

import clbench_example_strategy
from clbench.errors import UserError
from clbench.host import DEFAULT_PLUGINS, Host, use_host
from clbench.results import load
from clbench.suite import parse_suite
from clbench.suiterun import run_suite
from clbench_example_strategy import L2Anchor

SUITE = {
    "name": "l2-anchor-test",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "training": {"epochs": 1, "batch_size": 64},
    "streams": [{"name": "split-digits", "params": {"patch_size": 4, "n_tasks": 2}}],
}


class Cell:  # just what the hooks read
    def __init__(self, model, task_index):
        self.model, self.task_index = model, task_index


def test_the_penalty_is_zero_at_the_anchor_and_grows_quadratically():
    model = torch.nn.Linear(3, 2)
    s = L2Anchor(strength=2.0)
    s.before_task(Cell(model, 1), None)
    assert s.loss_terms(Cell(model, 1), None, None, None).item() == 0.0
    with torch.no_grad():
        model.bias += 1.0  # moves 2 parameters by 1
    assert s.loss_terms(Cell(model, 1), None, None, None).item() == pytest.approx(2.0 * 2)
    with torch.no_grad():
        model.bias += 1.0  # now by 2: four times the penalty
    assert s.loss_terms(Cell(model, 1), None, None, None).item() == pytest.approx(2.0 * 2 * 4)


def test_a_negative_strength_is_refused():
    with pytest.raises(UserError, match="parameter 'strength' must be >= 0"):
        L2Anchor(strength=-1.0)


@pytest.fixture
def host():
    """A host with clbench's built-ins and this module registered as a plugin, whether or not
    the package is installed (the allow-list leaves installed entry points out)."""
    h = Host().load(",".join(DEFAULT_PLUGINS))
    h.register(clbench_example_strategy, name="l2-anchor")
    with use_host(h):  # clbench reaches its plugins through the process's host
        yield h


def test_it_runs_in_a_suite(host, tmp_path):
    suite = parse_suite({**SUITE, "strategies": [{"name": "l2-anchor", "params": {"strength": 0.1}}]}, "t.toml")
    run = run_suite(suite, tmp_path, progress=False)
    assert [r.status for r in run.ran] == ["ok"]
    assert load(tmp_path).summary["strategy"].tolist() == ["l2-anchor"]
