"""From measurements to the ``summary`` table (one row per cell) and its aggregation over seeds."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from clbench.host import get_host

from .metrics import Matrices
from .schema import COST_COLUMNS, IDENTITY, metric_columns

#: Columns that say which cells are comparable apart from the strategy (intransigence's reference):
#: the same stream, stream parameters, order, seed and model. Not ``training``: a reference run at
#: another learning rate (``cumulative`` at 1e-4 beside LoRA strategies at 1e-3) is still the one.
GROUP = ("stream", "stream_params", "order", "seed", "model")
REFERENCE_STRATEGY = "cumulative"
#: Strategies that train on a task before it comes: R[j-1, j] is not forward transfer for them.
SEES_FUTURE_TASKS = frozenset({"joint"})


def accuracy_matrix(measurements: pd.DataFrame, run_id: str, metric: str = "acc") -> tuple[np.ndarray, np.ndarray | None]:
    """``(R, b)`` of one cell: ``R[i, j]`` after training task i, ``b[j]`` before training."""
    m = measurements[(measurements["run_id"] == run_id) & (measurements["metric"] == metric)]
    table = m.pivot_table(index="train_task", columns="eval_task", values="value", aggfunc="first")
    table = table.sort_index().sort_index(axis=1)
    b = table.loc[-1].to_numpy() if -1 in table.index else None
    R = table.drop(index=-1, errors="ignore").to_numpy()
    return R, b


def general_series(measurements: pd.DataFrame, run_id: str, metric: str = "general_ppl") -> np.ndarray | None:
    """The perplexity (``general_ppl``; ``general_bpb``: bits per byte) of a cell's general text
    before training and after each task (``eval_task`` -1), or None when it has none."""
    m = measurements[(measurements["run_id"] == run_id) & (measurements["metric"] == metric)]
    if m.empty:
        return None
    return m.sort_values("train_task")["value"].to_numpy(float)


def _strategy_names(cell: pd.Series) -> list[str]:
    names = cell.get("strategies")
    if isinstance(names, str) and names:
        try:
            return list(json.loads(names))
        except ValueError:
            pass
    return str(cell["strategy"]).split("+")


def fwt_undefined(cell: pd.Series) -> str | None:
    """Why forward transfer is undefined for ``cell`` (a ``cells`` row), None where it is defined.
    The one place that decides it (docs/results.md):

    * class-incremental streams: a task's classes have never been trained before the task, so
      ``R[j-1, j]`` is 0 and FWT would be ``-mean(b[1:])``, the initial model's accuracy;
    * strategies that train on every task at once (``joint``): ``R[j-1, j]`` was trained on task j.
    """
    if cell.get("scenario") == "class-incremental":
        return "class-incremental: a task's classes are never trained before it"
    seen = SEES_FUTURE_TASKS.intersection(_strategy_names(cell))
    if seen:
        return f"{', '.join(sorted(seen))} trains on every task at once"
    return None


#: Training fields that are not part of a cell's configuration (left out of its hash too).
NOT_CONFIG = ("training.device", "training.eval_batch_size")


def _key(cell: pd.Series) -> tuple:
    return tuple(cell[g] if g in cell else None for g in GROUP)


def reference_cells(cells: pd.DataFrame) -> dict[str, str]:
    """run_id -> the run_id of the ``cumulative`` cell that is its intransigence reference: a
    finished one with the same stream, stream parameters, order, seed and model (:data:`GROUP`);
    among several, the one with the same ``training`` table. Cells with none, or with several
    and none of the same training, have no entry."""
    ok = cells[cells["status"] == "ok"]
    refs: dict[tuple, list[pd.Series]] = {}
    for _, c in ok[ok["strategy"] == REFERENCE_STRATEGY].iterrows():
        refs.setdefault(_key(c), []).append(c)
    out = {}
    for _, c in cells.iterrows():
        candidates = refs.get(_key(c), [])
        same = [r for r in candidates if r.get("training") == c.get("training")]
        pick = same if same else candidates
        if len(pick) == 1:
            out[c["run_id"]] = pick[0]["run_id"]
    return out


def summarize(measurements: pd.DataFrame, cells: pd.DataFrame, metrics: dict | None = None) -> pd.DataFrame:
    """One row per cell with every registered metric (NaN for cells that did not finish, and
    for metrics undefined for the cell: see :func:`fwt_undefined`), and ``reference_run_id``, the
    ``cumulative`` cell intransigence was measured against ("" for none)."""
    if metrics is None:
        metrics = {n: e.obj for n, e in get_host().registries["metrics"].items()}
    keep = [*IDENTITY, *COST_COLUMNS]
    rows = []
    ok = cells[cells["status"] == "ok"]
    matrices = {rid: accuracy_matrix(measurements, rid) for rid in ok["run_id"]}
    reference = reference_cells(cells)
    for _, c in cells.iterrows():
        row = {k: c[k] for k in keep if k in c}
        if c["status"] == "ok":
            R, b = matrices[c["run_id"]]
            ref = reference.get(c["run_id"])
            m = Matrices(R=R, b=b, R_ref=matrices[ref][0] if ref else None, fwt_undefined=fwt_undefined(c),
                         general=general_series(measurements, c["run_id"]),
                         general_bpb=general_series(measurements, c["run_id"], "general_bpb"))
            for name, fn in metrics.items():
                row[name] = float(fn(m))
            row["reference_run_id"] = ref or ""
        else:
            for name in metrics:
                row[name] = float("nan")
            row["reference_run_id"] = ""
        rows.append(row)
    return pd.DataFrame(rows)


def canonical_params(params) -> str:
    """A stream's parameters as JSON with sorted keys ("{}" where missing)."""
    if params is None or (isinstance(params, float) and np.isnan(params)):
        return "{}"
    try:
        return json.dumps(json.loads(params) if isinstance(params, str) else params, sort_keys=True)
    except (TypeError, ValueError):
        return str(params)


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def variant_labels(pairs) -> dict[tuple[str, str], str]:
    """(stream, canonical stream_params) -> a short label of the variant: the parameters that
    differ between the variants of that stream among ``pairs`` ("scenario=task-incremental"),
    "" for a stream with one set of parameters."""
    by_stream: dict[str, list[str]] = {}
    for stream, params in pairs:
        seen = by_stream.setdefault(stream, [])
        if params not in seen:
            seen.append(params)
    out = {}
    for stream, variants in by_stream.items():
        if len(variants) == 1:
            out[(stream, variants[0])] = ""
            continue
        dicts = {p: json.loads(p) for p in variants}
        if not all(isinstance(d, dict) for d in dicts.values()):
            out.update({(stream, p): p for p in variants})
            continue
        keys = sorted(set().union(*dicts.values()))
        missing = object()
        differ = [k for k in keys if len({json.dumps(d[k], sort_keys=True) if k in d else missing for d in dicts.values()}) > 1]
        labels = {p: ", ".join(f"{k}={_value(d[k])}" if k in d else f"{k}=(default)" for k in differ)
                  for p, d in dicts.items()}
        if len(set(labels.values())) < len(labels):  # values that print alike: the whole JSON
            labels = {p: p for p in variants}
        out.update({(stream, p): lab for p, lab in labels.items()})
    return out


