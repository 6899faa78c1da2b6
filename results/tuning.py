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

from .figures import Figure, png, pyplot, slug
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


def effect_plot(g: pd.DataFrame, title: str) -> Figure | None:
    """The objective against each searched dimension of one strategy's trials: trials that ran
    every task (dots; the default a star); trials the scheduler stopped (hollow circles), diverged
    or failed ones (crosses), whose objectives do not compare, along the bottom."""
    wide = searched(g)
    dims = sorted({k for s in g["searched"] for k in json.loads(s or "{}")})
    if not dims:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.0), squeeze=False)
    obj = wide["objective"].astype(float)
    done = obj[wide["status"] == "ok"]
    lo, hi = (np.nanmin(done), np.nanmax(done)) if np.isfinite(done).any() else (0.0, 0.0)
    floor = lo - 0.1 * ((hi - lo) or 0.1)  # below every finished trial
    for ax, dim in zip(axes[0], dims):
        x = wide[dim]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x.dropna())
        if not numeric:
            cats = sorted({json.dumps(v) for v in x})
            x = x.map(lambda v: cats.index(json.dumps(v)))
            ax.set_xticks(range(len(cats)), cats, rotation=30)
        elif (x > 0).all() and x.max() / x.min() >= 50:
            ax.set_xscale("log")
        for status, label, style in (("ok", "ran every task", dict(c="C0", marker="o")),
                                     ("stopped", "stopped early", dict(facecolors="none", edgecolors="0.4", marker="o")),
                                     ("diverged", "diverged", dict(c="C3", marker="x")), ("failed", "failed", dict(c="C3", marker="+"))):
            sel = wide["status"] == status
            if sel.any():  # only finished trials' objectives compare: the others are drawn at the bottom
                y = obj[sel] if status == "ok" else np.full(int(sel.sum()), floor)
                ax.scatter(x[sel], y, s=28, label=label, **style)
        d = wide["trial"] == 0
        if d.any() and wide.loc[d, "status"].iloc[0] == "ok":
            ax.scatter(x[d], obj[d], marker="*", s=140, c="C1", label="default", zorder=3)
        ax.set_xlabel(dim)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{g['metric'].iloc[0]} (validation)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
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
    rows = []
    for _, r in board.iterrows():
        diff = r["tuned"] - r["default"]
        rows.append([stream_title(r["stream"], variants[(r["stream"], r["stream_params"])]), r["strategy"],
                     f"{r['trials']} ({r['ok']}/{r['stopped']}/{r['diverged']}/{r['failed']})", str(r["budget_used"]),
                     _pct(r["default"]) if r["default_status"] in ("ok", "") else r["default_status"],
                     _pct(r["tuned"]), "–" if diff != diff else f"{diff * 100:+.1f}", r["best"] or "–"])
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
                      json.dumps(r["best_value"])] for _, r in eff.iterrows()]))
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
