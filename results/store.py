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

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
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
    """Create the results folder (and its cells/) or fail with one line if it is not writable."""
    out = Path(out)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        probe = out / "cells" / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    return out


def remove_stale_tmp(out: Path) -> None:
    """Remove the temporary files that a killed run left behind (nothing reads them anyway): call
    it holding the folder's lock (:func:`lock_folder`), so that no other run is writing them."""
    out = Path(out)
    for stale in [*out.glob(".*.tmp"), *(out / "cells").glob(".*.tmp")]:
        stale.unlink(missing_ok=True)


#: The lock file of a folder a clbench command writes into: JSON with the holder's pid, host,
#: the process's start time (to tell a reused pid apart), the command and when it began.
LOCK = ".clbench.lock"


def _process_start(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (Linux; "" elsewhere or if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]  # field 22, after the command's name
    except (OSError, ValueError, IndexError):
        return ""


def _read_lock(path: Path) -> dict | None:
    for attempt in range(3):  # the holder may be between creating the file and writing it
        try:
            holder = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                return holder
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return None


def _alive(holder: dict) -> bool:
    """Whether the lock's holder is still running: on this host, its pid exists and started when
    the lock says; on another host it cannot be checked, and counts as running."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    started = holder.get("started") or ""
    return not started or _process_start(pid) in ("", started)


@contextlib.contextmanager
def lock_folder(out: Path, command: str = "clbench"):
    """Hold ``out``'s lock (:data:`LOCK`) while the block runs: a second command into the same
    folder is refused with one line that names the process holding it (exit 2). The lock of a
    process that is no longer running (killed, even with SIGKILL) is taken over with one warning
    line, so a killed run never leaves a folder stuck."""
    out = Path(out)
    path = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
          "command": command, "since": time.time()}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder == {}:  # removed in between: try again
                continue
            if holder is not None and _alive(holder):
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
                raise UserError(
                    f"{out} is in use by {holder.get('command', 'clbench')} (process {holder['pid']} on "
                    f"{holder.get('host', '?')}, since {since}): wait for it to end, or write elsewhere (--out)"
                    + ("" if holder.get("host") == me["host"] else f"; if it is no longer running, delete {path}")
                ) from None
            who = f"process {holder['pid']} on {holder.get('host', '?')}" if holder else "an unreadable lock"
            print(f"clbench: warning: {out}: taking over the lock of {who}, which is no longer running",
                  file=sys.stderr)
            aside = path.with_name(f"{LOCK}.{os.getpid()}.stale")
            try:
                os.replace(path, aside)  # atomic: of two runs taking over, one wins the file
                aside.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise UserError(f"cannot lock {out}: {path} keeps changing (another clbench is starting there?)")
    try:
        yield path
    finally:
        if _read_lock(path) == me:  # ours still (not taken over as stale by mistake)
            path.unlink(missing_ok=True)


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


def _read_cell(d: Path, run_id: str, columns=None, quarantine: bool = True) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """A cell's (cells row, measurements), or None (quarantined, unless not ``quarantine``) when a
    file is damaged."""
    try:
        cell = pd.read_parquet(d / f"{run_id}.cell.parquet", columns=columns)
        mf = d / f"{run_id}.measurements.parquet"
        meas = pd.read_parquet(mf) if columns is None else pq.read_metadata(mf)
        if len(cell) != 1:
            raise ValueError(f"{len(cell)} cells rows")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is damaged
        if quarantine:
            _quarantine(d, run_id, exc)
        return None
    return cell, meas


def done_cells(out: Path, quarantine: bool = True) -> dict[str, str]:
    """run_id -> status of every cell with a complete record in ``out`` (damaged records are
    quarantined: see :func:`_quarantine`; left where they are, and out of the answer, unless
    ``quarantine``)."""
    d = Path(out) / "cells"
    if not d.is_dir():
        return {}
    done = {}
    for f in d.glob("*.cell.parquet"):
        run_id = f.name[: -len(".cell.parquet")]
        if (d / f"{run_id}.measurements.parquet").exists():
            got = _read_cell(d, run_id, columns=["status"], quarantine=quarantine)
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
