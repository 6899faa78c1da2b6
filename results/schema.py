"""The result tables' columns, in one place. What each column means is written once, in
docs/results.md (a test checks that the two list the same columns).

* ``measurements``: :data:`MEASUREMENTS`, one row per cell × train task × eval task × metric.
* ``cells``: :data:`CELLS`, one row per cell, each column with the value it has before the cell
  runs (:func:`new_cell_row`).
* ``summary``: :data:`IDENTITY` (which cell a row is), :data:`COST` (what it cost), then one
  column per registered metric (:func:`metric_columns`) and ``reference_run_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from clbench.host import get_host

NAN = float("nan")

MEASUREMENTS: tuple[str, ...] = (
    "run_id", "suite", "stream", "order", "strategy", "params", "seed",
    "train_task", "eval_task", "metric", "value",
)

#: The ``cells`` table: column -> its value before the cell runs (``None``: set from the cell).
CELLS: dict[str, Any] = {
    "run_id": None, "config_hash": None, "suite": None, "stream": None, "stream_params": None, "order": None,
    "strategy": None, "strategies": None, "params": None, "seed": None, "model": None, "training": None,
    "config": None,
    "status": "running", "error": "", "traceback": "",
    "scenario": "", "tasks": "[]", "n_tasks": 0,
    "train_seconds": 0.0, "eval_seconds": 0.0, "total_seconds": 0.0,
    "peak_memory_mb": NAN, "memory_kind": "",
    "trainable_params": 0, "total_params": 0, "buffer_size": 0, "samples": "[]",
    "examples_seen": 0, "tokens_seen": 0, "padding_fraction": NAN,
    "device": "", "threads": 0, "attention": "", "versions": None, "started_at": None,
}

#: The summary's columns that say which cell a row is (taken from ``cells``).
IDENTITY: tuple[str, ...] = ("run_id", "suite", "stream", "stream_params", "order", "strategy", "params", "seed",
                             "status", "model", "training")


@dataclass(frozen=True)
class Cost:
    """A cost column of the summary (taken from ``cells``), and how reports show it."""

    column: str
    heading: str
    format: str
    board: bool  # shown in the leaderboard


COST: tuple[Cost, ...] = (
    Cost("train_seconds", "train s", "{:.1f}", True),
    Cost("eval_seconds", "eval s", "{:.1f}", False),
    Cost("peak_memory_mb", "peak MB", "{:.0f}", True),
    Cost("trainable_params", "trainable params", "{:,.0f}", True),
    Cost("buffer_size", "buffer", "{:,.0f}", False),
)
COST_COLUMNS: tuple[str, ...] = tuple(c.column for c in COST)

#: Columns that the summary and its aggregation add beside identity, cost and metrics.
DERIVED: tuple[str, ...] = ("reference_run_id", "variant")


def new_cell_row(identity: dict[str, Any]) -> dict[str, Any]:
    """A ``cells`` row before its cell runs: ``identity`` gives the columns whose default is
    None, every other column has its default."""
    missing = [k for k, v in CELLS.items() if v is None and k not in identity]
    if missing:
        raise KeyError(f"a cells row needs {', '.join(missing)}")
    return {k: identity.get(k, v) if v is None else v for k, v in CELLS.items()}


def metric_columns(columns: Iterable[str], metrics: Iterable[str] | None = None) -> list[str]:
    """The metric columns among a summary's ``columns``, in their order: those named by a
    registered metric (``metrics``: by default the loaded host's)."""
    if metrics is None:
        metrics = get_host().names("metrics")
    known = set(metrics)
    return [c for c in columns if c in known]
