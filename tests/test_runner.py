"""The cell runner: the evaluation protocol, determinism, and failure isolation."""

import numpy as np
import pytest
import torch

import clbench
from clbench.results import accuracy_matrix
from conftest import make_suite


def test_run_cell_tells_on_evaluated_each_evaluation(host):
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    cell = parse_suite(make_suite(["naive"], stream_params={"patch_size": 4, "n_tasks": 2}), "s.toml").cells[0]
    seen = []
    result = run_cell(cell, on_evaluated=lambda after, scores: seen.append((after, scores)))
    assert [after for after, _ in seen] == [-1, 0, 1]
    acc = {(m["train_task"], m["eval_task"]): m["value"] for m in result.measurements if m["metric"] == "acc"}
    assert all(s["acc"] == acc[(after, j)] for after, scores in seen for j, s in enumerate(scores))


def test_every_task_is_evaluated_before_training_and_after_each_task(run_suite_dict):
    run, t = run_suite_dict(make_suite(["naive"], training={"epochs": 3, "batch_size": 32}))
    assert [r.status for r in run.ran] == ["ok"]
    m = t.measurements
    assert set(m["metric"]) == {"acc", "loss", "train_loss"}
    assert sorted(m["train_task"].unique()) == [-1, 0, 1, 2, 3, 4]
    ev = m[m["metric"] != "train_loss"]
    assert len(ev) == 6 * 5 * 2  # (before + 5 tasks) × 5 eval tasks × 2 metrics
    # the mean training loss of each epoch of each task: eval_task holds the epoch
    tl = m[m["metric"] == "train_loss"].set_index(["train_task", "eval_task"])["value"]
    assert sorted(tl.index) == [(i, e) for i in range(5) for e in range(3)]
    assert (tl > 0).all() and tl[(0, 2)] < tl[(0, 0)]  # the first task is learned over its epochs
    R, b = accuracy_matrix(m, run.ran[0].row["run_id"])
    assert R.shape == (5, 5) and b.shape == (5,)
    # class-incremental naive: the first task is learned, then forgotten
    assert R[0, 0] > 0.8
    assert R[-1, :-1].max() < 0.2
    cell = t.cells.iloc[0]
    assert cell["status"] == "ok" and cell["n_tasks"] == 5
    assert cell["trainable_params"] == cell["total_params"] > 0
    assert cell["examples_seen"] > 0 and cell["train_seconds"] > 0


def test_two_runs_of_a_cell_give_the_same_matrix_bit_for_bit(run_suite_dict, tmp_path):
    data = make_suite(["naive"], seeds=[3])
    _, a = run_suite_dict(data, out=tmp_path / "a")
    _, b = run_suite_dict(data, out=tmp_path / "b")
    va = a.measurements.sort_values(["train_task", "eval_task", "metric"])["value"].to_numpy()
    vb = b.measurements.sort_values(["train_task", "eval_task", "metric"])["value"].to_numpy()
    assert np.array_equal(va, vb)
    _, c = run_suite_dict(make_suite(["naive"], seeds=[4]), out=tmp_path / "c")
    vc = c.measurements.sort_values(["train_task", "eval_task", "metric"])["value"].to_numpy()
    assert not np.array_equal(va, vc)


def test_training_precision_runs_the_model_under_autocast(run_suite_dict, tmp_path, monkeypatch):
    """bf16 and fp16 train and evaluate under autocast (other losses than fp32's, close to them);
    fp16 scales the loss and unscales the gradients before clipping: its gradient norms are
    fp32's (the first steps overflow at the scaler's initial 65536 and are skipped, as a
    GradScaler does), not thousands of times them. Each cell's row records the attention that ran."""
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, m: norms.append(float(clip(p, m))) or norms[-1])
    losses, first_norm, overflowed = {}, {}, {}
    for precision in ("fp32", "bf16", "fp16"):
        norms.clear()
        suite = make_suite(["naive"], stream_params={"patch_size": 4, "n_tasks": 2}, training={"precision": precision})
        run, t = run_suite_dict(suite, out=tmp_path / precision)
        cell = t.cells.iloc[0]
        assert cell["status"] == "ok" and cell["attention"] == "sdpa"
        m = t.measurements
        losses[precision] = m[m["metric"] == "loss"].sort_values(["train_task", "eval_task"])["value"].to_numpy()
        first_norm[precision] = next(n for n in norms if np.isfinite(n))
        overflowed[precision] = not all(np.isfinite(norms))
    for low in ("bf16", "fp16"):
        assert not np.array_equal(losses[low], losses["fp32"])
        np.testing.assert_allclose(losses[low], losses["fp32"], rtol=0.05)
    assert first_norm["bf16"] == pytest.approx(first_norm["fp32"], rel=0.05)
    assert 0.5 < first_norm["fp16"] / first_norm["fp32"] < 2
    assert overflowed == {"fp32": False, "bf16": False, "fp16": True}  # only fp16's loss was scaled


