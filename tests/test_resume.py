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
import pytest

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
    """``clbench ARGS`` in a new process with one torch thread, its output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "clbench.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def one_thread():
    """One torch thread in this process too (as the killed run had: bit-for-bit the same sums)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _acc(tables) -> pd.Series:
    m = tables.measurements[tables.measurements["metric"] == "acc"]
    return m.set_index(["run_id", "train_task", "eval_task"])["value"].sort_index()


def test_a_suite_killed_after_its_first_cell_resumes_where_it_stopped(tmp_path, run_suite_dict, capsys, one_thread):
    suite = tmp_path / "killed.toml"
    suite.write_text(SUITE)
    out = tmp_path / "results"
    cells = out / "cells"

    log = tmp_path / "killed.log"
    proc = _clbench("run", str(suite), "--out", str(out), "--no-progress", "--workers", "1", log=log)  # one cell at a time
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
    ev = resumed.measurements[resumed.measurements["metric"] != "train_loss"]
    assert len(ev) == 2 * 4 * 3 * 2  # cells × (before + 3 tasks) × 3 tasks × 2 metrics

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


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_the_workers_of_a_killed_pool_exit(tmp_path):
    suite = tmp_path / "killed.toml"
    suite.write_text(SUITE)
    log = tmp_path / "pool.log"
    proc = _clbench("run", str(suite), "--out", str(tmp_path / "results"), "--workers", "2", "--no-progress", log=log)
    deadline = time.monotonic() + 300
    workers: list[int] = []
    while len(workers) < 2:  # driver → forkserver → 2 workers
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the pool's workers did not start in 300 s"
        workers = [w for c in _children(proc.pid) for w in _children(c)]
        time.sleep(0.1)
    time.sleep(1.0)  # the workers run their cells
    everyone = _children(proc.pid) + workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in everyone) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in everyone if _alive(p)]
    for p in left:  # don't leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert left == [], "processes of the killed suite still running 30 s after the kill"
