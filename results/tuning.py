"""The ``trials`` table of ``clbench tune`` and its report section.

One row per trial (columns: :data:`TRIALS`, described in docs/tuning.md). Each trial's row is
written atomically to ``DIR/trials/<trial_key>.parquet`` as soon as the trial ends, so a killed
tune loses only the trials that were running; ``DIR/trials.parquet`` holds them all, rebuilt at
the end of a run. The report section (:func:`blocks`) puts tuned against default per strategy
and shows each hyper-parameter's effect on the objective, with a plot per strategy.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import MAX_WIDTH, Figure, declutter, png, pyplot, slug
from .render import render_html, render_markdown
from .store import atomic_parquet
from .summary import stream_title, variant_labels

TRIALS: tuple[str, ...] = (
    "trial_key", "search_key", "suite", "stream", "stream_params", "order", "strategy", "protocol", "metric", "mode",
    "searcher", "scheduler", "trial", "searched", "params", "training", "objective", "objective_by_task",
    "tasks_trained", "n_tasks", "budget_used", "status", "error", "seconds", "seed", "run_id",
)
#: Statuses of a finished trial; ``stopped``: the scheduler ended it early (ASHA).
STATUSES = ("ok", "stopped", "diverged", "failed")


def write_trial(out: Path, row: dict) -> None:
    """Write one trial's row (atomically) under ``out/trials/``."""
    d = Path(out) / "trials"
    d.mkdir(parents=True, exist_ok=True)
    atomic_parquet(pd.DataFrame([{k: row.get(k) for k in TRIALS}], columns=list(TRIALS)), d / f"{row['trial_key']}.parquet")


def read_trials(out: Path) -> pd.DataFrame:
    """Every trial recorded under ``out/trials/`` (a file that cannot be read is skipped with a
    warning line: its trial runs again)."""
    parts = []
    for f in sorted((Path(out) / "trials").glob("*.parquet")):
        try:
            parts.append(pd.read_parquet(f))
        except Exception as exc:  # noqa: BLE001 - a damaged file: the trial runs again
            print(f"clbench: warning: {f} is damaged ({type(exc).__name__}); its trial runs again", file=sys.stderr)
            f.unlink(missing_ok=True)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(TRIALS))


def write_trials(out: Path, trials: pd.DataFrame) -> None:
    atomic_parquet(trials, Path(out) / "trials.parquet")


