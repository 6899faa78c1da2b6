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
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
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


# -- the command line a researcher uses: run, check and tune take the same options -----------------


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("clbench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _cl_benchmark(root: Path) -> Path:
    """A CL_Benchmark-format folder of one task (``news``), as text streams read it."""
    import json

    folder = root / "news"
    folder.mkdir(parents=True)
    labels = ["World", "Sports"]
    for split, n in (("train", 4), ("test", 2)):
        rows = [{"sentence": f"{lab} item {i}", "label": lab} for lab in labels for i in range(n)]
        (folder / f"{split}.json").write_text(json.dumps(rows))
    (folder / "labels.json").write_text(json.dumps(labels))
    return root


def test_check_takes_the_options_of_run(tmp_path, host, capsys, monkeypatch):
    """``check`` reads the data folder, --set, --strategies, --out and the executor options as
    ``run`` does, runs nothing and writes nothing."""
    monkeypatch.delenv("CLBENCH_DATA", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    data = _cl_benchmark(tmp_path / "data")
    suite = tmp_path / "text.toml"
    suite.write_text('name = "text"\n[model]\nd_model = 16\nn_layers = 1\nn_heads = 2\n'
                     '[[streams]]\nname = "text"\nparams = { tasks = ["news"], max_len = 32 }\n'
                     '[[strategies]]\nname = "naive"\n[[strategies]]\nname = "ewc"\n')
    out = tmp_path / "out"
    assert main(["check", str(suite)]) == 2  # no data folder: run would refuse it too
    _one_line_error(capsys, "--data-dir")
    assert main(["check", str(suite), "--data-dir", str(data), "--out", str(out), "--workers", "1", "--no-progress",
                 "--set", "seeds=[3, 4]", "--strategies", "ewc"]) == 0
    printed = capsys.readouterr().out
    assert "2 cells" in printed and "ewc" in printed and "naive" not in printed
    assert " 3 " in printed and " 4 " in printed
    assert "would run 2 of 2 cells" in printed and "one cell at a time in this process" in printed
    assert not out.exists() and "CLBENCH_DATA" not in os.environ
    assert main(["check", str(suite), "--data-dir", str(data), "--executor", "local", "--workers", "2"]) == 2
    _one_line_error(capsys, "executor 'local' has no parameter 'workers'")


def test_top_level_fields_strategies_and_streams_from_the_command_line(host):
    """``--set seeds=[0]`` and ``--set name=...`` change top-level fields; ``--strategies`` and
    ``--streams`` keep some of a suite's columns (by label, in the suite's order)."""
    from clbench.suite import load_suite

    suite = load_suite("quick", ["seeds=[5]", "name=small"], strategies=["replay", "naive"], streams=["split-digits"])
    assert suite.name == "small"
    assert [(c.strategy.label, c.seed) for c in suite.cells] == [("naive", 5), ("replay", 5)]
    full = {c.strategy.label: c.run_id for c in load_suite("quick", ["seeds=[5]"]).cells}
    assert {c.strategy.label: c.run_id for c in suite.cells} == {k: full[k] for k in ("naive", "replay")}


@pytest.mark.parametrize("argv, parts", [
    (["--strategies", "naive,lorra"], ["--strategies lorra", "no strategy 'lorra'", "strategies: naive, replay"]),
    (["--streams", "mnist"], ["--streams mnist", "no stream 'mnist'", "streams: split-digits"]),
    (["--set", "model.init="], ["--set 'model.init='", "empty value"]),
    (["--set", "seeds="], ["empty value"]),
    (["--set", "seeds=[0, 0]"], ["lists seed 0 twice"]),
    (["--set", "epochs=2"], ["expected model.FIELD=VALUE", "top-level FIELD=VALUE (name, description, seeds)"]),
])
def test_command_line_changes_are_checked(tmp_path, host, capsys, argv, parts):
    out = tmp_path / "out"
    for command in ("check", "run"):
        assert main([command, "quick", "--out", str(out), *argv]) == 2
        _one_line_error(capsys, *parts)
    assert not out.exists()


def test_pretrain_set_refuses_an_empty_value(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "ckpt"), "--text", str(tmp_path), "--set", "init="]) == 2
    _one_line_error(capsys, "empty value")
    assert not (tmp_path / "ckpt").exists()


