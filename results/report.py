"""Comparison reports: a leaderboard per stream, accuracy-matrix heatmaps, accuracy over tasks,
forgetting per task and cost, as Markdown (with PNG files) and as one self-contained HTML page;
and :func:`compare`, which lines up two result sets with Welch's t-test over seeds.

Every function takes :class:`~clbench.results.Tables` (what :func:`clbench.results.load`
returns) or its DataFrames, so a notebook can use the pieces::

    tables = clbench.results.load("results/a", "results/b")
    leaderboard(tables.summary)            # one row per (stream, stream params, order, strategy)
    forgetting_per_task(tables)            # one row per cell and task
    write_html(tables, "report/")          # report/report.html

A report groups cells by (stream, stream params, order); within a group, one line per strategy,
aggregated over the seeds whose cells finished (cells that failed or diverged are counted, not
averaged). A stream run with several sets of parameters is shown as one group per variant,
named by the parameters that differ (``split-digits (scenario=task-incremental)``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import forgetting_terms
from .store import Tables
from .schema import COST, metric_columns
from .summary import accuracy_matrix, aggregate, drop_repeated_seeds, fewer_values, stream_title, with_variants

#: Metrics in the leaderboard (summary columns), in %: higher ACC/BWT/FWT and lower forgetting is better.
METRICS = ("acc", "bwt", "fwt", "forgetting")
#: Cost columns in the leaderboard: those of :data:`clbench.results.schema.COST` marked ``board``.
BOARD_COST = tuple(c for c in COST if c.board)
#: Metrics shown in the report's leaderboard (the console's too: also AIA and plasticity).
BOARD = ("acc", "aia", "bwt", "fwt", "forgetting", "plasticity", "general_ppl_change")
HEADINGS = {"acc": "ACC", "aia": "AIA", "bwt": "BWT", "fwt": "FWT", "forgetting": "forgetting", "plasticity": "plasticity",
            "general_ppl_change": "general ppl Δ"}
#: Shown only where some cell has a value (generative streams with a general text).
WHERE_MEASURED = ("general_ppl_change",)


# -- tables ---------------------------------------------------------------------------------------


def leaderboard(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (stream, stream_params, order, strategy), with ``variant`` (see
    :func:`~clbench.results.summary.variant_labels`): ``seeds`` (finished), ``not_ok``, and for
    each metric and cost column ``<col>_mean``, ``<col>_std`` and ``<col>_sem`` over seeds, and
    ``rank`` by mean ACC within (stream, stream_params, order); sorted by stream, stream_params,
    order and rank."""
    if summary.empty:
        return pd.DataFrame()
    agg = aggregate(summary, metrics=[m for m in BOARD if m in summary])
    return agg.sort_values(["stream", "stream_params", "order", "rank"], na_position="last", kind="stable").reset_index(drop=True)


def _ok_cells(tables: Tables) -> pd.DataFrame:
    """The finished cells, with ``variant`` (labelled over all cells, as the leaderboard)."""
    cells = with_variants(tables.cells)
    return cells[cells["status"] == "ok"]


def cell_matrices(tables: Tables) -> dict[str, np.ndarray]:
    """run_id -> accuracy matrix ``R`` of every finished cell."""
    return {rid: accuracy_matrix(tables.measurements, rid)[0] for rid in _ok_cells(tables)["run_id"]}


def mean_matrices(tables: Tables) -> dict[tuple[str, str, str], dict[str, tuple[np.ndarray, int]]]:
    """(stream, variant, order) -> strategy -> (mean accuracy matrix over seeds, number of seeds).
    Cells whose matrix shape differs from the group's most common one are left out."""
    mats = cell_matrices(tables)
    out: dict = {}
    for key, g in _ok_cells(tables).groupby(["stream", "variant", "order"], sort=False):
        shapes = pd.Series([mats[r].shape for r in g["run_id"]])
        shape = shapes.mode().iloc[0]
        out[key] = {}
        for strategy, gs in g.groupby("strategy", sort=False):
            Rs = [mats[r] for r in gs["run_id"] if mats[r].shape == shape]
            if Rs:
                out[key][strategy] = (np.mean(Rs, axis=0), len(Rs))
    return out