def with_variants(*dfs: pd.DataFrame, configs: bool = True):
    """Each of ``dfs`` (cells or summary rows) with ``stream_params`` as canonical JSON and a
    ``variant`` column, labelled by :func:`variant_labels` over the streams and parameters of all
    of them together (so that two result sets name a stream's variants alike). With ``configs``,
    strategies of several configurations are labelled apart (:func:`config_labels`, within each
    frame). One frame given, one returned; several, a list."""
    out = [df.assign(stream_params=df["stream_params"].map(canonical_params) if "stream_params" in df else "{}")
           for df in dfs]
    if configs:
        out = [df.assign(strategy=config_labels(df)) if not df.empty else df for df in out]
    labels = variant_labels(key for df in out for key in zip(df["stream"], df["stream_params"]))
    out = [df.assign(variant=[labels[key] for key in zip(df["stream"], df["stream_params"])]) for df in out]
    return out[0] if len(out) == 1 else out


def _json(v):
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def config_fields(row) -> dict[str, str]:
    """A cell's configuration beyond stream, order and strategy name, flattened: the strategy's
    parameters (``memory_size``; ``ewc.lambda_`` in a combination), ``model.<field>`` and
    ``training.<field>``, each value as JSON text."""
    out: dict[str, str] = {}
    parts = _json(row.get("params")) or []
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, list) and len(part) == 2 and isinstance(part[1], dict):
            for k, v in part[1].items():
                out[k if len(parts) == 1 else f"{part[0]}.{k}"] = _value(v)
    for section in ("model", "training"):
        d = _json(row.get(section))
        if isinstance(d, dict):
            out.update((f"{section}.{k}", _value(v)) for k, v in d.items() if f"{section}.{k}" not in NOT_CONFIG)
    return out


def differing_fields(configs: list[dict[str, str]]) -> list[str]:
    """The fields whose value (or presence) is not the same in every one of ``configs``."""
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if len({c.get(k, "(default)") for c in configs}) > 1]


