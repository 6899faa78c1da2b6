"""The example strategy package (examples/clbench-example-strategy): installed with pip, offline,
it is found through its ``clbench`` entry point and runs in a suite; its own tests pass."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clbench.errors import UserError
from clbench.host import Host
from conftest import make_suite

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "clbench-example-strategy"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-installs a copy of the example (a build writes into its source folder) into a fresh
    target folder: no index, no build isolation, no dependencies, so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("example")
    src, target = tmp / "src", tmp / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
           "--no-build-isolation", "--no-warn-script-location", "--target", str(target), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    yield src, target
    sys.modules.pop("clbench_example_strategy", None)


def test_the_installed_package_is_found_through_its_entry_point_and_runs(installed, monkeypatch, run_suite_dict, host):
    _, target = installed
    monkeypatch.syspath_prepend(str(target))  # as if installed into site-packages
    h = Host().load()
    entry = h.get("strategies", "l2-anchor")
    assert entry.plugin == "l2-anchor"  # the entry-point name
    assert entry.obj.__module__ == "clbench_example_strategy"
    listed = dict(h.plugins())["l2-anchor"]  # what `clbench plugins` shows
    assert [s.split()[0] for s in listed["strategies"]] == ["l2-anchor"]
    assert "l2-anchor" not in Host().load("naive,digits").names("strategies")  # the allow-list

    # through a suite, with its parameters checked against its signature
    host.register(sys.modules["clbench_example_strategy"], name="l2-anchor")
    suite = make_suite(["naive", {"name": "l2-anchor", "params": {"strength": 10.0}}], stream_params={"patch_size": 4, "n_tasks": 2})
    run, t = run_suite_dict(suite)
    assert [r.status for r in run.ran] == ["ok", "ok"]
    # the penalty changes training: the two runs end on different accuracies or losses
    ev = t.measurements[t.measurements["metric"] != "train_loss"]  # the training loss has the penalty in it
    m = ev.pivot_table(index=["train_task", "eval_task", "metric"], columns="strategy", values="value")
    assert (m["naive"] != m["l2-anchor"]).any()
    with pytest.raises(UserError, match="strategy 'l2-anchor' has no parameter 'strenght'"):
        run_suite_dict(make_suite([{"name": "l2-anchor", "params": {"strenght": 1.0}}]))


@pytest.mark.slow
def test_the_example_packages_own_tests_pass(installed):
    src, target = installed
    paths = [str(target)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(src / "tests")],
        capture_output=True, text=True, env=env, cwd=src,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout
