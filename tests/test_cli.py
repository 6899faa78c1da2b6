"""The command line: run, show, list, plugins, and one-line errors with exit status 2."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from clbench.cli import main
from conftest import make_suite


def _toml(data: dict) -> str:
    """Write a suite dict as TOML (only the shapes make_suite produces)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = [f'name = "{data["name"]}"', f"seeds = {val(data['seeds'])}"]
    for section in ("model", "training"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {val(v)}" for k, v in data[section].items()]
    for s in data["streams"]:
        lines.append("[[streams]]")
        lines += [f"{k} = {val(v)}" for k, v in s.items()]
    for s in data["strategies"]:
        lines.append("[[strategies]]")
        lines += [f"{k} = {val(v)}" for k, v in s.items()]
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == data
    return text


@pytest.fixture
def suite_file(tmp_path):
    def write(data: dict, name: str = "s.toml") -> Path:
        path = tmp_path / name
        path.write_text(_toml(data))
        return path

    return write


def test_run_then_show(tmp_path, suite_file, host, capsys):
    path = suite_file(make_suite(["naive", "cumulative"]))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "cumulative" in printed and "ACC" in printed
    assert f"results: {out}" in printed
    for table in ("measurements", "cells", "summary"):
        assert (out / f"{table}.parquet").is_file()
    assert main(["show", str(out)]) == 0
    assert "cumulative" in capsys.readouterr().out


@pytest.mark.parametrize(
    "data_change, message",
    [
        (lambda d: d["strategies"].append({"name": "replya"}), "unknown strategy 'replya'"),
        (lambda d: d["streams"][0].update(name="mnist"), "unknown stream 'mnist'"),
        (lambda d: d["training"].update(epochs="3"), "field 'training.epochs' must be int"),
        (lambda d: d["streams"][0].update(orders=[[0, 0, 1, 2, 3]]), "not a permutation"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, suite_file, host, capsys, data_change, message):
    data = make_suite(["naive"])
    data_change(data)
    path = suite_file(data)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: ") and message in err and str(path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, suite_file, host, capsys):
    path = suite_file(make_suite(["naive"]))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", str(path), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: cannot write results to") and err.count("\n") == 1


def test_show_of_a_missing_folder(tmp_path, capsys):
    assert main(["show", str(tmp_path / "none")]) == 2
    assert "results folder not found" in capsys.readouterr().err


def test_list_and_plugins(host, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "split-digits" in out and "naive" in out and "quick" in out
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "clbench.strategies.joint" in out and "joint (train_data)" in out


@pytest.mark.slow
def test_default_suite_through_the_console_script(tmp_path):
    """The README's main job: `clbench run` with the embedded default suite, in a subprocess."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "clbench.cli", "run", "--out", str(tmp_path / "q"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "joint" in proc.stdout and "results:" in proc.stdout


@pytest.mark.parametrize("scenario, fwt_shown", [("class-incremental", False), ("task-incremental", True)])
def test_show_prints_fwt_only_where_it_is_defined(tmp_path, suite_file, host, capsys, scenario, fwt_shown):
    path = suite_file(make_suite(["naive"], stream_params={"patch_size": 4, "scenario": scenario}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "FWT" in line)
    row = next(line for line in lines if "naive" in line)
    cols = [c.strip() for c in re.split("[│┃]", header)]
    cell = [c.strip() for c in re.split("[│┃]", row)][cols.index("FWT")]
    assert (cell not in ("–", "")) if fwt_shown else cell == "–"


def test_check_lists_cells_and_hashes_without_running(tmp_path, suite_file, host, capsys, monkeypatch):
    from clbench.suite import load_suite

    path = suite_file(make_suite(["naive", "ewc"], seeds=[0, 1]))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    cells = load_suite(str(path)).cells
    assert "4 cells" in out and len(cells) == 4
    for c in cells:  # a row per cell: stream, order, strategy, seed, config hash
        assert any(c.run_id in ln and c.strategy.label in ln and f" {c.seed} " in ln and "split-digits" in ln
                   for ln in out.splitlines())
    assert list(tmp_path.iterdir()) == [path]  # nothing run, nothing written
    data = make_suite(["naive"])
    data["strategies"].append({"name": "replya"})
    assert main(["check", str(suite_file(data, "bad.toml"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: ") and "unknown strategy 'replya'" in err and err.count("\n") == 1