def test_joint_and_cumulative_train_on_the_unions(run_suite_dict):
    run, t = run_suite_dict(make_suite(["naive", {"name": "joint", "params": {"repeat": 1}}, "cumulative"]))
    seen = t.cells.set_index("strategy")["examples_seen"]
    per_task = seen["naive"]  # naive: every task once, epochs = 1
    assert seen["joint"] == per_task
    sizes = [len(task.train) for task in clbench.tasks.digits.split_digits(patch_size=4).tasks]
    assert seen["cumulative"] == sum(sum(sizes[: k + 1]) for k in range(5))
    s = t.summary.set_index("strategy")
    assert s.loc["joint", "bwt"] == 0.0 and s.loc["joint", "forgetting"] == 0.0
    assert s.loc["cumulative", "intransigence"] == 0.0
    assert not np.isnan(s.loc["naive", "intransigence"])


class Boom:
    """Raises in the middle of training."""

    @clbench.hookimpl
    def after_task(self, cell, task):
        if cell.task_index == 1:
            raise RuntimeError("boom at task 1")


class NanLoss:
    """Adds a NaN to the loss."""

    @clbench.hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if cell.task_index == 2:
            return torch.tensor(float("nan"))


class Faulty:
    __test__ = False

    @clbench.hookimpl
    def register_strategies(self, register):
        register("boom", Boom)
        register("nan-loss", NanLoss)


@pytest.fixture
def faulty(host):
    p = Faulty()
    host.register(p, name="faulty")
    yield
    host.unregister(p)


def test_a_failing_plugin_and_a_nan_loss_are_recorded_and_the_suite_goes_on(run_suite_dict, faulty):
    run, t = run_suite_dict(make_suite(["boom", "nan-loss", "naive"]))
    status = t.cells.set_index("strategy")["status"]
    assert status.to_dict() == {"boom": "failed", "nan-loss": "diverged", "naive": "ok"}
    err = t.cells.set_index("strategy")["error"]
    assert err["boom"] == "RuntimeError: boom at task 1"
    assert "task 2" in err["nan-loss"]
    assert "boom at task 1" in t.cells.set_index("strategy")["traceback"]["boom"]
    # the measurements taken before the failure are kept; the summary marks the cell's metrics NaN
    boom_id = t.cells.set_index("strategy")["run_id"]["boom"]
    evals = t.measurements[(t.measurements.run_id == boom_id) & (t.measurements.metric == "acc")]
    assert set(evals["train_task"]) == {-1, 0}
    assert np.isnan(t.summary.set_index("strategy").loc["boom", "acc"])
    assert len(run.not_ok) == 2


def test_task_incremental_masks_the_head_to_the_task_classes(run_suite_dict):
    data = make_suite(["naive"], stream_params={"patch_size": 4, "scenario": "task-incremental"})
    run, t = run_suite_dict(data)
    R, b = accuracy_matrix(t.measurements, run.ran[0].row["run_id"])
    # with the head masked to two classes, even a forgetful model is far above 1/10 on old tasks
    assert R[-1].mean() > 0.5


def test_class_mask_sets_other_tasks_logits_to_minus_infinity():
    from clbench.models import ModelConfig, Transformer
    from clbench.tasks.digits import split_digits

    stream = split_digits(patch_size=4, scenario="task-incremental")
    model = Transformer(ModelConfig(d_model=16, n_heads=2, n_layers=1), input_kind="patches", input_dim=16, n_classes=10)
    batch = stream.tasks[2].test[:4]
    logits = model(batch.x, batch.lengths, stream.class_mask()[batch.t])
    assert torch.isfinite(logits[:, [4, 5]]).all()
    assert torch.isinf(logits[:, [0, 1, 2, 3, 6, 7, 8, 9]]).all()
    assert stream.class_mask().sum(1).tolist() == [2] * 5


def test_finished_cells_are_not_run_again(run_suite_dict, tmp_path):
    data = make_suite(["naive", "cumulative"])
    out = tmp_path / "r"
    first, t1 = run_suite_dict(data, out=out)
    again, t2 = run_suite_dict(data, out=out)
    assert len(first.ran) == 2 and again.ran == [] and again.skipped == 2
    assert t1.measurements.equals(t2.measurements)
    forced, _ = run_suite_dict(data, out=out, force=True)
    assert len(forced.ran) == 2
