"""From measurements to the ``summary`` table (one row per cell) and its aggregation over seeds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .metrics import Matrices

#: Columns that say which cells are comparable apart from the strategy (intransigence's reference).
GROUP = ("stream", "stream_params", "order", "seed", "model", "training")
REFERENCE_STRATEGY = "cumulative"
COST = ("train_seconds", "eval_seconds", "peak_memory_mb", "trainable_params", "buffer_size")


def accuracy_matrix(measurements: pd.DataFrame, run_id: str, metric: str = "acc") -> tuple[np.ndarray, np.ndarray | None]:
    """``(R, b)`` of one cell: ``R[i, j]`` after training task i, ``b[j]`` before training."""
    m = measurements[(measurements["run_id"] == run_id) & (measurements["metric"] == metric)]
    table = m.pivot_table(index="train_task", columns="eval_task", values="value", aggfunc="first")
    table = table.sort_index().sort_index(axis=1)
    b = table.loc[-1].to_numpy() if -1 in table.index else None
    R = table.drop(index=-1, errors="ignore").to_numpy()
    return R, b


def summarize(measurements: pd.DataFrame, cells: pd.DataFrame, metrics: dict | None = None) -> pd.DataFrame:
    """One row per cell with every registered metric (NaN for cells that did not finish)."""
    if metrics is None:
        from clbench.host import get_host

        metrics = {n: e.obj for n, e in get_host().registries["metrics"].items()}
    keep = ["run_id", "suite", "stream", "order", "strategy", "params", "seed", "status", *COST]
    rows = []
    ok = cells[cells["status"] == "ok"]
    matrices = {rid: accuracy_matrix(measurements, rid) for rid in ok["run_id"]}
    refs = {}
    for _, c in ok[ok["strategy"] == REFERENCE_STRATEGY].iterrows():
        refs[tuple(c[g] for g in GROUP)] = matrices[c["run_id"]][0]
    for _, c in cells.iterrows():
        row = {k: c[k] for k in keep if k in c}
        if c["status"] == "ok":
            R, b = matrices[c["run_id"]]
            m = Matrices(R=R, b=b, R_ref=refs.get(tuple(c[g] for g in GROUP)))
            for name, fn in metrics.items():
                row[name] = float(fn(m))
        else:
            for name in metrics:
                row[name] = float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(summary: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and standard error over seeds per (stream, order, strategy), with
    the rank by mean ACC within each (stream, order). Failed cells are left out (and counted)."""
    if summary.empty:
        return pd.DataFrame()
    if metrics is None:
        fixed = {"run_id", "suite", "stream", "order", "strategy", "params", "seed", "status", *COST}
        metrics = [c for c in summary.columns if c not in fixed]
    keys = ["stream", "order", "strategy"]
    out = []
    for key, g in summary.groupby(keys, sort=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(keys, key))
        row["seeds"] = len(ok)
        row["not_ok"] = len(g) - len(ok)
        for col in [*metrics, "train_seconds", "trainable_params"]:
            vals = ok[col].astype(float).dropna()
            row[f"{col}_mean"] = vals.mean() if len(vals) else np.nan
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else np.nan
            row[f"{col}_sem"] = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else np.nan
        out.append(row)
    agg = pd.DataFrame(out)
    if "acc_mean" in agg:
        agg["rank"] = agg.groupby(["stream", "order"])["acc_mean"].rank(ascending=False, method="min")
    return agg


def params_of(cell_row: pd.Series) -> list:
    return json.loads(cell_row["params"])