def test_tune_takes_the_options_of_run(tmp_path, host, monkeypatch, capsys):
    """``tune`` changes its suite with --set, --strategies and --streams, as ``run`` does, and
    writes its tuned suite from the changed one (here before Ray is reached)."""
    import clbench.tune

    seen = {}

    def fake_tune_suite(suite, data, out, **kw):
        seen.update(suite=suite, data=data, verbose=kw["verbose"])
        raise UserError("stop here")

    from clbench.errors import UserError

    monkeypatch.setattr(clbench.tune, "tune_suite", fake_tune_suite)
    assert main(["tune", "quick", "--out", str(tmp_path / "t"), "--set", "training.epochs=1", "--set", "seeds=[2]",
                 "--strategies", "ewc", "--verbose"]) == 2
    _one_line_error(capsys, "stop here")
    assert [(c.strategy.label, c.seed, c.training.epochs) for c in seen["suite"].cells] == [("ewc", 2, 1)]
    assert seen["data"]["training"]["epochs"] == 1 and [s["name"] for s in seen["data"]["strategies"]] == ["ewc"]
    assert seen["verbose"] is True
    assert main(["tune", "quick", "--set", "training.epochs=0"]) == 2
    _one_line_error(capsys, "training.epochs' must be greater than 0")


def test_tune_without_ray_names_the_tune_extra(tmp_path, host, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    out = tmp_path / "t"
    assert main(["tune", str(_small_suite(tmp_path)), "--out", str(out), "--trials", "1"]) == 2
    _one_line_error(capsys, "pip install 'clbench[tune]'")
    assert not out.exists()


def _small_suite(tmp_path, strategies=("naive",), **kw) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(_toml(make_suite(list(strategies), stream_params={"patch_size": 4, "n_tasks": 2}, **kw)))
    return path


def test_prompts_cut_by_max_len_are_refused_or_recorded(tmp_path, host, capsys):
    """``--set streams.max_len=8`` on llm-quick cuts most of every prompt: refused in one line.
    An answer that does not fit is refused too. A milder cut runs, and each cell row and the
    report say what share of the prompts was shortened."""
    assert main(["check", "llm-quick", "--set", "streams.max_len=8"]) == 2
    _one_line_error(capsys, "would lose more than half their tokens to max_len = 8", "at most 10% may", "raise max_len")
    assert main(["check", "llm-quick", "--set", "streams.max_len=4"]) == 2
    _one_line_error(capsys, "answer takes", "max_len = 4 would cut it")

    suite = tmp_path / "gen.toml"
    suite.write_text('name = "gen"\nseeds = [0]\n[model]\nd_model = 16\nn_layers = 1\nn_heads = 2\ncausal = true\nmax_len = 32\n'
                     '[training]\nepochs = 1\nbatch_size = 16\n'
                     '[[streams]]\nname = "algorithmic"\n'
                     'params = { tasks = ["reverse", "count"], n_train = 16, n_test = 8, max_len = 14, general = false }\n'
                     '[[strategies]]\nname = "naive"\n')
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert "prompts (" in capsys.readouterr().err  # the warning line, with the share
    from clbench.results import load
    from clbench.results.report import blocks

    cells = load(out).cells
    cut = float(cells["prompt_cut_fraction"].iloc[0])
    assert 0.0 < cut < 1.0  # reverse's prompts are cut (by 2 of 9 bytes), count's are not
    text = " ".join(b[1] for b in blocks(load(out)) if b[0] == "p")
    assert f"prompts shortened from the left to fit max_len: {cut:.1%}" in text


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, host, capsys):
    """While a run holds a results folder, another is refused (exit 2) with the holder's pid and
    host; the lock is gone when the run ends."""
    import socket

    from clbench.results.store import LOCK, lock_folder

    path = _small_suite(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with lock_folder(out, "clbench run"):
        assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
        line = _one_line_error(capsys, f"{out} is in use by clbench run", f"process {os.getpid()} on {socket.gethostname()}")
        assert "--out" in line
    assert not (out / "cells").exists() or not any((out / "cells").iterdir())  # nothing run
    assert not (out / LOCK).exists()
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert not (out / LOCK).exists()


def test_a_killed_run_does_not_leave_its_folder_locked(tmp_path, host, capsys):
    """A run killed with SIGKILL leaves its lock file; the next run sees that its process is gone,
    says so in one warning line, and runs. A lock whose pid now belongs to another process
    (it started at another time) is stale too."""
    import json

    from clbench.results.store import LOCK

    out = tmp_path / "out"
    out.mkdir()
    code = ("import os, signal, sys\nfrom clbench.results.store import lock_folder\n"
            f"with lock_folder({str(out)!r}, 'clbench run'):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=300)
    assert proc.returncode == -9 and (out / LOCK).is_file()
    dead = json.loads((out / LOCK).read_text())["pid"]
    path = _small_suite(tmp_path)
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert f"taking over the lock of process {dead}" in capsys.readouterr().err
    assert not (out / LOCK).exists()

    holder = json.loads(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(),
                                    "started": "1", "command": "clbench run", "since": 0}))
    (out / LOCK).write_text(json.dumps(holder))  # our pid, but not our process's start time
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--force"]) == 0
    assert "taking over the lock" in capsys.readouterr().err