def config_labels(df: pd.DataFrame) -> list[str]:
    """Each row's strategy label, with the configuration fields that tell it apart from the other
    configurations of the same stream, stream parameters, order and strategy in ``df``
    (``replay (memory_size=20)``, ``naive (training.epochs=2)``); the plain label where there
    is one configuration."""
    if df.empty or "strategy" not in df:
        return [] if df.empty else list(df.get("strategy", []))
    configs = [config_fields(r) for r in df.to_dict("records")]
    keys = list(zip(df["stream"], df["stream_params"].map(canonical_params) if "stream_params" in df else [""] * len(df),
                    df["order"], df["strategy"]))
    groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    labels = [str(s) for s in df["strategy"]]
    for members in groups.values():
        distinct = {json.dumps(configs[i], sort_keys=True) for i in members}
        if len(distinct) < 2:
            continue
        differ = differing_fields([configs[i] for i in members])
        for i in members:
            labels[i] = f"{labels[i]} (" + ", ".join(f"{k}={configs[i].get(k, '(default)')}" for k in differ) + ")"
    return labels


def config_differences(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """How the configurations of two sets of cells differ, a line per field: ``training.epochs: 1
    (A) vs 2 (B)``; a field with several values on a side lists them all."""
    def values(df: pd.DataFrame) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for row in df.to_dict("records"):
            for k, v in config_fields(row).items():
                out.setdefault(k, set()).add(v)
        return out

    va, vb = values(a), values(b)
    lines = []
    for k in sorted(set(va) | set(vb)):
        sa, sb = va.get(k, {"(default)"}), vb.get(k, {"(default)"})
        if sa != sb:
            lines.append(f"{k}: {', '.join(sorted(sa))} (A) vs {', '.join(sorted(sb))} (B)")
    return lines


def drop_repeated_seeds(df: pd.DataFrame, what: str = "results") -> pd.DataFrame:
    """``df`` (summary or cells rows, strategies labelled by :func:`config_labels`) without a seed
    counted twice: a second row of the same configuration and seed (another run id: e.g. cells run
    by an earlier clbench whose hash differs) is left out with a one-line warning."""
    if df.empty:
        return df
    cols = [c for c in ("stream", "stream_params", "order", "strategy", "seed") if c in df]
    dup = df.duplicated(subset=cols, keep="first")
    if dup.any():
        shown = ", ".join(f"{r['strategy']} seed {r['seed']}" for r in df[dup].head(5).to_dict("records"))
        print(f"clbench: warning: {what}: {int(dup.sum())} cell(s) repeat a configuration and seed already "
              f"counted, left out ({shown}{', ...' if dup.sum() > 5 else ''})", file=sys.stderr)
    return df[~dup]


def stream_title(stream: str, variant: str) -> str:
    """How reports name a stream: ``split-digits``, or ``split-digits (scenario=task-incremental)``
    where the results hold several variants of it."""
    return f"{stream} ({variant})" if variant else str(stream)


def fewer_values(row, col: str) -> str:
    """`` (n=k)`` where the mean of ``col`` in an :func:`aggregate` row stands on fewer values
    than the row's ``seeds`` (a metric undefined for some cells), else ""."""
    n = row.get(f"{col}_n")
    return f" (n={int(n)})" if n is not None and not pd.isna(n) and 0 < n < row["seeds"] else ""


def aggregate(summary: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and standard error over seeds per (stream, stream_params, order,
    strategy) of each of ``metrics`` (default: every registered metric in ``summary``) and each
    cost column, with the rank by mean ACC within each (stream, stream_params, order). Failed
    cells are left out (and counted: ``not_ok``). ``seeds`` counts the finished cells, and
    ``<column>_n`` the values behind each mean (fewer where a metric is NaN for some cells).
    ``variant`` labels a stream's parameters where it appears with several sets of them
    (:func:`variant_labels`), else is empty."""
    if summary.empty:
        return pd.DataFrame()
    if metrics is None:
        metrics = metric_columns(summary.columns)
    summary = drop_repeated_seeds(with_variants(summary), "aggregate")
    keys = ["stream", "stream_params", "variant", "order", "strategy"]
    out = []
    for key, g in summary.groupby(keys, sort=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(keys, key))
        row["seeds"] = len(ok)
        row["not_ok"] = len(g) - len(ok)
        for col in [*metrics, *(c for c in COST_COLUMNS if c in ok)]:
            vals = ok[col].astype(float).dropna()
            row[f"{col}_mean"] = vals.mean() if len(vals) else np.nan
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else np.nan
            row[f"{col}_sem"] = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else np.nan
            row[f"{col}_n"] = len(vals)
        out.append(row)
    agg = pd.DataFrame(out)
    if "acc_mean" in agg:
        agg["rank"] = agg.groupby(["stream", "stream_params", "order"], sort=False)["acc_mean"].rank(ascending=False, method="min")
    return agg

