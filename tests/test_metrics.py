"""Metrics against matrices computed by hand."""

import math

import numpy as np
import pytest

from clbench.results import metrics as M

# R[i, j]: accuracy on task j after training task i (3 tasks), b: before training.
R = np.array(
    [
        [0.90, 0.10, 0.20],
        [0.60, 0.80, 0.30],
        [0.50, 0.70, 0.95],
    ]
)
b = np.array([0.30, 0.20, 0.10])
R_ref = np.array(
    [
        [0.95, 0.0, 0.0],
        [0.90, 0.85, 0.0],
        [0.90, 0.85, 0.90],
    ]
)


def test_acc():
    assert M.acc(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_average_incremental_accuracy():
    expected = (0.90 + (0.60 + 0.80) / 2 + (0.50 + 0.70 + 0.95) / 3) / 3
    assert M.average_incremental_accuracy(R) == pytest.approx(expected)


def test_bwt_and_its_over_t_variant():
    s = (0.50 - 0.90) + (0.70 - 0.80)
    assert M.bwt(R) == pytest.approx(s / 2)
    assert M.bwt_over_t(R) == pytest.approx(s / 3)


def test_fwt_uses_the_before_training_baseline():
    assert M.fwt(R, b) == pytest.approx(((0.10 - 0.20) + (0.30 - 0.10)) / 2)


def test_forgetting_is_max_based():
    # task 0: max(0.90, 0.60) - 0.50 = 0.40; task 1: max(0.80) - 0.70 = 0.10
    assert M.forgetting(R) == pytest.approx((0.40 + 0.10) / 2)


def test_forgetting_variants_differ_when_accuracy_peaks_after_learning():
    # Task 0 is learned to 0.5, then improves to 0.9 (backward transfer), then drops to 0.6.
    R2 = np.array([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.6, 0.8, 0.9]])
    assert M.forgetting(R2) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)
    assert M.forgetting_last(R2) == pytest.approx(((0.5 - 0.6) + 0.0) / 2)
    assert M.forgetting_last(R2) == pytest.approx(-M.bwt(R2))
    assert M.forgetting(R2) > M.forgetting_last(R2)


def test_forgetting_takes_the_max_over_every_earlier_row_as_agem_does():
    # Chaudhry et al. 2018 and A-GEM's compute_fgt: max over rows l < T, rows before task j was
    # learned included (zero-shot accuracy of a pretrained model can be that max); no b row.
    R3 = np.array([
        [0.90, 0.45, 0.30, 0.00],
        [0.70, 0.30, 0.50, 0.00],  # task 2 zero-shot at 0.50, above what learning it gives
        [0.60, 0.25, 0.40, 0.10],
        [0.50, 0.20, 0.35, 0.90],
    ])
    # task 0: 0.90 - 0.50; task 1: max(0.45, 0.30, 0.25) - 0.20; task 2: max(0.30, 0.50, 0.40) - 0.35
    assert list(M.forgetting_terms(R3)) == pytest.approx([0.40, 0.25, 0.15])
    assert M.forgetting(R3) == pytest.approx((0.40 + 0.25 + 0.15) / 3)
    # the variant: rows from task j's own on (task 1: max(0.30, 0.25); task 2: max(0.40))
    assert M.forgetting_since_learned(R3) == pytest.approx((0.40 + (0.30 - 0.20) + (0.40 - 0.35)) / 3)
    assert M.forgetting_since_learned(R3) < M.forgetting(R3)
    # where no task is better before it is learned, the two agree
    assert M.forgetting_since_learned(R) == pytest.approx(M.forgetting(R))


def test_intransigence_against_cumulative():
    assert M.intransigence(R, R_ref) == pytest.approx(((0.95 - 0.90) + (0.85 - 0.80) + (0.90 - 0.95)) / 3)
    assert math.isnan(M.intransigence(R, None))


def test_plasticity_is_the_diagonal_mean():
    assert M.plasticity(R) == pytest.approx((0.90 + 0.80 + 0.95) / 3)


def test_one_task_streams_have_undefined_transfer():
    R1 = np.array([[0.7]])
    assert M.acc(R1) == pytest.approx(0.7)
    for fn in (M.bwt, M.forgetting, M.forgetting_since_learned, M.forgetting_last):
        assert math.isnan(fn(R1))
    assert math.isnan(M.fwt(R1, np.array([0.1])))