def accuracy_curves(tables: Tables) -> pd.DataFrame:
    """One row per finished cell and task trained: ``after_task`` (1-based), ``acc_seen`` (mean
    accuracy on the tasks trained so far) and ``acc_all`` (mean accuracy on every task)."""
    mats = cell_matrices(tables)
    rows = []
    for _, c in _ok_cells(tables).iterrows():
        R = mats[c["run_id"]]
        for k in range(R.shape[0]):
            rows.append({"stream": c["stream"], "variant": c["variant"], "order": c["order"], "strategy": c["strategy"], "seed": c["seed"],
                         "after_task": k + 1, "acc_seen": float(R[k, : k + 1].mean()), "acc_all": float(R[k].mean())})
    return pd.DataFrame(rows, columns=["stream", "variant", "order", "strategy", "seed", "after_task", "acc_seen", "acc_all"])


def forgetting_per_task(tables: Tables) -> pd.DataFrame:
    """One row per finished cell and task j but the last: ``forgetting`` = max_{l<T} R[l, j] −
    R[T, j] (the per-task term of the ``forgetting`` metric, Chaudhry et al. 2018:
    :func:`clbench.results.metrics.forgetting_terms`)."""
    mats = cell_matrices(tables)
    rows = []
    for _, c in _ok_cells(tables).iterrows():
        R = mats[c["run_id"]]
        for j, f in enumerate(forgetting_terms(R)):
            rows.append({"stream": c["stream"], "variant": c["variant"], "order": c["order"], "strategy": c["strategy"], "seed": c["seed"],
                         "task": j, "forgetting": float(f)})
    return pd.DataFrame(rows, columns=["stream", "variant", "order", "strategy", "seed", "task", "forgetting"])


#: The tests ``compare`` offers: ``auto`` is the paired t-test where the seeds pair up, else Welch's.
TESTS = ("auto", "welch", "paired-t", "wilcoxon")


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values of a family of tests (NaN entries are not
    tests): the k-th smallest of m p-values times (m − k + 1), made non-decreasing, at most 1."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def _test(xa: pd.Series, xb: pd.Series, test: str) -> tuple[str, float, float]:
    """(the test run, its statistic, the two-sided p) for the values of A and B, indexed by seed."""
    from scipy import stats

    common = xa.index.intersection(xb.index)
    pairs = len(common) >= 2 and len(common) == len(xa) == len(xb)
    name = ("paired-t" if pairs else "welch") if test == "auto" else test
    with warnings.catch_warnings():  # identical values: NaN, said in the output
        warnings.simplefilter("ignore", RuntimeWarning)
        if name == "welch":
            if len(xa) < 2 or len(xb) < 2:
                return name, float("nan"), float("nan")
            r = stats.ttest_ind(xb.to_numpy(), xa.to_numpy(), equal_var=False)
            return name, float(r.statistic), float(r.pvalue)
        if not pairs:  # a paired test asked for where the seeds do not pair up
            return name, float("nan"), float("nan")
        a, b = xa[common].to_numpy(), xb[common].to_numpy()
        if name == "paired-t":
            r = stats.ttest_rel(b, a)
            return name, float(r.statistic), float(r.pvalue)
        if np.all(b == a):  # Wilcoxon's signed-rank test has no non-zero difference to rank
            return name, float("nan"), float("nan")
        r = stats.wilcoxon(b, a)
        return name, float(r.statistic), float(r.pvalue)