def searched(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with one column per searched dimension (from the ``searched`` JSON)."""
    values = pd.DataFrame([json.loads(s) if isinstance(s, str) and s else {} for s in trials["searched"]], index=trials.index)
    return trials.join(values)


def best_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The best trial of each (stream, stream_params, strategy): the best finite objective among
    the trials that ran every task (``ok``), in the trials' ``mode``; the earliest on a tie."""
    ok = trials[(trials["status"] == "ok") & np.isfinite(trials["objective"].astype(float))]
    if ok.empty:
        return ok
    ok = ok.sort_values("trial", kind="stable")
    pick = []
    for _, g in ok.groupby(["stream", "stream_params", "strategy"], sort=False):
        mode = g["mode"].iloc[0]
        obj = g["objective"].astype(float)
        pick.append(obj.idxmax() if mode == "max" else obj.idxmin())
    return ok.loc[pick]


def tuned_vs_default(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (stream, stream_params, strategy): trials by status, budget used, the default
    configuration's objective (trial 0), the best one's, and what the best sets."""
    best = best_trials(trials).set_index(["stream", "stream_params", "strategy"])
    rows = []
    for (stream, params, strategy), g in trials.groupby(["stream", "stream_params", "strategy"], sort=False):
        default = g[g["trial"] == 0]
        d = default.iloc[0] if len(default) else None
        b = best.loc[(stream, params, strategy)] if (stream, params, strategy) in best.index else None
        counts = g["status"].value_counts()
        rows.append({
            "stream": stream, "stream_params": params, "strategy": strategy, "trials": len(g),
            **{s: int(counts.get(s, 0)) for s in STATUSES},
            "budget_used": int(g["budget_used"].sum()),
            "default": float(d["objective"]) if d is not None and d["status"] == "ok" else math.nan,
            "default_status": "" if d is None else str(d["status"]),
            "tuned": float(b["objective"]) if b is not None else math.nan,
            "best_trial": int(b["trial"]) if b is not None else -1,
            "best": str(b["searched"]) if b is not None else "",
        })
    return pd.DataFrame(rows)


def effects(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (stream, stream_params, strategy, dimension): Spearman's rank correlation of the
    dimension's value with the objective over the trials that ran every task (NaN for a
    dimension whose values are not numbers, or with fewer than three such trials), and the best
    trial's value."""
    from scipy import stats  # here: importing scipy.stats takes seconds

    best = best_trials(trials).set_index(["stream", "stream_params", "strategy"])
    rows = []
    for (stream, params, strategy), g in trials.groupby(["stream", "stream_params", "strategy"], sort=False):
        wide = searched(g)
        dims = sorted({k for s in g["searched"] for k in json.loads(s or "{}")})
        ok = wide[(wide["status"] == "ok") & np.isfinite(wide["objective"].astype(float))]
        for dim in dims:
            x = ok[dim]
            numeric = len(x) >= 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)
            rho = math.nan
            if numeric and x.nunique() > 1 and ok["objective"].nunique() > 1:
                rho = float(stats.spearmanr(x.astype(float), ok["objective"].astype(float)).statistic)
            b = best.loc[(stream, params, strategy)] if (stream, params, strategy) in best.index else None
            rows.append({"stream": stream, "stream_params": params, "strategy": strategy, "dimension": dim,
                         "spearman": rho, "ok_trials": len(ok),
                         "best_value": json.loads(b["searched"]).get(dim) if b is not None else None})
    return pd.DataFrame(rows, columns=["stream", "stream_params", "strategy", "dimension", "spearman", "ok_trials", "best_value"])


#: Metrics whose values lie in [0, 1] (the others, differences of accuracies, in [-1, 1]).
FRACTIONS = frozenset({"acc", "aia", "plasticity"})


def _integral(values) -> bool:
    """Whether every value of a dimension is a whole number (an integer parameter, or a choice of
    them): such values print and plot as integers, not as 8.0."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in vals)


def fmt_value(v, integral: bool = False) -> str:
    """A searched value as the report prints it: integers as integers, other numbers to three
    significant digits (3.19, 0.000151), anything else as JSON."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return json.dumps(v)
    if integral or isinstance(v, int):
        return str(int(round(v)))
    return f"{v:.3g}"


def fmt_config(searched: str, integral: dict[str, bool] | None = None) -> str:
    """A trial's ``searched`` JSON as ``rank 8, training.lr 0.00383`` (see :func:`fmt_value`)."""
    values = json.loads(searched) if isinstance(searched, str) and searched else {}
    return ", ".join(f"{k} {fmt_value(v, (integral or {}).get(k, False))}" for k, v in values.items()) or "–"


def _y_range(done: np.ndarray, metric: str) -> tuple[float, float]:
    """The objective axis, in %: the finished trials with a margin, at least 10 points tall, within
    the metric's range (0 to 100, or -100 to 100)."""
    lo_end, hi_end = (0.0, 100.0) if metric in FRACTIONS else (-100.0, 100.0)
    if not len(done):
        return lo_end, hi_end
    lo, hi = float(np.min(done)), float(np.max(done))
    pad = max(0.1 * (hi - lo), (10.0 - (hi - lo)) / 2, 0.0)
    lo, hi = lo - pad, hi + pad
    if lo < lo_end:
        lo, hi = lo_end, min(hi_end, hi + (lo_end - lo))
    if hi > hi_end:
        lo, hi = max(lo_end, lo - (hi - hi_end)), hi_end
    return lo, hi


def effect_plot(g: pd.DataFrame, title: str) -> Figure | None:
    """The objective (in %, as the tables) against each searched dimension of one strategy's
    trials: trials that ran every task as dots, the default as a star. The trials whose objective
    does not compare (stopped by the scheduler after fewer tasks, diverged, failed) are drawn in a
    strip of their own under each panel, by status, never on the objective's axis. Integer
    dimensions have integer ticks; a dimension spanning a factor of 20 or more is drawn on a log
    scale."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    wide = searched(g)
    dims = sorted({k for s in g["searched"] for k in json.loads(s or "{}")})
    if not dims:
        return None
    plt = pyplot()
    metric = str(g["metric"].iloc[0])
    obj = wide["objective"].astype(float) * 100
    ok = wide["status"] == "ok"
    others = [s for s in STATUSES[1:] if (wide["status"] == s).any()]
    fig = plt.figure(figsize=(min(MAX_WIDTH, 3.3 * len(dims) + 2.6), 3.9 if others else 3.3), layout="constrained")
    grid = fig.add_gridspec(2 if others else 1, len(dims), height_ratios=[4, 0.35 + 0.3 * len(others)] if others else [1])
    lo, hi = _y_range(obj[ok & np.isfinite(obj)].to_numpy(), metric)
    main = None
    styles = {"ok": ("ran every task", dict(c="C0", marker="o")),
              "stopped": ("stopped early (fewer tasks)", dict(facecolors="none", edgecolors="0.35", marker="o")),
              "diverged": ("diverged", dict(c="C3", marker="x")), "failed": ("failed", dict(c="C3", marker="+"))}
    for k, dim in enumerate(dims):
        ax = fig.add_subplot(grid[0, k], sharey=main)
        main = main or ax
        x = wide[dim]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x.dropna())
        if not numeric:
            cats = sorted({json.dumps(v) for v in x})
            x = x.map(lambda v: cats.index(json.dumps(v)))
        strip = fig.add_subplot(grid[1, k], sharex=ax) if others else None
        label, style = styles["ok"]
        if ok.any():
            ax.scatter(x[ok], obj[ok], s=28, label=label, **style)
        d = (wide["trial"] == 0) & ok
        if d.any():
            ax.scatter(x[d], obj[d], marker="*", s=140, c="C1", label="default", zorder=3)
        for row, status in enumerate(others):
            sel = wide["status"] == status
            label, style = styles[status]
            strip.scatter(x[sel], np.full(int(sel.sum()), row), s=28, label=label, **style)
        for a in (ax, strip):
            if a is None:
                continue
            a.grid(alpha=0.3)
            a.tick_params(labelsize=8)
        if not numeric:
            (strip or ax).set_xticks(range(len(cats)), cats)
        elif (x > 0).all() and x.max() / x.min() >= 20:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif _integral(x):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(lo, hi)
        ax.tick_params(labelleft=k == 0)
        if strip is not None:
            ax.tick_params(which="both", labelbottom=False)
            strip.set_ylim(-0.6, len(others) - 0.4)
            strip.set_yticks(range(len(others)), others if k == 0 else [""] * len(others))
            strip.tick_params(axis="y", length=0)
        (strip or ax).set_xlabel(dim, fontsize=9)
    main.set_ylabel(f"{metric} on validation, %", fontsize=9)
    fig.suptitle(title, fontsize=10)
    handles, labels = [], []
    for a in fig.axes:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    declutter(fig)
    return Figure(slug("tune", title), title, f"objective against each hyper-parameter: {title}", png(fig))


def budget_notes(trials: pd.DataFrame) -> list[str]:
    """One line per stream whose strategies did not get the same search: trials of different
    numbers (a strategy with nothing to search gets one), or the learning rate searched for some
    strategies and not for others (a suite's ``training.lr`` for one entry fixes it there)."""
    from .summary import stream_title, variant_labels

    variants = variant_labels(set(zip(trials["stream"], trials["stream_params"])))
    lines = []
    for (stream, params), g in trials.groupby(["stream", "stream_params"], sort=False):
        where = stream_title(stream, variants[(stream, params)])
        counts = g.groupby("strategy", sort=False).size()
        if counts.nunique() > 1:
            lines.append(f"Unequal budget on {where}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                         + " trials (a strategy with nothing to search runs its default once).")
        lr = {k: any("training.lr" in json.loads(x or "{}") for x in gg["searched"]) for k, gg in g.groupby("strategy", sort=False)}
        if len(set(lr.values())) > 1:
            lines.append(f"Unequal search on {where}: the learning rate is searched for "
                         f"{', '.join(k for k, v in lr.items() if v)}, not for {', '.join(k for k, v in lr.items() if not v)}.")
    return lines


def _pct(v: float) -> str:
    return "–" if v != v else f"{v * 100:.1f}"


def blocks(trials: pd.DataFrame, heading: str = "Tuning") -> list[tuple]:
    """The report section of a set of trials (blocks for :mod:`clbench.results.render`)."""
    if trials.empty:
        return [("h2", heading), ("p", "no trials")]
    first = trials.iloc[0]
    protocol = json.loads(first["protocol"])
    out = [("h2", heading), ("p", (
        f"Protocol {protocol['name']} ({', '.join(f'{k} {v}' for k, v in protocol.items() if k != 'name')}); "
        f"objective {first['metric']} ({first['mode']}) on the validation matrix, in %; searcher {first['searcher']}, "
        f"scheduler {first['scheduler']}; trial 0 of each strategy is its default configuration. "
        "Budget used: tasks trained × epochs, summed over the trials."))]
    variants = variant_labels(set(zip(trials["stream"], trials["stream_params"])))
    board = tuned_vs_default(trials)
    integral = {}  # (stream, params, strategy) -> dimension -> whether its values are whole numbers
    for key, g in trials.groupby(["stream", "stream_params", "strategy"], sort=False):
        wide = searched(g)
        integral[key] = {d: _integral(wide[d]) for d in {k for s in g["searched"] for k in json.loads(s or "{}")}}
    rows = []
    for _, r in board.iterrows():
        diff = r["tuned"] - r["default"]
        rows.append([stream_title(r["stream"], variants[(r["stream"], r["stream_params"])]), r["strategy"],
                     f"{r['trials']} ({r['ok']}/{r['stopped']}/{r['diverged']}/{r['failed']})", str(r["budget_used"]),
                     _pct(r["default"]) if r["default_status"] in ("ok", "") else r["default_status"],
                     _pct(r["tuned"]), "–" if diff != diff else f"{diff * 100:+.1f}",
                     fmt_config(r["best"], integral[(r["stream"], r["stream_params"], r["strategy"])])])
    out.append(("h3", "Tuned vs default"))
    notes = budget_notes(trials)
    out.append(("p", " ".join(notes) if notes else
                "Equal budget: every strategy of each stream got the same number of trials, and the learning rate "
                "was searched for all of them or for none."))
    out.append(("table", ["stream", "strategy", "trials (ok/stopped/diverged/failed)", "budget used", "default", "tuned",
                          "tuned − default", "best configuration"], rows))
    eff = effects(trials)
    if not eff.empty:
        out.append(("h3", "Each hyper-parameter's effect on the objective"))
        out.append(("p", "Spearman's rank correlation of the value with the objective over the trials that ran every task "
                         "(– for values that are not numbers, or fewer than three such trials)."))
        out.append(("table", ["stream", "strategy", "dimension", "spearman ρ", "trials", "best value"],
                    [[stream_title(r["stream"], variants[(r["stream"], r["stream_params"])]), r["strategy"], r["dimension"],
                      "–" if r["spearman"] != r["spearman"] else f"{r['spearman']:+.2f}", str(r["ok_trials"]),
                      fmt_value(r["best_value"], integral[(r["stream"], r["stream_params"], r["strategy"])].get(r["dimension"], False))]
                     for _, r in eff.iterrows()]))
        for (stream, params, strategy), g in trials.groupby(["stream", "stream_params", "strategy"], sort=False):
            fig = effect_plot(g, f"{stream_title(stream, variants[(stream, params)])} · {strategy}")
            if fig is not None:
                out.append(("figure", fig))
    return out


def write_report(trials: pd.DataFrame, out: Path, heading: str = "Tuning") -> tuple[Path, Path]:
    """Write ``out/report.md`` (with ``out/figures/``) and a self-contained ``out/report.html``."""
    out = Path(out)
    bl = [("h1", f"clbench tune: {trials['suite'].iloc[0]}" if len(trials) else "clbench tune"), *blocks(trials, heading)]
    text, files = render_markdown(bl)
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.html").write_text(render_html(bl), encoding="utf-8")
    return out / "report.md", out / "report.html"
