"""Cells of different configurations are never pooled: show, report, compare and aggregate group by
the whole configuration, label configurations apart by the fields that differ, and count a seed
once."""

import io
import shutil

import pandas as pd
import pytest

from clbench.cli import main
from clbench.results import aggregate, load
from conftest import make_suite
from test_cli import _toml

STREAM = {"patch_size": 4, "n_tasks": 2}


def _run(tmp_path, data, out, name="s.toml"):
    path = tmp_path / name
    path.write_text(_toml(data))
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--workers", "1"]) == 0


def _shown(capsys, out):
    capsys.readouterr()
    assert main(["show", str(out), "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("strategy")


def test_two_training_settings_in_one_folder_are_two_rows(tmp_path, capsys):
    out = tmp_path / "out"
    for epochs in (1, 2):
        _run(tmp_path, make_suite(["naive"], stream_params=STREAM, seeds=(0, 1), training={"epochs": epochs}), out)
    board = _shown(capsys, out)
    assert set(board.index) == {"naive (training.epochs=1)", "naive (training.epochs=2)"}
    assert (board["seeds"] == 2).all()  # not one row of "4 seeds"


def test_strategy_parameters_label_configurations_apart(tmp_path, capsys):
    out = tmp_path / "out"
    for m in (20, 100):  # two runs of a suite into one folder (one suite refuses a label twice)
        _run(tmp_path, make_suite([{"name": "replay", "params": {"memory_size": m}}], stream_params=STREAM), out)
    board = _shown(capsys, out)
    assert set(board.index) == {"replay (memory_size=20)", "replay (memory_size=100)"}
    assert (board["seeds"] == 1).all()


def test_the_same_cells_in_two_folders_count_once(tmp_path, capsys):
    out = tmp_path / "out"
    _run(tmp_path, make_suite(["naive"], stream_params=STREAM, seeds=(0, 1)), out)
    shutil.copytree(out, tmp_path / "copy")
    capsys.readouterr()
    tables = load(out, tmp_path / "copy")
    assert "2 cell(s) already read from an earlier folder" in capsys.readouterr().err
    assert aggregate(tables.summary).set_index("strategy").loc["naive", "seeds"] == 2
    rep = tmp_path / "rep"
    assert main(["report", str(out), str(tmp_path / "copy"), "--out", str(rep)]) == 0
    assert "counted once" in capsys.readouterr().err


def test_a_seed_repeated_under_another_run_id_is_counted_once(tmp_path, capsys):
    out = tmp_path / "out"
    _run(tmp_path, make_suite(["naive"], stream_params=STREAM, seeds=(0,)), out)
    summary = load(out).summary
    twice = pd.concat([summary, summary.assign(run_id="another-hash")], ignore_index=True)
    capsys.readouterr()
    agg = aggregate(twice)
    assert agg.set_index("strategy").loc["naive", "seeds"] == 1
    assert "repeat a configuration and seed already counted" in capsys.readouterr().err


def test_compare_says_which_configuration_fields_differ(tmp_path, capsys):
    for name, epochs in (("a", 1), ("b", 2)):
        _run(tmp_path, make_suite(["naive"], stream_params=STREAM, seeds=(0, 1), training={"epochs": epochs}), tmp_path / name)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "configurations differ between A and B" in out and "training.epochs: 1 (A) vs 2 (B)" in out


@pytest.mark.parametrize("seeds", [[0, 0], [1, 2, 1]])
def test_a_seed_listed_twice_is_one_line(tmp_path, capsys, seeds):
    path = tmp_path / "s.toml"
    path.write_text(_toml(make_suite(["naive"], stream_params=STREAM, seeds=seeds)))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'seeds' lists seed" in err and "twice" in err
    assert not out.exists()