def test_show_formats_keep_every_summary_column_and_explain_the_brackets(tmp_path, host, capsys):
    out = tmp_path / "out"
    assert main(["run", str(_small_suite(tmp_path, ("naive", "cumulative"), seeds=(0, 1))), "--out", str(out),
                 "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["show", str(out), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    for metric in ("acc", "aia", "bwt", "forgetting", "intransigence", "intransigence_last", "plasticity"):
        assert {f"{metric}_mean", f"{metric}_std", f"{metric}_sem"} <= set(header), metric
    for fmt, legend in (("markdown", "\nMetrics in % as mean ± sd [standard error] over seeds"),
                        ("latex", "\n% Metrics in % as mean ± sd [standard error] over seeds")):
        assert main(["show", str(out), "--format", fmt]) == 0
        text = capsys.readouterr().out
        assert "intransigence" in text and "intransigence (last)" in text and legend in text, text
        naive = next(line for line in text.splitlines() if "naive" in line)
        assert re.search(r"\d (±|\$\\pm\$) \d+\.\d \[\d+\.\d\]", naive), naive  # mean ± sd [standard error]
        assert "peak RSS MB" in text


def test_compare_of_sets_where_no_cell_succeeded(tmp_path, host, capsys):
    import pandas as pd

    from clbench.loop import cell_row
    from clbench.results.store import prepare_out, write_cell
    from clbench.suite import load_suite

    for name in ("a", "b"):
        prepare_out(tmp_path / name)
        for cell in load_suite(str(_small_suite(tmp_path, ("naive",), seeds=(0, 1)))).cells:
            row = cell_row(cell)
            row.update(status="failed", error="RuntimeError: boom")
            write_cell(tmp_path / name, row, [])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "no cell succeeded in A = ", "(2 cells, all failed or diverged) nor in B = ", "nothing to compare")
    assert isinstance(pd.read_parquet(next((tmp_path / "a" / "cells").glob("*.cell.parquet"))), pd.DataFrame)


def test_ray_is_quiet_unless_verbose(monkeypatch):
    """Ray's own log lines as it starts ("Token authentication is enabled ...") are not printed
    unless --verbose: the executor raises the "ray" logger to ERROR while ray.init runs."""
    import logging

    ray = pytest.importorskip("ray")
    from clbench.cli import build_parser, _executor_args
    from clbench.plugins.executors import RayExecutor

    said = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: said.append(
        logging.getLogger("ray._private.authentication.authentication_token_setup").isEnabledFor(logging.WARNING)))
    level = logging.getLogger("ray").level
    assert RayExecutor(workers=1).start() and RayExecutor(workers=1, verbose=True).start()
    assert said == [False, True] and logging.getLogger("ray").level == level
    args = build_parser().parse_args(["run", "--executor", "ray", "--verbose"])
    assert _executor_args(args) == ("ray", {"verbose": True})
    assert _executor_args(build_parser().parse_args(["run", "--executor", "ray"])) == ("ray", {})


def test_no_built_in_suite_calls_another_mode_lora():
    """A row labelled ``lora`` is per-task LoRA: a suite that runs another mode names it
    (``inc-lora``, ``seq-lora``, ...): quick's "lora" row was IncLoRA under another name."""
    from clbench.suite import builtin_suites

    for name, text in builtin_suites().items():
        for entry in tomllib.loads(text)["strategies"]:
            if entry.get("name") == "lora" and "label" not in entry:
                assert entry.get("params", {}).get("mode", "per-task") == "per-task", name