def compare(a: Tables, b: Tables, metrics: tuple[str, ...] = METRICS, *,
            strategy_a: str | None = None, strategy_b: str | None = None, test: str = "auto") -> pd.DataFrame:
    """Line up two result sets: one row per (stream, stream_params, order, strategy, metric) found
    in both, with ``variant`` (the stream's parameters that differ between its variants in the two
    sets, "" where it has one set), mean, sd and the number of seeds of each side (a seed counted
    once: a repeated one is left out with a warning line), ``diff`` (B − A), and a two-sided test
    over seeds (``test``, ``stat``, ``p``; NaN with fewer than two seeds on a side, or when
    neither side varies): with ``test="auto"``, the paired t-test where the two sides have the
    same seeds (two or more: a seed's cells share their initial model and data order), else
    Welch's t-test; ``welch``, ``paired-t`` or ``wilcoxon`` (signed-rank, scipy's) ask for one.
    ``p_holm`` is ``p`` adjusted by Holm's method over every test of the table (all rows, all
    metrics). With ``strategy_a``/``strategy_b``, those two strategies are compared (they may
    come from the same result set), matched on (stream, stream_params, order).
    """
    from clbench.errors import UserError

    if test not in TESTS:
        raise UserError(f"unknown test {test!r} (tests: {', '.join(TESTS)})")

    def pick(tables: Tables, strategy: str | None, side: str) -> pd.DataFrame:
        s = tables.summary[tables.summary["status"] == "ok"]
        if strategy is not None:
            if strategy not in set(s["strategy"]):
                raise UserError(f"result set {side} has no finished cells of strategy {strategy!r}")
            s = s[s["strategy"] == strategy].assign(strategy=f"{strategy_a} vs {strategy_b}")
        return s

    sa, sb = with_variants(pick(a, strategy_a, "A"), pick(b, strategy_b, "B"))  # configurations: labelled within each side
    sa, sb = drop_repeated_seeds(sa, "compare, A"), drop_repeated_seeds(sb, "compare, B")
    known = metric_columns(c for c in sa.columns if c in sb.columns)
    for m in metrics:
        if m not in known:
            raise UserError(f"unknown metric {m!r} (metrics: {', '.join(known)})")
    keys = ["stream", "stream_params", "variant", "order", "strategy"]
    common = sa[keys].drop_duplicates().merge(sb[keys].drop_duplicates())
    if common.empty:
        raise UserError("the two result sets have no (stream, stream params, order, strategy) in common")
    rows = []
    for _, k in common.iterrows():
        ga = sa[(sa[keys] == k.values).all(axis=1)].set_index("seed")
        gb = sb[(sb[keys] == k.values).all(axis=1)].set_index("seed")
        for m in metrics:
            xa, xb = ga[m].astype(float).dropna(), gb[m].astype(float).dropna()
            name, stat, p = _test(xa, xb, test)
            rows.append({**k.to_dict(), "metric": m,
                         "a_mean": xa.mean() if len(xa) else np.nan, "a_std": xa.std(ddof=1) if len(xa) > 1 else np.nan, "a_n": len(xa),
                         "b_mean": xb.mean() if len(xb) else np.nan, "b_std": xb.std(ddof=1) if len(xb) > 1 else np.nan, "b_n": len(xb),
                         "diff": (xb.mean() - xa.mean()) if len(xa) and len(xb) else np.nan,
                         "test": name, "stat": stat, "t": stat if name != "wilcoxon" else np.nan, "p": p})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy(float))
    return out


# -- figures --------------------------------------------------------------------------------------


@dataclass
class Figure:
    """A rendered plot: ``name`` (a file stem), ``title``, ``alt`` text and PNG bytes."""

    name: str
    title: str
    alt: str
    png: bytes


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to PNG only
    import matplotlib.pyplot as plt

    return plt


def _slug(*parts) -> str:
    s = "-".join(str(p) for p in parts)
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in s).strip("-")


def _names(kind: str, stream: str, order: str, variant: str) -> tuple[str, str]:
    """A figure's file stem and the words naming its group in the alt text."""
    slug = _slug(kind, stream, variant, order) if variant else _slug(kind, stream, order)
    return slug, f"{stream_title(stream, variant)}, order {order}"


def _task_names(tables: Tables, stream: str, order: str, variant: str = "") -> list[str] | None:
    cells = _ok_cells(tables)
    c = cells[(cells["stream"] == stream) & (cells["variant"] == variant) & (cells["order"] == order)]
    if c.empty:
        return None
    return json.loads(c["tasks"].iloc[0]) if "tasks" in c else None


