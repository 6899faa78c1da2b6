"""Results you can trust: every field checked before anything runs; one bad cell or file stops
nothing else; errors are one line."""

import os
import stat

import pytest

from clbench.cli import main
from conftest import make_suite
from test_cli import _toml


def _write(tmp_path, data, text_edit=None):
    text = _toml(data)
    if text_edit:
        text = text_edit(text)
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def _one_line_exit_2(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("training", "epochs", 0, "field 'training.epochs' must be greater than 0"),
        ("training", "epochs", -1, "field 'training.epochs' must be greater than 0"),
        ("training", "batch_size", 0, "field 'training.batch_size' must be greater than 0"),
        ("training", "lr", -1.0, "field 'training.lr' must be greater than 0"),
        ("training", "lr", "nan", "field 'training.lr' must be a finite number"),
        ("training", "eval_batch_size", 0, "field 'training.eval_batch_size' must be greater than 0"),
        ("model", "d_model", 0, "field 'model.d_model' must be greater than 0"),
        ("model", "dropout", 1.5, "field 'model.dropout' must be in [0, 1)"),
        ("model", "max_len", 2, "model.max_len = 2 is below the 4 positions"),
    ],
)
def test_bad_field_is_one_line_and_writes_nothing(tmp_path, host, capsys, section, key, value, message):
    data = make_suite(["naive"])
    edit = None
    if value == "nan":
        data[section][key] = 0.5
        edit = lambda t: t.replace(f"{key} = 0.5", f"{key} = nan")  # noqa: E731
    else:
        data[section][key] = value
    path = _write(tmp_path, data, edit)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    _one_line_exit_2(capsys, message, str(path))
    assert not out.exists()


def test_strategy_training_is_checked_too(tmp_path, host, capsys):
    data = make_suite([{"name": "naive", "training": {"epochs": 0}}])
    path = _write(tmp_path, data)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    _one_line_exit_2(capsys, "strategies[0].training.epochs")
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_one_line(tmp_path, host, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = make_suite(["naive"], training={"device": "cuda"})
    path = _write(tmp_path, data)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    _one_line_exit_2(capsys, "training.device", "CUDA is not available", str(path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../x", "", "a/b", "."])
def test_suite_name_cannot_leave_the_results_folder(tmp_path, host, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    data = make_suite(["naive"], name=name)
    path = _write(tmp_path, data)
    assert main(["run", str(path), "--no-progress"]) == 2
    _one_line_exit_2(capsys, "field 'name'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


# -- one bad cell or file stops nothing else ---------------------------------------------------

import clbench  # noqa: E402
from clbench.errors import UserError  # noqa: E402


class BadInit:
    def __init__(self):
        raise RuntimeError("broken constructor")


class RefusesInHook:
    @clbench.hookimpl
    def before_task(self, cell, task):
        raise UserError("this strategy refuses the task")


class Plugins:
    __test__ = False

    @clbench.hookimpl
    def register_strategies(self, register):
        register("bad-init", BadInit)
        register("refuses", RefusesInHook)


@pytest.fixture
def plugins(host):
    p = Plugins()
    host.register(p, name="check-plugins")
    yield
    host.unregister(p)


def test_failing_init_and_user_error_in_a_hook_fail_their_cell_only(tmp_path, host, plugins, capsys):
    path = _write(tmp_path, make_suite(["bad-init", "refuses", "naive"]))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--workers", "1"]) == 1
    import pandas as pd

    cells = pd.read_parquet(out / "cells.parquet").set_index("strategy")
    assert cells["status"].to_dict() == {"bad-init": "failed", "refuses": "failed", "naive": "ok"}
    assert "broken constructor" in cells.loc["bad-init", "error"]
    assert cells.loc["refuses", "error"] == "strategy 'refuses': this strategy refuses the task"
    assert "Traceback" not in capsys.readouterr().err


def test_damaged_cell_file_is_quarantined_and_run_again(tmp_path, host, capsys):
    path = _write(tmp_path, make_suite(["naive"]))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    (part,) = (out / "cells").glob("*.measurements.parquet")
    part.write_bytes(b"not parquet")
    capsys.readouterr()
    assert main(["show", str(out)]) == 2  # nothing readable left: one line
    err = capsys.readouterr().err
    assert "warning" in err and "damaged" in err and "Traceback" not in err
    assert (out / "cells" / "quarantine" / part.name).exists() and not part.exists()
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0  # resumes: runs it again
    assert part.exists()
    assert main(["show", str(out)]) == 0


def test_result_files_honour_the_umask(tmp_path, host):
    path = _write(tmp_path, make_suite(["naive"]))
    old = os.umask(0o022)
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    for f in [tmp_path / "out" / "cells.parquet", *(tmp_path / "out" / "cells").glob("*.parquet")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_labels_with_markup_are_printed_as_written(tmp_path, host, capsys):
    path = _write(tmp_path, make_suite([{"name": "naive", "label": "[/]x [b]y[/b]"}]))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert "[/]x [b]y[/b]" in capsys.readouterr().out
    assert main(["show", str(out)]) == 0
    assert "[/]x [b]y[/b]" in capsys.readouterr().out
    assert main(["compare", str(out), str(out)]) == 0
    assert "[/]x [b]y[/b]" in capsys.readouterr().out


def test_sigterm_says_what_ctrl_c_says(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, clbench.cli as c\n"
         "c.cmd_list = lambda a, k: (print('ready', flush=True), time.sleep(30))[1]\n"
         "p = c.build_parser\n"
         "sys.exit(c.main(['list']))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert "interrupted; finished cells are saved" in err and "Traceback" not in err


def test_report_out_that_is_a_file_is_one_line(tmp_path, host, capsys):
    path = _write(tmp_path, make_suite(["naive"]))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(blocker)]) == 2
    _one_line_exit_2(capsys, "cannot write the report to", str(blocker))


def test_report_and_show_of_a_result_set_whose_cells_all_failed(tmp_path, host, capsys):
    # every cell diverges on its first task: a few measurements (before training), no summary numbers
    data = make_suite(["naive", "ewc"], stream_params={"patch_size": 4, "n_tasks": 2},
                      training={"lr": 1e30, "grad_clip": 0.0, "optimizer": "sgd", "epochs": 1})
    out = tmp_path / "out"
    assert main(["run", str(_write(tmp_path, data)), "--out", str(out), "--no-progress", "--workers", "1"]) == 1
    capsys.readouterr()
    rep = tmp_path / "rep"  # a folder that does not exist yet
    assert main(["report", str(out), "--out", str(rep)]) == 0
    md = (rep / "report.md").read_text()
    assert "Failed cells" in md and "diverged" in md and (rep / "report.html").exists()
    assert main(["show", str(out)]) == 0
    assert "failed (diverged)" in capsys.readouterr().out
