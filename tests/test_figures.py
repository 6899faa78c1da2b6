"""The report's figures, drawn from real results (small suites run here), read back with
matplotlib's text extents: no two pieces of text overlap, none leaves its figure, no legend or
axis text covers a plotting area (tests/figcheck.py), and each figure keeps the promises
docs/reports.md makes (error bars inside the metric's range, zero bars marked, one y axis per
strategy for the training loss, integer epochs, task names, strategy names once)."""

import numpy as np
import pytest

from clbench.results import figures
from clbench.results.report import write_html
from conftest import make_suite
from figcheck import problems

DECODER = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True, "max_len": 32}


@pytest.fixture
def drawn(monkeypatch):
    """Every figure a report draws: (its name, the matplotlib figure, its text problems)."""
    out = []
    real = figures.png

    def keep(fig):
        out.append((fig, problems(fig)))
        return real(fig)

    monkeypatch.setattr(figures, "png", keep)
    return out


def _by_name(drawn, tables, tmp_path):
    """Write the report; {figure name: (figure, problems)} in the order they were drawn."""
    write_html(tables, tmp_path / "rep")
    names = ["matrices", "curves", "forgetting", "loss", "general", "cost"]
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    present = [n for n in names if f'alt="{_alt_word(n)}' in html]
    assert len(present) == len(drawn), (present, len(drawn))
    return dict(zip(present, drawn))


def _alt_word(name: str) -> str:
    return {"matrices": "accuracy matrices", "curves": "accuracy over tasks", "forgetting": "forgetting per task",
            "loss": "training loss", "general": "the general text", "cost": "training time"}[name]


def _assert_readable(figs):
    for name, (_fig, found) in figs.items():
        assert found == [], f"{name}: {found}"


def test_every_figure_of_a_classification_report_is_readable(run_suite_dict, drawn, tmp_path):
    strategies = ["naive", {"name": "ewc", "params": {"lambda": 1e4}}, {"name": "replay", "params": {"memory_size": 50}},
                  "joint", "cumulative", {"name": "lora", "params": {"mode": "inc"}}]
    _, tables = run_suite_dict(make_suite(strategies, seeds=(0, 1), stream_params={"patch_size": 4, "n_tasks": 4},
                                          training={"epochs": 2}))
    assert (tables.cells["status"] == "ok").all()
    figs = _by_name(drawn, tables, tmp_path)
    assert list(figs) == ["matrices", "curves", "forgetting", "loss", "cost"]
    _assert_readable(figs)

    # matrices: task names on the first column's rows only, never drawn over a neighbour
    fig = figs["matrices"][0]
    mats = [ax for ax in fig.axes if ax.images]
    assert len(mats) == 6
    x0 = min(ax.get_position().x0 for ax in mats)
    assert [ax.yaxis.get_tick_params()["labelleft"] for ax in mats] == [abs(ax.get_position().x0 - x0) < 1e-6 for ax in mats]
    assert [t.get_text() for t in mats[0].get_yticklabels()] == ["digits 0-1", "digits 2-3", "digits 4-5", "digits 6-7"]

    # forgetting: task names, error bars inside [-100, 100], joint's zero bars marked on the zero line
    fig = figs["forgetting"][0]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["digits 0-1", "digits 2-3", "digits 4-5"]
    ends = [y for c in ax.collections for seg in c.get_segments() for y in seg[:, 1]]
    assert ends and -100 - 1e-9 <= min(ends) and max(ends) <= 100 + 1e-9
    zeros = [ln for ln in ax.lines if ln.get_marker() == "D" and len(ln.get_ydata())]
    assert zeros and all(np.all(np.asarray(ln.get_ydata()) == 0) for ln in zeros)
    assert len(fig.legends) == 1 and ax.get_legend() is None  # the legend is outside the axes

    # training loss: one panel per strategy, each on its own y axis; integer epochs; tasks named above
    fig = figs["loss"][0]
    panels = [ax for ax in fig.axes if ax.lines]
    assert sorted(ax.get_title() for ax in panels) == sorted(["naive", "ewc", "replay", "joint", "cumulative", "lora"])
    ewc = next(ax for ax in panels if ax.get_title() == "ewc")
    naive = next(ax for ax in panels if ax.get_title() == "naive")
    assert ewc.get_ylim() != naive.get_ylim()  # not shared: EWC's penalty does not flatten naive's curve
    for ax in panels:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    tops = [child for ax in panels for child in ax.child_axes]
    assert tops and [t.get_text() for t in tops[0].get_xticklabels()] == ["digits 0-1", "digits 2-3", "digits 4-5", "digits 6-7"]

    # cost: the strategies named once, on the left; compact numbers on the x axes
    fig = figs["cost"][0]
    shown = [ax for ax in fig.axes if any(t.get_visible() and t.get_text() for t in ax.get_yticklabels())
             and ax.yaxis.get_tick_params()["labelleft"]]
    assert shown == [fig.axes[0]]


def test_ten_tasks_keep_their_names_apart(run_suite_dict, drawn, tmp_path):
    _, tables = run_suite_dict(make_suite(["naive", "cumulative"], stream_params={"patch_size": 4, "n_tasks": 10, "classes_per_task": 1}))
    figs = _by_name(drawn, tables, tmp_path)
    _assert_readable(figs)
    (ax,) = figs["forgetting"][0].axes
    assert len([t for t in ax.get_xticklabels() if t.get_text()]) == 9


def test_every_figure_of_a_generative_report_is_readable(run_suite_dict, drawn, tmp_path):
    stream = {"tasks": ["reverse", "sort", "shift", "count"], "n_train": 40, "n_test": 10}
    _, tables = run_suite_dict(make_suite(["naive", "cumulative", "seq-lora"], seeds=(0, 1), stream="algorithmic",
                                          stream_params=stream, model=DECODER, training={"epochs": 1, "batch_size": 16}))
    assert (tables.cells["status"] == "ok").all()
    figs = _by_name(drawn, tables, tmp_path)
    assert "general" in figs
    _assert_readable(figs)
    (ax,) = figs["general"][0].axes
    assert ax.get_yscale() == "log"  # ×1 to ×1000 on one axis
    assert [t.get_text() for t in ax.get_xticklabels()] == ["before", "reverse", "sort", "shift", "count"]
    assert len(figs["general"][0].legends) == 1 and ax.get_legend() is None


def test_a_narrow_general_range_has_values_on_its_axis(drawn):
    """A real model's general text moves by tens of percent, not by decades: the log axis then
    has ticks at round values (×1.05, ×1.1, ...), not ×1 alone."""
    import pandas as pd

    rows = [{"strategy": s, "seed": k, "after_task": t, "change": c * t + 0.01 * k}
            for s, c in (("naive", 0.1), ("lora", 0.05)) for k in (0, 1) for t in range(4)]
    figures.general_curves("countries", "default", pd.DataFrame(rows))
    ((fig, found),) = drawn
    assert found == []
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    assert len(shown) >= 3 and all(t.startswith("×") for t in shown), shown