def heatmaps(tables: Tables, stream: str, order: str, means: dict[str, tuple[np.ndarray, int]], variant: str = "") -> Figure:
    """One heatmap per strategy of the mean accuracy matrix (rows: after training task i)."""
    plt = _pyplot()
    n = len(means)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    T = next(iter(means.values()))[0].shape[0]
    size = 1.2 + 0.45 * T
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + 0.8, rows * size + 0.4), squeeze=False)
    names = _task_names(tables, stream, order, variant)
    labels = ([n if len(n) <= 12 else n[:11] + "…" for n in names] if names and len(names) == T
              else [str(j) for j in range(T)])
    im = None
    for k, (ax, (strategy, (R, seeds))) in enumerate(zip(axes.flat, means.items())):
        im = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(f"{strategy} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
        ax.set_xticks(range(T), labels, fontsize=7, rotation=45 if T > 6 else 0)
        ax.set_yticks(range(T), labels, fontsize=7)
        ax.set_xlabel("evaluated on task", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("after training task", fontsize=8)
        if T <= 10:
            for i in range(T):
                for j in range(T):
                    ax.text(j, i, f"{R[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if R[i, j] < 0.6 else "black")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy %")
    name, on = _names("matrices", stream, order, variant)
    alt = f"accuracy matrices of {', '.join(means)} on {on}"
    return Figure(name, "Accuracy matrices (mean over seeds, %)", alt, _png(fig))


def curves(stream: str, order: str, df: pd.DataFrame, variant: str = "") -> Figure:
    """Mean accuracy on the tasks seen so far after each task, ± sd over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for strategy, g in df.groupby("strategy", sort=False):
        s = g.groupby("after_task")["acc_seen"].agg(["mean", "std"]).fillna({"std": 0.0})
        ax.plot(s.index, s["mean"] * 100, marker="o", label=strategy)
        ax.fill_between(s.index, (s["mean"] - s["std"]) * 100, (s["mean"] + s["std"]) * 100, alpha=0.2)
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("accuracy on tasks seen so far %")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted(df["after_task"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name, on = _names("curves", stream, order, variant)
    alt = f"accuracy over tasks of {', '.join(df['strategy'].unique())} on {on}"
    return Figure(name, "Accuracy over tasks (mean ± sd over seeds)", alt, _png(fig))


def forgetting_bars(stream: str, order: str, df: pd.DataFrame, variant: str = "") -> Figure:
    """Forgetting of each task but the last, one bar per strategy, mean ± sd over seeds."""
    plt = _pyplot()
    strategies = list(df["strategy"].unique())
    tasks = sorted(df["task"].unique())
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(tasks) * len(strategies) + 2), 3.6))
    width = 0.8 / len(strategies)
    for k, strategy in enumerate(strategies):
        s = df[df["strategy"] == strategy].groupby("task")["forgetting"].agg(["mean", "std"]).reindex(tasks)
        x = np.arange(len(tasks)) + (k - (len(strategies) - 1) / 2) * width
        ax.bar(x, s["mean"] * 100, width, yerr=s["std"].fillna(0) * 100, label=strategy, capsize=2)
    ax.set_xticks(range(len(tasks)), [str(t) for t in tasks])
    ax.set_xlabel("task")
    ax.set_ylabel("forgetting %")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    name, on = _names("forgetting", stream, order, variant)
    alt = f"forgetting per task of {', '.join(strategies)} on {on}"
    return Figure(name, "Forgetting per task (mean ± sd over seeds)", alt, _png(fig))


def cost_bars(stream: str, order: str, board: pd.DataFrame, variant: str = "") -> Figure:
    """Training time, peak memory and trainable parameters per strategy (mean ± sd over seeds)."""
    plt = _pyplot()
    cols = [(c.column, c.heading) for c in BOARD_COST if f"{c.column}_mean" in board]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 0.4 * len(board) + 1.4), squeeze=False)
    y = np.arange(len(board))
    for ax, (c, heading) in zip(axes[0], cols):
        mean, std = board[f"{c}_mean"].to_numpy(float), board[f"{c}_std"].fillna(0).to_numpy(float)
        # asymmetric bars: a cost is never below zero
        ax.barh(y, mean, xerr=[np.minimum(std, mean), std], capsize=2, color="tab:gray")
        ax.set_yticks(y, board["strategy"], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(heading, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    name, on = _names("cost", stream, order, variant)
    alt = f"training time, peak memory and trainable parameters of {', '.join(board['strategy'])} on {on}"
    return Figure(name, "Cost (mean ± sd over seeds)", alt, _png(fig))


def train_losses(tables: Tables) -> pd.DataFrame:
    """One row per finished cell, task and epoch: the mean training loss (``train_loss``
    measurements), with ``step`` = the epoch's position across the stream (1-based)."""
    cols = ["stream", "variant", "order", "strategy", "seed", "task", "epoch", "step", "train_loss"]
    m = tables.measurements
    m = m[m["metric"] == "train_loss"]
    if m.empty:
        return pd.DataFrame(columns=cols)
    cells = _ok_cells(tables)[["run_id", "stream", "variant", "order", "strategy", "seed"]]
    df = m[["run_id", "train_task", "eval_task", "value"]].merge(cells, on="run_id")
    df = df.rename(columns={"train_task": "task", "eval_task": "epoch", "value": "train_loss"})
    epochs = df.groupby("run_id")["epoch"].transform("max") + 1
    df["step"] = df["task"] * epochs + df["epoch"] + 1
    return df[cols].sort_values(["stream", "variant", "order", "strategy", "seed", "step"]).reset_index(drop=True)


def loss_curves(stream: str, order: str, df: pd.DataFrame, variant: str = "") -> Figure:
    """Mean training loss of each epoch across the stream, one line per strategy, ± sd over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for strategy, g in df.groupby("strategy", sort=False):
        s = g.groupby("step")["train_loss"].agg(["mean", "std"]).fillna({"std": 0.0})
        ax.plot(s.index, s["mean"], marker=".", label=strategy)
        ax.fill_between(s.index, (s["mean"] - s["std"]).clip(lower=0), s["mean"] + s["std"], alpha=0.2)
    per_task = df.groupby("task")["step"].min()
    for x in per_task.iloc[1:]:
        ax.axvline(x - 0.5, color="gray", linewidth=0.5)
    ax.set_xlabel("epoch across the stream (lines: a new task)")
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name, on = _names("loss", stream, order, variant)
    alt = f"training loss per epoch of {', '.join(df['strategy'].unique())} on {on}"
    return Figure(name, "Training loss per epoch (mean ± sd over seeds)", alt, _png(fig))


# -- the report as blocks, rendered to Markdown or HTML -------------------------------------------


def _pct(mean, std, sem) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    s = f"{mean * 100:.1f}"
    if not pd.isna(std):
        s += f" ± {std * 100:.1f}"
    if not pd.isna(sem):
        s += f" [{sem * 100:.1f}]"
    return s


def _num(fmt: str, mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    s = fmt.format(mean)
    if not pd.isna(std) and std > 0:
        s += " ± " + fmt.format(std)
    return s


def leaderboard_rows(board: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The leaderboard of one (stream, stream params, order) as a header and rows of strings."""
    metrics = [m for m in BOARD if f"{m}_mean" in board and (m not in WHERE_MEASURED or board[f"{m}_mean"].notna().any())]
    cost = [(c.column, c.heading, c.format) for c in BOARD_COST if f"{c.column}_mean" in board]
    header = ["rank", "strategy", "seeds", *(HEADINGS[m] for m in metrics), *(h for _c, h, _f in cost)]
    rows = []
    for _, r in board.iterrows():
        rows.append([
            "–" if pd.isna(r["rank"]) else str(int(r["rank"])),
            str(r["strategy"]),
            f"{r['seeds']}" + (f" (+{r['not_ok']} failed)" if r["not_ok"] else ""),
            *(_pct(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_sem"]) + fewer_values(r, m) for m in metrics),
            *(_num(f, r[f"{c}_mean"], r[f"{c}_std"]) for c, _h, f in cost),
        ])
    return header, rows


def _about(tables: Tables, stream: str, order: str, variant: str) -> str:
    """The scenario and the tasks, in order, of a (stream, variant, order) group."""
    cells = with_variants(tables.cells)
    c = cells[(cells["stream"] == stream) & (cells["variant"] == variant) & (cells["order"] == order)]
    c = c[c["status"] == "ok"] if (c["status"] == "ok").any() else c
    if c.empty:
        return ""
    r = c.iloc[0]
    tasks = json.loads(r["tasks"]) if isinstance(r.get("tasks"), str) else []
    parts = []
    if r.get("scenario"):
        parts.append(f"Scenario: {r['scenario']}")
    if tasks:
        parts.append(f"tasks in order: {', '.join(map(str, tasks))}")
    parts.append(f"stream parameters: {r['stream_params']}")
    return "; ".join(parts) + "."


def _distinct(values) -> str:
    vals = list(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))
    return " | ".join(vals) if vals else "–"


def provenance(tables: Tables) -> list[list[str]]:
    """What produced the numbers, as (what, value) rows: suites, model and training settings,
    versions (each distinct value of the cells' JSON columns), devices, and when cells started."""
    c = tables.cells
    rows = [["suites", _distinct(c["suite"])]]
    for col, what in (("model", "model"), ("training", "training"), ("versions", "versions"), ("device", "devices")):
        if col in c:
            rows.append([what, _distinct(c[col])])
    if "started_at" in c and c["started_at"].notna().any():
        t = pd.to_datetime(c["started_at"].dropna().astype(float), unit="s", utc=True)
        rows.append(["cells started", f"{t.min():%Y-%m-%d %H:%M} – {t.max():%Y-%m-%d %H:%M} UTC"])
    if tables.sources:
        rows.append(["results folders", ", ".join(map(str, tables.sources))])
    return rows


def stand_ins(tables: Tables) -> list[str]:
    """One line for each number of these results that stands in for a paper's different
    procedure: the general text's perplexity for TRACE's general-ability benchmarks, a TRACE task
    scored by another metric than TRACE's (20Minuten without SARI)."""
    from clbench.tasks.trace import TRACE_METRICS

    lines = []
    if (tables.measurements["metric"] == "general_ppl").any():
        lines.append("General ability (general ppl Δ, the general text's bits per byte) is the perplexity of a held-out "
                     "text: a stand-in for the benchmarks (MMLU, BBH, GSM8K, ...) with which TRACE (Wang et al. 2023) "
                     "measures it, not TRACE's number.")
    seen = set()
    for _, c in tables.cells[tables.cells["stream"] == "trace"].iterrows():
        try:
            metrics = json.loads(c["stream_params"]).get("metrics") or {}
        except (TypeError, ValueError, AttributeError):
            continue
        for task, metric in metrics.items():
            short = str(task).rsplit("/", 1)[-1]
            paper = TRACE_METRICS.get(short)
            if paper and metric != paper and (short, metric) not in seen:
                seen.add((short, metric))
                lines.append(f"TRACE's {short} is scored by {metric} here, not by TRACE's {paper}.")
    return lines


def blocks(tables: Tables, sources: list[str] | None = None) -> list[tuple]:
    """The report as a list of blocks: ``("h1"|"h2"|"h3"|"p", text)``, ``("table", header,
    rows)`` and ``("figure", Figure)``."""
    cells = tables.cells
    n_ok = int((cells["status"] == "ok").sum())
    out: list[tuple] = [("h1", "clbench report")]
    what = f"{len(cells)} cells ({n_ok} ok, {len(cells) - n_ok} failed)"
    if sources:
        what += " from " + ", ".join(sources)
    out.append(("p", what + "."))
    kinds = sorted(set(cells["memory_kind"].dropna()) - {""}) if "memory_kind" in cells else []
    out.append(("h2", "Provenance"))
    out.append(("table", ["what", "value"], provenance(tables)))
    out.append(("p", "Metrics in % as mean ± sd [standard error] over seeds; rank by mean ACC. "
                     "A failed cell (status failed or diverged) is counted, not averaged. "
                     "ACC: mean final accuracy; AIA: average incremental accuracy; BWT: backward transfer; FWT: forward transfer; "
                     "forgetting: max over all earlier rows minus final accuracy (Chaudhry et al. 2018, as A-GEM's code computes it); plasticity: mean accuracy right after learning each task. Cost: training seconds, peak memory "
                     f"(MB; {', '.join(kinds) or 'not measured'}), and the most parameters trained at once."))
    for line in stand_ins(tables):
        out.append(("p", line))
    board = leaderboard(tables.summary)
    means = mean_matrices(tables)
    curves_df = accuracy_curves(tables)
    forget_df = forgetting_per_task(tables)
    for (stream, _params, variant, order), b in board.groupby(["stream", "stream_params", "variant", "order"], sort=False):
        out.append(("h2", f"{stream_title(stream, variant)} · order {order}"))
        about = _about(tables, stream, order, variant)
        if about:
            out.append(("p", about))
        out.append(("h3", "Leaderboard"))
        out.append(("table", *leaderboard_rows(b)))
        sel = lambda df: df[(df["stream"] == stream) & (df["variant"] == variant) & (df["order"] == order)]  # noqa: E731
        if means.get((stream, variant, order)):
            out.append(("h3", "Accuracy matrices"))
            out.append(("figure", heatmaps(tables, stream, order, means[(stream, variant, order)], variant)))
        if not sel(curves_df).empty:
            out.append(("h3", "Accuracy over tasks"))
            out.append(("figure", curves(stream, order, sel(curves_df), variant)))
        if not sel(forget_df).empty:
            out.append(("h3", "Forgetting per task"))
            out.append(("figure", forgetting_bars(stream, order, sel(forget_df), variant)))
        loss = train_losses(tables)
        if not sel(loss).empty:
            out.append(("h3", "Training loss"))
            out.append(("figure", loss_curves(stream, order, sel(loss), variant)))
        ok = b[b["seeds"] > 0]
        if not ok.empty:
            out.append(("h3", "Cost"))
            out.append(("figure", cost_bars(stream, order, ok, variant)))
    labelled = with_variants(cells)
    bad = labelled[labelled["status"] != "ok"]
    if not bad.empty:
        out.append(("h2", "Failed cells"))
        out.append(("table", ["stream", "order", "strategy", "seed", "status", "error"],
                    [[stream_title(r["stream"], r["variant"]), str(r["order"]), str(r["strategy"]), str(r["seed"]), str(r["status"]), str(r["error"])]
                     for _, r in bad.iterrows()]))
    return out


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(bl: list[tuple], figures_dir: str = "figures") -> tuple[str, dict[str, bytes]]:
    """Markdown text, and the PNG files it links to (relative path -> bytes)."""
    lines, files = [], {}
    for b in bl:
        if b[0] in ("h1", "h2", "h3"):
            lines += ["#" * int(b[0][1]) + " " + b[1], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            header, rows = b[1], b[2]
            lines.append("| " + " | ".join(map(_md_cell, header)) + " |")
            lines.append("|" + "|".join("---" if h in ("strategy", "stream", "order", "status", "error", "what", "value") else "---:" for h in header) + "|")
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            lines.append("")
        elif b[0] == "figure":
            f: Figure = b[1]
            path = f"{figures_dir}/{f.name}.png"
            files[path] = f.png
            lines += [f"![{f.alt}]({path})", ""]
    return "\n".join(lines), files


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f4f4f4; }
img { max-width: 100%; }
h2 { border-top: 2px solid #ccc; padding-top: 1rem; margin-top: 2rem; }
"""


def render_html(bl: list[tuple]) -> str:
    """One self-contained HTML page: images are embedded as base64 data URIs."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>clbench report</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for b in bl:
        if b[0] in ("h1", "h2", "h3"):
            parts.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            header, rows = b[1], b[2]
            parts.append('<table class="leaderboard">' if header[0] == "rank" else "<table>")
            parts.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</tbody></table>")
        elif b[0] == "figure":
            f: Figure = b[1]
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(f.alt)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(f.title)}</figcaption></figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_markdown(tables: Tables, out: str | Path) -> Path:
    """Write ``out/report.md`` and the PNG files it shows (``out/figures/``)."""
    out = Path(out)
    text, files = render_markdown(blocks(tables, tables.sources))
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


def write_html(tables: Tables, out: str | Path) -> Path:
    """Write ``out/report.html``, a page with everything embedded (no other file needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(render_html(blocks(tables, tables.sources)), encoding="utf-8")
    return out / "report.html"
