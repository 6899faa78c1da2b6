"""The numbers a comparison shows, as DataFrames: the leaderboard (mean, sd and standard error
over seeds, rank), mean accuracy matrices, accuracy over tasks, forgetting per task, training
losses, and :func:`compare`, which lines up two result sets with Welch's t-test over seeds.

Every function takes :class:`~clbench.results.Tables` (what :func:`clbench.results.load`
returns) or its DataFrames. Cells are grouped by (stream, stream params, order); within a group,
one line per strategy, aggregated over the seeds whose cells finished (cells that failed or
diverged are counted, not averaged). A stream run with several sets of parameters is one group
per variant, named by the parameters that differ (``split-digits (scenario=task-incremental)``).
:mod:`clbench.results.figures` draws these numbers, :mod:`clbench.results.render` writes them as
text, and :mod:`clbench.results.report` puts them together.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

from clbench.errors import UserError

from .metrics import forgetting_terms
from .schema import COST, metric_columns
from .store import Tables
from .summary import accuracy_matrix, aggregate, drop_repeated_seeds, with_variants

#: Metrics in the leaderboard (summary columns), in %: higher ACC/BWT/FWT and lower forgetting is better.
METRICS = ("acc", "bwt", "fwt", "forgetting")
#: Cost columns in the leaderboard: those of :data:`clbench.results.schema.COST` marked ``board``.
BOARD_COST = tuple(c for c in COST if c.board)
#: Metrics shown in the report's leaderboard (the console's too: also AIA and plasticity).
BOARD = ("acc", "aia", "bwt", "fwt", "forgetting", "plasticity", "general_ppl_change")
#: Shown only where some cell has a value (generative streams with a general text).
WHERE_MEASURED = ("general_ppl_change",)


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


def ok_cells(tables: Tables) -> pd.DataFrame:
    """The finished cells, with ``variant`` (labelled over all cells, as the leaderboard)."""
    cells = with_variants(tables.cells)
    return cells[cells["status"] == "ok"]


def cell_matrices(tables: Tables) -> dict[str, np.ndarray]:
    """run_id -> accuracy matrix ``R`` of every finished cell."""
    return {rid: accuracy_matrix(tables.measurements, rid)[0] for rid in ok_cells(tables)["run_id"]}


def mean_matrices(tables: Tables) -> dict[tuple[str, str, str], dict[str, tuple[np.ndarray, int]]]:
    """(stream, variant, order) -> strategy -> (mean accuracy matrix over seeds, number of seeds).
    Cells whose matrix shape differs from the group's most common one are left out."""
    mats = cell_matrices(tables)
    out: dict = {}
    for key, g in ok_cells(tables).groupby(["stream", "variant", "order"], sort=False):
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
    for _, c in ok_cells(tables).iterrows():
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
    for _, c in ok_cells(tables).iterrows():
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
    from scipy import stats  # here: importing scipy.stats takes seconds

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


def train_losses(tables: Tables) -> pd.DataFrame:
    """One row per finished cell, task and epoch: the mean training loss (``train_loss``
    measurements), with ``step`` = the epoch's position across the stream (1-based)."""
    cols = ["stream", "variant", "order", "strategy", "seed", "task", "epoch", "step", "train_loss"]
    m = tables.measurements
    m = m[m["metric"] == "train_loss"]
    if m.empty:
        return pd.DataFrame(columns=cols)
    cells = ok_cells(tables)[["run_id", "stream", "variant", "order", "strategy", "seed"]]
    df = m[["run_id", "train_task", "eval_task", "value"]].merge(cells, on="run_id")
    df = df.rename(columns={"train_task": "task", "eval_task": "epoch", "value": "train_loss"})
    epochs = df.groupby("run_id")["epoch"].transform("max") + 1
    df["step"] = df["task"] * epochs + df["epoch"] + 1
    return df[cols].sort_values(["stream", "variant", "order", "strategy", "seed", "step"]).reset_index(drop=True)


def task_names(tables: Tables, stream: str, order: str, variant: str = "") -> list[str] | None:
    """The names of the tasks, in order, of a (stream, variant, order) group (None if unknown)."""
    cells = ok_cells(tables)
    c = cells[(cells["stream"] == stream) & (cells["variant"] == variant) & (cells["order"] == order)]
    if c.empty:
        return None
    return json.loads(c["tasks"].iloc[0]) if "tasks" in c else None
