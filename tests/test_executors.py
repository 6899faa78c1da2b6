"""Executors: the process pool and Ray run cells in other processes; results come back to the
driver, which writes them; a failing plugin, a NaN loss and a dying worker are isolated."""

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import clbench
from clbench.cli import main
from conftest import make_suite

TINY_STREAM = {"patch_size": 4, "n_tasks": 3}


class Boom:
    """Raises in the middle of training (and writes the id of its process to ``pidfile``)."""

    def __init__(self, pidfile: str = ""):
        self.pidfile = pidfile

    @clbench.hookimpl
    def after_task(self, cell, task):
        if self.pidfile:
            with open(self.pidfile, "w") as fh:
                fh.write(str(os.getpid()))
        if cell.task_index == 1:
            raise RuntimeError("boom at task 1")


class NanLoss:
    """Adds a NaN to the loss."""

    @clbench.hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if cell.task_index == 2:
            return torch.tensor(float("nan"))


class Die:
    """Kills the process that runs the cell (only ever run in a worker process)."""

    @clbench.hookimpl
    def before_task(self, cell, task):
        if cell.task_index == 1:
            os._exit(3)


class Faulty:
    __test__ = False

    @clbench.hookimpl
    def register_strategies(self, register):
        register("boom", Boom)
        register("nan-loss", NanLoss)
        register("die", Die)


@pytest.fixture
def faulty(host):
    p = Faulty()
    host.register(p, name="faulty")
    yield
    host.unregister(p)


def _acc(t, strategy):
    """The accuracy values of a strategy's cell, in a fixed order."""
    m = t.measurements[(t.measurements["strategy"] == strategy) & (t.measurements["metric"] == "acc")]
    return m.sort_values(["train_task", "eval_task"])["value"].to_numpy()


def _check_isolated(t, run):
    status = t.cells.set_index("strategy")["status"].to_dict()
    err = t.cells.set_index("strategy")["error"]
    assert status["boom"] == "failed" and err["boom"] == "RuntimeError: boom at task 1"
    assert "boom at task 1" in t.cells.set_index("strategy")["traceback"]["boom"]
    assert status["nan-loss"] == "diverged" and "task 2" in err["nan-loss"]
    assert status["naive"] == "ok"
    assert len(_acc(t, "naive")) == 4 * 3  # before training + 3 tasks, × 3 eval tasks
    assert sorted(r.row["strategy"] for r in run.ran) == sorted(status)


def test_pool_runs_cells_in_workers_and_isolates_failures(run_suite_dict, faulty, tmp_path):
    pidfile = tmp_path / "pid"
    boom = {"name": "boom", "params": {"pidfile": str(pidfile)}}
    data = make_suite([boom, "nan-loss", "naive"], stream_params=TINY_STREAM)
    run, t = run_suite_dict(data, out=tmp_path / "pool", executor="pool", executor_options={"workers": 2})
    _check_isolated(t, run)
    assert len(run.not_ok) == 2
    assert int(pidfile.read_text()) != os.getpid()  # the cells ran in another process
    # the same numbers as in this process, whatever this process's own thread count
    _, ref = run_suite_dict(make_suite(["naive"], stream_params=TINY_STREAM), out=tmp_path / "local")
    assert set(ref.cells["run_id"]) <= set(t.cells["run_id"])  # same config hash either way
    assert np.array_equal(_acc(t, "naive"), _acc(ref, "naive"))


def _values(t):
    """Every measurement of a result set, in a fixed order."""
    return t.measurements.sort_values(["run_id", "train_task", "eval_task", "metric"])[
        ["run_id", "train_task", "eval_task", "metric", "value"]
    ].reset_index(drop=True)


def _same_cells_by_executor(run_suite_dict, tmp_path, executors):
    """The default-like suite run by each executor gives bit-identical measurements, and each
    cell's row says how many torch threads it ran on."""
    data = make_suite(["naive", {"name": "replay", "params": {"memory_size": 40}}], stream_params=TINY_STREAM, seeds=(0, 1))
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the driver's own count differs from a cell's (1 by default)
    try:
        for name, options in executors:
            _, results[name] = run_suite_dict(data, out=tmp_path / name, executor=name, executor_options=options)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    first = next(iter(results.values()))
    for name, t in results.items():
        assert (t.cells["status"] == "ok").all() and (t.cells["threads"] == 1).all(), name
        recorded = json.loads(t.cells["versions"].iloc[0])
        assert {"numpy", "pandas", "scikit-learn", "tokenizers", "transformers", "triton", "avalanche-lib"} <= set(recorded)
        assert recorded["numpy"] == np.__version__ and recorded["pandas"] == pd.__version__
        pd.testing.assert_frame_equal(_values(t), _values(first), check_exact=True, obj=name)