def test_summary_uses_the_registered_metrics(host):
    import pandas as pd

    from clbench.results import summarize

    rows = []
    for rid, mat in (("a", R), ("ref", R_ref)):
        for j in range(3):
            rows.append(dict(run_id=rid, train_task=-1, eval_task=j, metric="acc", value=b[j]))
            for i in range(3):
                rows.append(dict(run_id=rid, train_task=i, eval_task=j, metric="acc", value=mat[i, j]))
    meas = pd.DataFrame(rows)
    common = dict(suite="s", stream="x", stream_params="{}", order="default", params="[]", seed=0,
                  model="{}", training="{}", status="ok")
    cells = pd.DataFrame([dict(run_id="a", strategy="naive", **common), dict(run_id="ref", strategy="cumulative", **common)])
    s = summarize(meas, cells).set_index("run_id")
    assert s.loc["a", "acc"] == pytest.approx(M.acc(R))
    assert s.loc["a", "fwt"] == pytest.approx(M.fwt(R, b))
    assert s.loc["a", "intransigence"] == pytest.approx(M.intransigence(R, R_ref))
    assert s.loc["ref", "intransigence"] == pytest.approx(0.0)


def test_fwt_over_t_divides_by_t_as_gem_does():
    assert M.fwt_over_t(R, b) == pytest.approx(((0.10 - 0.20) + (0.30 - 0.10)) / 3)
    assert math.isnan(M.fwt_over_t(np.array([[0.7]]), np.array([0.1])))


def test_intransigence_last_is_the_last_tasks():
    assert M.intransigence_last(R, R_ref) == pytest.approx(0.90 - 0.95)
    assert math.isnan(M.intransigence_last(R, None))


def _tables(cells_spec):
    """measurements and cells for (run_id, strategy, matrix, extra columns) tuples."""
    import pandas as pd

    rows, cells = [], []
    common = dict(suite="s", stream="x", stream_params="{}", order="default", params="[]", seed=0,
                  model="{}", training="{}", status="ok")
    for rid, strategy, mat, extra in cells_spec:
        for j in range(3):
            rows.append(dict(run_id=rid, train_task=-1, eval_task=j, metric="acc", value=b[j]))
            for i in range(3):
                rows.append(dict(run_id=rid, train_task=i, eval_task=j, metric="acc", value=mat[i, j]))
        cells.append({**common, "run_id": rid, "strategy": strategy, **extra})
    return pd.DataFrame(rows), pd.DataFrame(cells)


def test_intransigence_reference_may_have_another_training_table_and_its_run_id_is_stored(host):
    from clbench.results import summarize

    meas, cells = _tables([
        ("a", "seq-lora", R, dict(training='{"lr": 0.001}')),
        ("ref", "cumulative", R_ref, dict(training='{"lr": 0.0001}')),
        ("other", "naive", R, dict(training='{"lr": 0.001}', seed=1)),  # no reference for seed 1
    ])
    s = summarize(meas, cells).set_index("run_id")
    assert s.loc["a", "intransigence"] == pytest.approx(M.intransigence(R, R_ref))
    assert s.loc["a", "intransigence_last"] == pytest.approx(0.90 - 0.95)
    assert s.loc["a", "reference_run_id"] == "ref"
    assert s.loc["other", "reference_run_id"] == "" and math.isnan(s.loc["other", "intransigence"])


def test_intransigence_reference_prefers_the_same_training_table(host):
    from clbench.results import summarize

    R_ref2 = R_ref.copy()
    R_ref2[np.diag_indices(3)] = 1.0
    meas, cells = _tables([
        ("a", "naive", R, dict(training='{"lr": 0.001}')),
        ("ref-slow", "cumulative", R_ref, dict(training='{"lr": 0.0001}')),
        ("ref-same", "cumulative", R_ref2, dict(training='{"lr": 0.001}')),
    ])
    s = summarize(meas, cells).set_index("run_id")
    assert s.loc["a", "reference_run_id"] == "ref-same"
    assert s.loc["a", "intransigence"] == pytest.approx(M.intransigence(R, R_ref2))


@pytest.mark.parametrize("scenario, strategy, defined", [
    ("task-incremental", "naive", True),
    ("domain-incremental", "naive", True),
    ("class-incremental", "naive", False),
    ("task-incremental", "joint", False),
    ("task-incremental", "replay+joint", False),
])
def test_fwt_is_nan_where_undefined(host, scenario, strategy, defined):
    from clbench.results import summarize

    meas, cells = _tables([("a", strategy, R, dict(scenario=scenario))])
    fwt = summarize(meas, cells).set_index("run_id").loc["a", "fwt"]
    assert (fwt == pytest.approx(M.fwt(R, b))) if defined else math.isnan(fwt)
