"""Resume: a suite killed with SIGKILL loses no finished cell and leaves nothing that breaks the
next run, which runs only the cells that had not finished."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import clbench.results
from clbench.cli import main
from clbench.results.store import done_cells

SUITE = """
name = "killed"
seeds = [0, 1]
[model]
d_model = 32
n_layers = 1
n_heads = 2
[training]
epochs = 1
batch_size = 64
[[streams]]
name = "split-digits"
params = { patch_size = 4, n_tasks = 3 }
[[strategies]]
name = "naive"
"""


def _clbench(*args, log: Path) -> subprocess.Popen:
    """``clbench ARGS`` in a new process, its output to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "clbench.cli", *args], stdout=fh, stderr=subprocess.STDOUT)


def _acc(tables) -> pd.Series:
    m = tables.measurements[tables.measurements["metric"] == "acc"]
    return m.set_index(["run_id", "train_task", "eval_task"])["value"].sort_index()


def test_a_suite_killed_after_its_first_cell_resumes_where_it_stopped(tmp_path, run_suite_dict, capsys):
    suite = tmp_path / "killed.toml"
    suite.write_text(SUITE)
    out = tmp_path / "results"
    cells = out / "cells"

    log = tmp_path / "killed.log"
    proc = _clbench("run", str(suite), "--out", str(out), "--no-progress", log=log)
    deadline = time.monotonic() + 300
    while not list(cells.glob("*.cell.parquet")):
        assert proc.poll() is None, f"clbench run ended before it was killed: {log.read_text()}"
        assert time.monotonic() < deadline, "no cell finished in 300 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    finished = done_cells(out)
    assert list(finished.values()) == ["ok"], "killed after exactly the first cell (the second takes seconds)"
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in cells.glob("*.parquet")}
    # what a kill in the middle of writing leaves: a temporary file, never read
    stale = cells / ".0123456789abcdef.cell.parquet.x1y2z3.tmp"
    stale.write_bytes(b"PAR1 half-written")
    assert len(clbench.results.load(out).cells) == 1  # the partial results load

    # the next run (in this process: it saves a second start of Python and torch)
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert "1 of 2 cells already have results" in capsys.readouterr().err
    assert not stale.exists()
    # the finished cell was not run again: its files are untouched
    for name, (mtime, data) in before.items():
        assert (cells / name).stat().st_mtime_ns == mtime and (cells / name).read_bytes() == data
    resumed = clbench.results.load(out)
    assert sorted(resumed.cells["status"]) == ["ok", "ok"]
    assert len(resumed.measurements) == 2 * 4 * 3 * 2  # cells × (before + 3 tasks) × 3 tasks × 2 metrics

    # the same numbers as a run that was never interrupted (cells are deterministic on CPU)
    import tomllib

    data = tomllib.loads(SUITE)
    _, whole = run_suite_dict(data, out=tmp_path / "whole")
    assert set(whole.cells["run_id"]) == set(resumed.cells["run_id"])
    a, b = _acc(resumed), _acc(whole)
    assert a.index.equals(b.index)
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    s = resumed.summary.set_index("run_id").sort_index()
    w = whole.summary.set_index("run_id").sort_index()
    assert np.array_equal(s["acc"].to_numpy(), w["acc"].to_numpy())