def test_local_and_pool_give_bit_identical_numbers(run_suite_dict, tmp_path):
    _same_cells_by_executor(run_suite_dict, tmp_path, [("local", {}), ("pool", {"workers": 2})])


@pytest.mark.slow
def test_local_pool_and_ray_give_bit_identical_numbers(run_suite_dict, tmp_path):
    pytest.importorskip("ray")
    _same_cells_by_executor(
        run_suite_dict, tmp_path, [("local", {}), ("pool", {"workers": 2}), ("ray", {"workers": 2})]
    )


def test_a_cells_thread_count_is_part_of_its_configuration(host):
    from clbench.suite import parse_suite

    one, two = (
        parse_suite(make_suite(["naive"], training={"threads": n}), "t.toml").cells[0] for n in (1, 2)
    )
    assert one.config_hash != two.config_hash
    with pytest.raises(clbench.errors.UserError, match="training.threads. must be greater than 0, got 0"):
        parse_suite(make_suite(["naive"], training={"threads": 0}), "t.toml")


@pytest.mark.slow
def test_pool_records_a_dying_worker_as_failed_and_goes_on(run_suite_dict, faulty):
    data = make_suite(["die", "boom", "nan-loss", "naive"], stream_params=TINY_STREAM)
    run, t = run_suite_dict(data, executor="pool", executor_options={"workers": 2})
    _check_isolated(t, run)
    cell = t.cells.set_index("strategy").loc["die"]
    assert cell["status"] == "failed" and "worker process" in cell["error"] and "died" in cell["error"]
    # its measurements are gone with the process; the cell reruns on the next run
    assert (t.measurements["strategy"] != "die").all()


@pytest.mark.slow
def test_ray_on_a_local_instance_with_two_cpus(run_suite_dict, faulty):
    ray = pytest.importorskip("ray")
    data = make_suite(["die", "boom", "nan-loss", "naive"], stream_params=TINY_STREAM)
    run, t = run_suite_dict(data, executor="ray", executor_options={"workers": 2})
    _check_isolated(t, run)
    cell = t.cells.set_index("strategy").loc["die"]
    assert cell["status"] == "failed" and "WorkerCrashedError" in cell["error"]
    assert not ray.is_initialized()  # clbench started the local instance, and stopped it


def test_worker_setup_carries_the_drivers_plugins_and_data_folder(host, faulty, monkeypatch):
    from clbench.suiterun import WorkerSetup

    monkeypatch.setenv("CLBENCH_DATA", "/data/of/the/driver")
    setup = WorkerSetup.of()
    assert "faulty" not in setup.allow.split(",") and "clbench.strategies.naive" in setup.allow.split(",")
    monkeypatch.delenv("CLBENCH_DATA")
    worker_host = setup.host()  # what a worker process builds
    assert worker_host.names("strategies") == host.names("strategies")
    assert worker_host.names("executors") == host.names("executors")
    assert os.environ["CLBENCH_DATA"] == "/data/of/the/driver"


def test_a_plugin_that_cannot_be_pickled_is_one_line(host):
    from clbench.errors import UserError
    from clbench.suiterun import WorkerSetup

    class Local:  # defined in a function: pickle cannot find it
        @clbench.hookimpl
        def register_strategies(self, register):
            pass

    host.register(Local(), name="local-plugin")
    with pytest.raises(UserError, match="local-plugin cannot be sent to worker processes"):
        WorkerSetup.of()


def test_executor_options_on_the_command_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    out = str(tmp_path / "r")
    assert main(["run", "--executor", "ray", "--out", out]) == 2
    assert capsys.readouterr().err == "clbench: error: executor 'ray': Ray is not installed: pip install 'clbench[ray]'\n"
    assert main(["run", "--address", "localhost:6379", "--out", out]) == 2  # --address alone means ray
    assert "Ray is not installed" in capsys.readouterr().err
    assert main(["run", "--workers", "0", "--out", out]) == 2
    assert capsys.readouterr().err == "clbench: error: executor 'pool': parameter 'workers' must be at least 1, got 0\n"
    assert main(["run", "--executor", "local", "--workers", "2", "--out", out]) == 2
    assert "executor 'local' has no parameter 'workers'" in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing written before the mistake was reported
