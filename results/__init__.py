"""clbench.results: the result schema, the Parquet store, metrics and aggregation.

>>> tables = clbench.results.load("clbench-results/quick")   # doctest: +SKIP
>>> tables.summary, tables.cells, tables.measurements          # pandas DataFrames
"""

from __future__ import annotations

from pathlib import Path

from .metrics import Matrices
from .store import Tables, read_parts, write_tables
from .summary import accuracy_matrix, aggregate, summarize


def load(path: str | Path) -> Tables:
    """The tables of a results folder (every finished cell in it), as DataFrames."""
    from clbench.errors import UserError

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"results folder not found: {path}")
    measurements, cells = read_parts(path)
    return Tables(measurements, cells, summarize(measurements, cells))


__all__ = ["Matrices", "Tables", "accuracy_matrix", "aggregate", "load", "summarize", "write_tables"]
