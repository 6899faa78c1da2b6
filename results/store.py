"""Results on disk: Parquet files, each cell's rows written atomically (write, then rename).

Layout of a results folder::

    DIR/cells/<run_id>.measurements.parquet   # one cell's measurements
    DIR/cells/<run_id>.cell.parquet           # its `cells` row; written last: it marks the cell done
    DIR/measurements.parquet                  # all cells, rebuilt at the end of a run
    DIR/cells.parquet
    DIR/summary.parquet

The per-cell files are the source of truth; the three tables at the top are rebuilt from them at
the end of every run (and by :func:`clbench.results.load`, which reads the per-cell files).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from clbench.errors import UserError

MEASUREMENT_COLUMNS = [
    "run_id", "suite", "stream", "order", "strategy", "params", "seed",
    "train_task", "eval_task", "metric", "value",
]


@dataclass
class Tables:
    """The three result tables of a results folder, as DataFrames."""

    measurements: pd.DataFrame
    cells: pd.DataFrame
    summary: pd.DataFrame
    sources: list[str] = field(default_factory=list)  # the results folders they were read from


def atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` atomically (a temporary file in the same folder, then a rename), with
    the permissions ``open`` would give it: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it (mkstemp makes 0600)
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_out(out: Path) -> Path:
    """Create the results folder (and its cells/) or fail with one line if it is not writable.
    Temporary files that a killed run left behind are removed (nothing reads them anyway)."""
    out = Path(out)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        probe = out / "cells" / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    for stale in [*out.glob(".*.tmp"), *(out / "cells").glob(".*.tmp")]:
        stale.unlink(missing_ok=True)  # half-written by a run that was killed; never read
    return out


def write_cell(out: Path, cell: dict, measurements: list[dict]) -> None:
    """Write one cell's rows: its measurements first, then its cells row (the completion mark)."""
    d = Path(out) / "cells"
    m = pd.DataFrame(measurements, columns=MEASUREMENT_COLUMNS)
    atomic_parquet(m, d / f"{cell['run_id']}.measurements.parquet")
    atomic_parquet(pd.DataFrame([cell]), d / f"{cell['run_id']}.cell.parquet")


QUARANTINE = "quarantine"  # cells/quarantine/: the files of damaged cell records, moved aside


def _quarantine(d: Path, run_id: str, exc: Exception) -> None:
    """Move a cell's damaged files to ``cells/quarantine/`` with one warning line; the cell then
    has no record, so a resumed run runs it again."""
    q = d / QUARANTINE
    q.mkdir(exist_ok=True)
    for suffix in (".cell.parquet", ".measurements.parquet"):
        f = d / f"{run_id}{suffix}"
        if f.exists():
            os.replace(f, q / f.name)
    why = f"{type(exc).__name__}: {exc}".splitlines()[0]
    print(f"clbench: warning: {d / run_id}.*.parquet is damaged ({why}); moved to {q}, "
          "the cell runs again on resume", file=sys.stderr)


def _read_cell(d: Path, run_id: str, columns=None) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """A cell's (cells row, measurements), or None (quarantined) when a file is damaged."""
    try:
        cell = pd.read_parquet(d / f"{run_id}.cell.parquet", columns=columns)
        mf = d / f"{run_id}.measurements.parquet"
        meas = pd.read_parquet(mf) if columns is None else pq.read_metadata(mf)
        if len(cell) != 1:
            raise ValueError(f"{len(cell)} cells rows")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is damaged
        _quarantine(d, run_id, exc)
        return None
    return cell, meas


def done_cells(out: Path) -> dict[str, str]:
    """run_id -> status of every cell with a complete record in ``out`` (damaged records are
    quarantined: see :func:`_quarantine`)."""
    d = Path(out) / "cells"
    if not d.is_dir():
        return {}
    done = {}
    for f in d.glob("*.cell.parquet"):
        run_id = f.name[: -len(".cell.parquet")]
        if (d / f"{run_id}.measurements.parquet").exists():
            got = _read_cell(d, run_id, columns=["status"])
            if got is not None:
                done[run_id] = str(got[0]["status"].iloc[0])
    return done


def read_parts(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = Path(out) / "cells"
    cell_files = sorted(d.glob("*.cell.parquet")) if d.is_dir() else []
    if not cell_files:
        if (Path(out) / "cells.parquet").exists():
            return pd.read_parquet(Path(out) / "measurements.parquet"), pd.read_parquet(Path(out) / "cells.parquet")
        raise UserError(f"no clbench results in {out}")
    cells, meas = [], []
    for f in cell_files:
        run_id = f.name[: -len(".cell.parquet")]
        mf = d / f"{run_id}.measurements.parquet"
        if not mf.exists():
            continue
        got = _read_cell(d, run_id)
        if got is not None:
            cells.append(got[0])
            meas.append(got[1])
    if not cells:
        raise UserError(f"no readable clbench results in {out}")
    cells_df = pd.concat(cells, ignore_index=True).sort_values(["suite", "stream", "order", "strategy", "seed"], kind="stable")
    meas_df = pd.concat(meas, ignore_index=True) if meas else pd.DataFrame(columns=MEASUREMENT_COLUMNS)
    return meas_df.reset_index(drop=True), cells_df.reset_index(drop=True)


def write_tables(out: Path, tables: Tables) -> None:
    out = Path(out)
    atomic_parquet(tables.measurements, out / "measurements.parquet")
    atomic_parquet(tables.cells, out / "cells.parquet")
    atomic_parquet(tables.summary, out / "summary.parquet")
