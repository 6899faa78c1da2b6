"""clbench.results: the result schema, the Parquet store, metrics and aggregation.

>>> tables = clbench.results.load("clbench-results/quick")   # doctest: +SKIP
>>> tables.summary, tables.cells, tables.measurements          # pandas DataFrames
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from clbench.errors import UserError

from .metrics import Matrices
from .store import Tables, read_parts, write_tables
from .summary import accuracy_matrix, aggregate, summarize


def load(path: str | Path, *more: str | Path) -> Tables:
    """The tables of one or more results folders (every finished cell in them), as DataFrames.

    A cell (by config hash) found in several folders is taken from the first that has it, with
    one warning line: its seed is counted once.
    """
    paths = [Path(p) for p in (path, *more)]
    meas, cells, seen = [], [], set()
    for p in paths:
        if not p.is_dir():
            raise UserError(f"results folder not found: {p}")
        m, c = read_parts(p)
        again = c["run_id"].isin(seen)
        if again.any():
            print(f"clbench: warning: {p}: {int(again.sum())} cell(s) already read from an earlier folder "
                  "(same config hash), counted once", file=sys.stderr)
        c = c[~again]
        seen |= set(c["run_id"])
        meas.append(m[m["run_id"].isin(set(c["run_id"]))])
        cells.append(c)
    if len(paths) == 1:
        measurements, cells_df = meas[0], cells[0]
    else:
        measurements = pd.concat(meas, ignore_index=True)
        cells_df = pd.concat(cells, ignore_index=True)
    return Tables(measurements, cells_df, summarize(measurements, cells_df), sources=[str(p) for p in paths])


__all__ = ["Matrices", "Tables", "accuracy_matrix", "aggregate", "load", "summarize", "write_tables"]
