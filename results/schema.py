"""The result tables' columns, in one place. What each column means is written once, in
docs/results.md (a test checks that the two list the same columns).

* ``measurements``: :data:`MEASUREMENTS`, one row per cell × train task × eval task × metric.
* ``cells``: :data:`CELLS`, one row per cell, each column with the value it has before the cell
  runs (:func:`new_cell_row`).
* ``summary``: :data:`IDENTITY` (which cell a row is), :data:`COST` (what it cost) and
  :data:`COST_KINDS` (what a cost column measured), then one column per registered metric
  (:func:`metric_columns`; and per kind of task where a stream mixes kinds),
  ``reference_run_id`` and ``units``.
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
    "run_id": None, "config_hash": None, "suite": None, "published": None, "stream": None, "stream_params": None, "order": None,
    "strategy": None, "strategies": None, "params": None, "seed": None, "model": None, "training": None,
    "config": None,
    "status": "running", "error": "", "traceback": "",
    "scenario": "", "tasks": "[]", "n_tasks": 0, "scores": "[]",
    "train_seconds": 0.0, "eval_seconds": 0.0, "total_seconds": 0.0, "warmup_seconds": 0.0,
    "peak_memory_mb": NAN, "memory_kind": "", "start_memory_mb": NAN,
    "trainable_params": 0, "total_params": 0, "buffer_size": 0, "samples": "[]",
    "examples_seen": 0, "tokens_seen": 0, "padding_fraction": NAN, "prompt_cut_fraction": NAN,
    "device": "", "threads": 0, "precision": "", "attention": "", "versions": None, "started_at": None,
}

#: The summary's columns that say which cell a row is (taken from ``cells``).
IDENTITY: tuple[str, ...] = ("run_id", "suite", "stream", "stream_params", "order", "strategy", "params", "seed",
                             "status", "model", "training")


#: What ``peak_memory_mb`` measured (the ``memory_kind`` column): kind -> (its name in a column
#: heading, what it is).
MEMORY_KINDS: dict[str, tuple[str, str]] = {
    "cell-rss": ("RSS", "the process's peak resident memory while the cell ran (its high-water mark reset when the cell started)"),
    "cuda-allocated": ("CUDA", "the peak of the CUDA memory torch allocated while the cell ran (its peak counters reset when the cell started)"),
    "process-rss": ("process RSS", "the process's peak resident memory since the process started, earlier cells included"),
}


@dataclass(frozen=True)
class Cost:
    """A cost column of the summary (taken from ``cells``), and how reports show it."""

    column: str
    heading: str  # "{kind}" is replaced by what the column measured (:meth:`heading_in`)
    format: str
    board: bool  # shown in the leaderboard
    kind_column: str | None = None  # the summary column that says what it measured (``memory_kind``)

    def heading_in(self, table: Any = None) -> str:
        """The heading for the rows of ``table`` (a summary or its aggregation, whose
        :attr:`kind_column` lists what was measured, comma-separated): ``peak RSS MB``,
        ``peak CUDA MB``, ``peak RSS/CUDA MB`` where both are there."""
        if "{kind}" not in self.heading:
            return self.heading
        kinds: list[str] = []
        if table is not None and self.kind_column is not None and self.kind_column in table:
            for value in table[self.kind_column]:
                for k in str(value).split(",") if isinstance(value, str) else ():
                    if k and k not in kinds:
                        kinds.append(k)
        names = sorted({MEMORY_KINDS.get(k, (k, ""))[0] for k in kinds})
        return self.heading.replace("{kind}", "/".join(names) or "memory").replace("  ", " ")


COST: tuple[Cost, ...] = (
    Cost("train_seconds", "train s", "{:.1f}", True),
    Cost("eval_seconds", "eval s", "{:.1f}", False),
    Cost("peak_memory_mb", "peak {kind} MB", "{:.0f}", True, kind_column="memory_kind"),
    Cost("trainable_params", "trainable params", "{:,.0f}", True),
    Cost("buffer_size", "buffer", "{:,.0f}", False),
)
COST_COLUMNS: tuple[str, ...] = tuple(c.column for c in COST)
#: The summary's columns that say what a cost column measured (each cell's, from ``cells``).
COST_KINDS: tuple[str, ...] = tuple(c.kind_column for c in COST if c.kind_column)

#: Columns that the summary and its aggregation add beside identity, cost and metrics.
DERIVED: tuple[str, ...] = ("reference_run_id", "units", "variant")


def new_cell_row(identity: dict[str, Any]) -> dict[str, Any]:
    """A ``cells`` row before its cell runs: ``identity`` gives the columns whose default is
    None, every other column has its default."""
    missing = [k for k, v in CELLS.items() if v is None and k not in identity]
    if missing:
        raise KeyError(f"a cells row needs {', '.join(missing)}")
    return {k: identity.get(k, v) if v is None else v for k, v in CELLS.items()}


def metric_columns(columns: Iterable[str], metrics: Iterable[str] | None = None) -> list[str]:
    """The metric columns among a summary's ``columns``, in their order: those named by a
    registered metric (``metrics``: by default the loaded host's), and the per-kind columns of
    streams that mix kinds of task (``acc@corpus``: a registered metric, ``@``, a kind)."""
    if metrics is None:
        metrics = get_host().names("metrics")
    known = set(metrics)
    return [c for c in columns if c in known or (c.partition("@")[1] and c.partition("@")[0] in known)]
