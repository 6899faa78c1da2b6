"""clbench tune: every check before Ray starts, the validation split (the test split is never
read), the objective, the tuned suite; and, on a local Ray instance, a whole tune: the trials
table (failing, diverging, dying and early-stopped trials recorded, the search going on), the
tuned suite that `clbench run` takes, the report, resuming without running finished trials
again, and the first-tasks protocol."""

import json
import math
import os
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import clbench
from clbench.cli import main
from clbench.suite import parse_suite, to_toml
from clbench.tune import objective
from conftest import make_suite
from test_search import BAD_SPACES

DIGITS = {"patch_size": 4, "n_tasks": 2}


class Probe:
    """A strategy whose one parameter ``x`` decides what a trial does: below ``skip_below`` it
    trains nothing, above ``diverge_above`` its loss is infinite, above ``fail_above`` it raises,
    within 0.005 of ``die_at`` it kills its process. Each task it trains appends ``x`` to the
    file ``log``."""

    search_space = {"x": {"uniform": [0.0, 1.0]}}

    def __init__(self, x: float = 0.5, log: str = "", skip_below: float = -1.0, diverge_above: float = 2.0,
                 fail_above: float = 2.0, die_at: float = -1.0):
        self.x, self.log = x, log
        self.skip_below, self.diverge_above, self.fail_above, self.die_at = skip_below, diverge_above, fail_above, die_at

    @clbench.hookimpl
    def before_task(self, cell, task):
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{self.x!r}\n")
        if self.x > self.fail_above:
            raise RuntimeError("probe fails")
        if abs(self.x - self.die_at) < 0.005:
            os._exit(3)  # only ever in a Ray worker

    @clbench.hookimpl
    def fit_task(self, cell, task, data):
        return True if self.x < self.skip_below else None

    @clbench.hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        return torch.tensor(float("inf")) if self.x > self.diverge_above else None


class ProbePlugin:
    __test__ = False

    @clbench.hookimpl
    def register_strategies(self, register):
        register("probe", Probe)


def _write(tmp_path: Path, data: dict, name: str = "suite.toml") -> str:
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return str(path)


# -- checks before Ray starts ---------------------------------------------------------------------


@pytest.mark.parametrize("search, message", BAD_SPACES[:4])
def test_a_bad_search_space_is_one_line_exit_2_before_ray_starts(tmp_path, capsys, host, search, message):
    ray = pytest.importorskip("ray")
    path = _write(tmp_path, make_suite([{"name": "ewc", "search": search}], stream_params=DIGITS))
    assert main(["tune", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clbench: error: {path}: ") and message in err, err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_tune_options_are_checked_before_ray_starts(tmp_path, capsys, host):
    ray = pytest.importorskip("ray")
    path = _write(tmp_path, make_suite(["ewc"], stream_params=DIGITS))
    out = str(tmp_path / "out")
    for extra, message in [
        (["--metric", "accuracy"], "unknown metric 'accuracy' (metrics: "),
        (["--metric", "intransigence"], "metric 'intransigence' needs a cumulative reference run"),
        (["--trials", "0"], "--trials must be at least 1, got 0"),
        (["--protocol", "peek"], "unknown protocol 'peek' (protocols: validation, first-tasks)"),
        (["--protocol", "first-tasks", "--first-tasks", "2"], "--first-tasks 2 leaves no task to report on (the stream has 2 tasks)"),
        (["--validation-fraction", "1.5"], "--validation-fraction must be in (0, 1), got 1.5"),
        (["--scheduler", "pbt"], "unknown scheduler 'pbt'"),
    ]:
        assert main(["tune", path, "--out", out, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not ray.is_initialized() and not Path(out).exists()


def test_tpe_without_optuna_is_one_line(tmp_path, capsys, host, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if Optuna were not installed
    path = _write(tmp_path, make_suite(["ewc"], stream_params=DIGITS))
    assert main(["tune", path, "--searcher", "tpe", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "clbench: error: --searcher tpe needs Optuna: pip install optuna\n"


# -- the protocols' pieces -------------------------------------------------------------------------


def test_the_validation_split_is_stratified_seeded_and_carved_from_the_training_data(host):
    from clbench.tasks.digits import split_digits
    from clbench.tasks.validation import validation_split

    stream = split_digits(**DIGITS)
    a, b = validation_split(stream, 0.25, seed=0), validation_split(stream, 0.25, seed=1)
    assert torch.equal(validation_split(stream, 0.25, seed=0).tasks[1].test.x, a.tasks[1].test.x)  # seeded
    assert not torch.equal(a.tasks[0].test.x, b.tasks[0].test.x)
    for orig, task in zip(stream.tasks, a.tasks):
        train, val = orig.train, task.test
        assert len(task.train) + len(val) == len(train)
        rows = {tuple(r) for r in train.x.flatten(1).tolist()}
        assert all(tuple(r) in rows for r in val.x.flatten(1).tolist())  # validation examples are training examples
        kept = {tuple(r) for r in task.train.x.flatten(1).tolist()}
        assert not kept & {tuple(r) for r in val.x.flatten(1).tolist()}  # ... that it no longer trains on
        for c in orig.classes:  # stratified: a quarter of each class, within one example
            assert abs(int((val.y == c).sum()) - 0.25 * int((train.y == c).sum())) <= 1


class Poisoned(clbench.tasks.Examples):
    """Examples that fail when anything reads them."""

    def __getattribute__(self, name):
        if name in ("x", "y", "lengths", "t"):
            raise AssertionError("the test split was read")
        return object.__getattribute__(self, name)


def test_a_cell_on_the_validation_split_never_reads_the_test_split(host):
    from dataclasses import replace

    from clbench.loop import build_stream, run_cell
    from clbench.tasks.validation import validation_split

    cell = parse_suite(make_suite(["replay"], stream_params=DIGITS), "t.toml").cells[0]
    stream = build_stream(cell)
    t = stream.tasks[0].test
    poisoned = replace(stream, tasks=[replace(task, test=Poisoned(t.x, t.y, t.lengths, t.t)) for task in stream.tasks])
    with pytest.raises(AssertionError, match="the test split was read"):
        len(poisoned.tasks[0].test)
    result = run_cell(cell, stream=validation_split(poisoned, 0.2, 0))
    assert result.status == "ok", result.row["error"]


def _stream_fields(stream) -> dict:
    """Every field of a stream and its tasks, tensors as lists (the data folder left out: the two
    folders' paths differ by construction)."""
    from dataclasses import fields

    def plain(v):
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, clbench.tasks.Examples):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        return v

    out = {f.name: plain(getattr(stream, f.name)) for f in fields(stream) if f.name not in ("tasks", "params", "tokenizer")}
    out["params"] = {k: v for k, v in stream.params.items() if k != "data_dir"}
    out["tokenizer"] = stream.tokenizer.describe()
    out["tasks"] = [{f.name: plain(getattr(t, f.name)) for f in fields(t)} for t in stream.tasks]
    return out


@pytest.mark.parametrize("kind", ["trace", "text"])
def test_two_folders_that_differ_only_in_their_test_files_give_identical_validation_streams(host, tmp_path, kind):
    """No statistic of a test split reaches a trial: not a generative task's max_new_tokens (from
    the longest test answer), not the stream's max_len, not a tokenizer trained on the data."""
    from clbench.tune import Protocol, trial_stream

    def folder(name: str, long_tests: bool) -> Path:
        root = tmp_path / name
        for t, task in enumerate(("FOMC", "ScienceQA")):
            d = root / task
            d.mkdir(parents=True)
            if kind == "trace":
                train = [{"prompt": f"{task} q{i}?\nAnswer:", "answer": "ABC"[i % 3] + " because" * (i % 4)} for i in range(20)]
                test = [{"prompt": f"{task} test {i}?" * (40 if long_tests else 1) + "\nAnswer:",
                         "answer": ("long answer " * 8 if long_tests else "A") + str(i)} for i in range(5)]
            else:
                train = [{"sentence": f"{task} sentence {i} " + "w" * i, "label": ["neg", "pos"][i % 2]} for i in range(20)]
                test = [{"sentence": f"{task} test {i} " * (30 if long_tests else 1), "label": ["neg", "pos"][i % 2]}
                        for i in range(5)]
                (d / "labels.json").write_text('["neg", "pos"]', encoding="utf-8")
            (d / "train.json").write_text(json.dumps(train), encoding="utf-8")
            (d / "test.json").write_text(json.dumps(test), encoding="utf-8")
        return root

    streams = []
    for name, long_tests in (("short", False), ("long", True)):
        params = {"data_dir": str(folder(name, long_tests)), "tokenizer": "bpe", "vocab_size": 300}
        if kind == "trace":
            suite = make_suite(["naive"], stream="trace", stream_params=params, model={"causal": True, "max_len": 512})
        else:
            suite = make_suite(["naive"], stream="text", stream_params={**params, "max_len": 512})
        cell = parse_suite(suite, "t.toml").cells[0]
        streams.append(trial_stream(cell, Protocol("validation", fraction=0.25, seed=0)))
    short, long = streams
    if kind == "trace":  # the test answers differ a lot: the full streams' caps do
        from clbench.loop import build_stream
        full = [build_stream(parse_suite(make_suite(["naive"], stream="trace", stream_params={
            "data_dir": str(tmp_path / n), "tokenizer": "bpe", "vocab_size": 300}, model={"causal": True, "max_len": 512}),
            "t.toml").cells[0]) for n in ("short", "long")]
        assert full[0].tasks[0].max_new_tokens < full[1].tasks[0].max_new_tokens
        assert short.tasks[0].max_new_tokens_derived and short.tasks[0].max_new_tokens > 0
    assert _stream_fields(short) == _stream_fields(long)
    assert len(short.tasks) == 2 and all(4 <= len(t.test) <= 5 for t in short.tasks)  # a quarter of 20 training examples


def test_the_objective_is_the_metric_of_the_matrix_so_far():
    from clbench.results.metrics import acc, bwt

    rows = {-1: [0.1, 0.2, 0.3], 0: [0.9, 0.0, 0.1], 1: [0.5, 0.8, 0.0], 2: [0.4, 0.6, 0.7]}
    assert objective(lambda m: acc(m.R), rows, 2, None) == pytest.approx((0.5 + 0.8) / 2)
    assert objective(lambda m: acc(m.R), rows, 3, None) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert objective(lambda m: bwt(m.R), rows, 3, None) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)


def test_the_tuned_suite_takes_each_strategys_best_trial(host):
    from clbench.results.tuning import best_trials
    from clbench.tune import Protocol, best_suite_data, plan

    data = make_suite([{"name": "ewc", "params": {"fisher_samples": 50}, "search": {"gamma": 1.0}}, "naive",
                       {"name": "seq-lora", "label": "lora"}], stream_params=DIGITS)
    data["search"] = {"epochs": {"int": [1, 3]}}
    suite = parse_suite(data, "t.toml")
    jobs = plan(suite, data, protocol=Protocol("first-tasks", first_tasks=1), metric="acc", mode="max",
                searcher="random", scheduler="asha", seed=0)
    assert [j.n_tasks for j in jobs] == [1, 1, 1] and jobs[0].report_tasks == (1,)

    def row(strategy, trial, objective, status, ewc=None, lora=None, epochs=1):
        params = {"ewc": [["ewc", {"lambda_": ewc, "fisher_samples": 50, "mode": "separate", "gamma": 1.0}]],
                  "naive": [["naive", {}]], "lora": [["seq-lora", {**dict(jobs[2].cell.strategy.parts)["seq-lora"], "rank": lora}]]}
        return {"stream": "split-digits", "stream_params": "{}", "strategy": strategy, "trial": trial, "objective": objective,
                "status": status, "mode": "max", "searched": "{}", "params": json.dumps(params[strategy]),
                "training": json.dumps({"lr": 0.003 if strategy == "lora" else 0.001, "epochs": epochs})}

    trials = pd.DataFrame([
        row("ewc", 0, 0.5, "ok", ewc=1e4), row("ewc", 1, 0.7, "ok", ewc=10.0, epochs=3),
        row("ewc", 2, 0.9, "stopped", ewc=1.0), row("ewc", 3, 0.7, "ok", ewc=99.0),  # a tie: the earlier wins
        row("naive", 0, 0.4, "ok", epochs=2), row("lora", 0, math.nan, "diverged", lora=8), row("lora", 1, 0.6, "ok", lora=2),
    ])
    best = best_trials(trials)
    assert sorted(zip(best["strategy"], best["trial"])) == [("ewc", 1), ("lora", 1), ("naive", 0)]
    tuned = best_suite_data(data, "test", jobs, best, 0)
    assert tuned["name"] == "test-tuned" and "search" not in tuned and tuned["streams"][0]["tasks"] == [1]
    ewc, naive, lora = tuned["strategies"]
    # every strategy searches the learning rate: its best value goes into the tuned suite too
    assert ewc["params"] == {"fisher_samples": 50, "lambda": 10.0, "gamma": 1.0} and ewc["training"] == {"epochs": 3, "lr": 0.001}
    assert naive["training"] == {"epochs": 2, "lr": 0.001}  # the suite's [search] covers every strategy
    assert lora["params"] == {"rank": 2} and lora["training"] == {"epochs": 1, "lr": 0.003}
    cells = parse_suite(tuned, "tuned.toml").cells  # a suite clbench run takes
    assert dict(cells[0].strategy.parts)["ewc"]["lambda_"] == 10.0 and cells[0].training.epochs == 3


def test_the_tune_report_flags_an_unequal_budget():
    from clbench.results.tuning import blocks, budget_notes

    def rows(strategy, n, searched):
        return [{"stream": "split-digits", "stream_params": "{}", "strategy": strategy, "trial": i,
                 "searched": json.dumps(searched), "objective": 0.5, "status": "ok", "mode": "max", "metric": "acc",
                 "protocol": json.dumps({"name": "validation"}), "searcher": "random", "scheduler": "asha",
                 "params": "[]", "training": "{}", "budget_used": 2} for i in range(n)]

    equal = pd.DataFrame(rows("naive", 4, {"training.lr": 1e-3}) + rows("ewc", 4, {"lambda": 1.0, "training.lr": 1e-3}))
    assert budget_notes(equal) == []
    assert any(b[0] == "p" and b[1].startswith("Equal budget") for b in blocks(equal))
    unequal = pd.DataFrame(rows("naive", 1, {}) + rows("ewc", 4, {"lambda": 1.0}) + rows("seq-lora", 4, {"rank": 2, "training.lr": 1e-3}))
    assert budget_notes(unequal) == [
        "Unequal budget on split-digits: naive 1, ewc 4, seq-lora 4 trials (a strategy with nothing to search runs its default once).",
        "Unequal search on split-digits: the learning rate is searched for seq-lora, not for naive, ewc."]


def test_asha_never_stops_the_default_configuration():
    pytest.importorskip("ray")
    from ray.tune.schedulers import TrialScheduler

    from clbench.tune import _asha

    class Trial:  # what the scheduler reads of a trial
        def __init__(self, n):
            self.trial_id, self.experiment_tag = f"t{n}", f"{n}_x=0.1"

    asha = _asha()("random", metric="objective", mode="max", time_attr="training_iteration", max_t=3,
                   grace_period=1, reduction_factor=2)
    good, default, bad = Trial(1), Trial(0), Trial(2)
    for t in (good, default, bad):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, good, {"training_iteration": 1, "objective": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, default, {"training_iteration": 1, "objective": 0.1}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, bad, {"training_iteration": 1, "objective": 0.1}) == TrialScheduler.STOP


# -- a whole tune, on a local Ray instance ---------------------------------------------------------


@pytest.fixture(scope="module")
def ray_and_probe():
    """A local Ray instance with 2 CPUs for the module, and a host with the probe strategy."""
    ray = pytest.importorskip("ray")
    from clbench.host import DEFAULT_PLUGINS, Host, use_host

    h = Host().load(",".join(DEFAULT_PLUGINS))
    h.register(ProbePlugin(), name="probe")
    with use_host(h):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield h
        ray.shutdown()


THRESHOLDS = {"skip_below": 0.1, "diverge_above": 0.7, "fail_above": 0.76, "die_at": 0.248}
#: ``--seed 4`` draws x = 0.472, 0.534, 0.564, 0.748, 0.248, 0.774, 0.019 after the default 0.5: a
#: trial of each kind, and the one that trains nothing comes last, after four that train, so that
#: ASHA (which never stops the first trials to report) stops it whatever order Ray runs them in.
TUNE = ["--trials", "8", "--workers", "1", "--seed", "4"]


@pytest.fixture(scope="module")
def tuned(ray_and_probe, tmp_path_factory):
    """`clbench tune` of probe (8 trials, one at a time, ASHA) and naive (nothing to search: the
    suite fixes the learning rate for all)."""
    tmp = tmp_path_factory.mktemp("tune")
    data = make_suite([{"name": "probe", "params": {"log": str(tmp / "probe.log"), **THRESHOLDS}}, "naive"],
                      stream_params=DIGITS)
    data["search"] = {"lr": 1e-3}
    path = _write(tmp, data)
    out = tmp / "out"
    rc = main(["tune", path, "--out", str(out), *TUNE])
    return rc, path, out, pd.read_parquet(out / "trials.parquet")


def _x(trials: pd.DataFrame) -> pd.Series:
    return trials["searched"].map(lambda s: json.loads(s).get("x"))


def test_every_trial_is_recorded_and_failures_do_not_stop_the_search(tuned):
    rc, _, out, trials = tuned
    assert rc == 0
    probe = trials[trials["strategy"] == "probe"].sort_values("trial")
    assert probe["trial"].tolist() == list(range(8)) and len(set(probe["trial_key"])) == 8
    assert trials[trials["strategy"] == "naive"]["trial"].tolist() == [0]  # nothing to search: one trial
    x = _x(probe)
    assert x.iloc[0] == 0.5  # trial 0: the default configuration
    status = dict(zip(x, probe["status"]))
    for v, s in status.items():  # what each value does
        if abs(v - THRESHOLDS["die_at"]) < 0.005 or v > THRESHOLDS["fail_above"]:
            assert s == "failed"
        elif v > THRESHOLDS["diverge_above"]:
            assert s == "diverged"
        elif v < THRESHOLDS["skip_below"]:
            assert s == "stopped"  # by ASHA, after the first task: it learned nothing
        else:
            assert s == "ok"
    assert sorted(status.values()) == ["diverged", "failed", "failed", "ok", "ok", "ok", "ok", "stopped"]
    bad = probe[probe["status"].isin(["failed", "diverged"])]
    assert bad["objective"].isna().all()
    errors = dict(zip(x, probe["error"]))
    assert errors[max(x)] == "RuntimeError: probe fails"
    died = [e for v, e in errors.items() if abs(v - THRESHOLDS["die_at"]) < 0.005]
    assert len(died) == 1 and "died" in died[0].lower(), died  # Ray's error, and the search went on
    assert probe.loc[probe["status"] == "diverged", "error"].str.startswith("loss is inf").all()
    stopped = probe[probe["status"] == "stopped"]
    assert (stopped["tasks_trained"] == 1).all() and (stopped["budget_used"] == 1).all()
    assert (stopped["objective"] == 0.0).all()  # its accuracy on the one task it saw
    ok = probe[probe["status"] == "ok"]
    assert (ok["tasks_trained"] == 2).all() and (ok["budget_used"] == 2).all()
    assert np.isfinite(ok["objective"]).all()
    assert len(list((out / "trials").glob("*.parquet"))) == 9


def test_the_tuned_suite_runs_with_the_best_trial(tuned, ray_and_probe, tmp_path):
    from clbench.results import load
    from clbench.suiterun import run_suite

    _, path, out, trials = tuned
    probe = trials[(trials["strategy"] == "probe") & (trials["status"] == "ok")]
    top = probe[probe["objective"] == probe["objective"].max()]
    best = top.loc[top["trial"].idxmin()]  # a tie goes to the earliest trial: the default first
    text = (out / "best.toml").read_text()
    data = tomllib.loads(text)
    assert "search" not in data and all("search" not in s for s in data["strategies"])
    assert data["strategies"][0]["params"]["x"] == json.loads(best["searched"])["x"]
    assert data["strategies"][0]["params"]["log"] == tomllib.loads(Path(path).read_text())["strategies"][0]["params"]["log"]
    suite = parse_suite(data, str(out / "best.toml"))
    run = run_suite(suite, tmp_path / "res", progress=False)
    assert [r.status for r in run.ran] == ["ok", "ok"]
    assert set(load(tmp_path / "res").summary["strategy"]) == {"probe", "naive"}
    report = (out / "report.md").read_text()
    assert "### Tuned vs default" in report and "### Each hyper-parameter's effect on the objective" in report
    assert "Unequal budget on split-digits: probe 8, naive 1 trials" in report  # the suite fixed the learning rate
    assert (out / "report.html").exists() and len(list((out / "figures").glob("*.png"))) == 1  # probe has a plot


def test_tpe_searches_with_optunas_seeded_sampler(ray_and_probe, tmp_path):
    """``--searcher tpe``: Optuna's TPE proposes the trials after the default one, and a seeded
    search proposes the same values again (one trial at a time)."""
    pytest.importorskip("optuna")
    searched = []
    for run in ("a", "b"):
        data = make_suite([{"name": "probe", "params": {"log": str(tmp_path / f"{run}.log")}}], stream_params=DIGITS)
        out = tmp_path / f"out-{run}"
        assert main(["tune", _write(tmp_path, data), "--out", str(out), "--trials", "5", "--workers", "1",
                     "--seed", "3", "--searcher", "tpe", "--scheduler", "fifo"]) == 0
        trials = pd.read_parquet(out / "trials.parquet").sort_values("trial")
        assert trials["trial"].tolist() == list(range(5)) and set(trials["status"]) == {"ok"}
        searched.append(_x(trials).tolist())
    assert searched[0][0] == 0.5 and len(set(searched[0])) == 5  # the default, then four proposals
    assert searched[0] == searched[1]


def test_a_killed_tune_resumes_without_running_finished_trials(tuned, tmp_path, monkeypatch):
    rc, path, out, trials = tuned
    again = tmp_path / "out"
    shutil.copytree(out, again)
    log = Path(tomllib.loads(Path(path).read_text())["strategies"][0]["params"]["log"])
    probe = trials[(trials["strategy"] == "probe")].sort_values("trial")
    lost = probe[probe["status"] == "ok"].iloc[-1]  # as if the tune had been killed while it ran
    (again / "trials" / f"{lost['trial_key']}.parquet").unlink()
    (again / "trials.parquet").unlink()
    reruns = {f"{k}.parquet" for k in probe.loc[probe["status"] == "failed", "trial_key"]}
    kept = {f.name: f.stat().st_mtime_ns for f in (again / "trials").glob("*.parquet") if f.name not in reruns}
    log.write_text("")
    import clbench.tune

    searched, search = [], clbench.tune._search
    monkeypatch.setattr(clbench.tune, "_search", lambda job, **kw: searched.append(job.cell.strategy.label) or search(job, **kw))
    assert main(["tune", path, "--out", str(again), *TUNE]) == 0
    assert searched == ["probe"]  # naive's search had finished: no Ray Tune for it
    x = json.loads(lost["searched"])["x"]
    failed = _x(probe[probe["status"] == "failed"]).tolist()  # failed trials run again, as failed cells do
    assert sorted(log.read_text().split()) == sorted([repr(x)] * 2 + [repr(v) for v in failed])  # and the lost one
    assert {f.name: f.stat().st_mtime_ns for f in (again / "trials").glob("*.parquet") if f.name in kept} == kept
    resumed = pd.read_parquet(again / "trials.parquet")
    cols = ["trial_key", "trial", "searched", "status", "objective"]
    pd.testing.assert_frame_equal(resumed.sort_values("trial_key")[cols].reset_index(drop=True),
                                  trials.sort_values("trial_key")[cols].reset_index(drop=True))


@pytest.mark.slow
def test_first_tasks_tunes_on_the_first_tasks_and_reports_on_the_rest(ray_and_probe, tmp_path):
    data = make_suite([{"name": "probe", "params": {"log": str(tmp_path / "probe.log")}}],
                      stream_params={"patch_size": 4, "n_tasks": 3})
    path = _write(tmp_path, data)
    out = tmp_path / "out"
    assert main(["tune", path, "--out", str(out), "--trials", "2", "--workers", "2", "--protocol", "first-tasks",
                 "--first-tasks", "2", "--scheduler", "fifo"]) == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials["n_tasks"] == 2).all() and (trials["tasks_trained"] == 2).all()
    assert json.loads(trials["protocol"].iloc[0]) == {"name": "first-tasks", "validation_fraction": 0.2, "seed": 0, "first_tasks": 2}
    assert len((tmp_path / "probe.log").read_text().split()) == 4  # 2 trials × the first 2 tasks
    best = tomllib.loads((out / "best.toml").read_text())
    assert best["streams"][0]["tasks"] == [2]  # the task the search never saw
    cell = parse_suite(best, "best.toml").cells[0]
    from clbench.loop import build_stream

    assert [t.name for t in build_stream(cell).tasks] == ["digits 4-5"]


def test_the_trials_columns_are_the_ones_docs_tuning_describes():
    from clbench.results.tuning import TRIALS

    docs = (Path(__file__).resolve().parents[1] / "docs" / "tuning.md").read_text()
    rest = docs.split("**trials**", 1)[1]
    block = rest[rest.index("\n|"):].split("\n\n", 1)[0].strip().splitlines()[2:]
    described = [n.strip() for line in block for n in line.split("|")[1].split(",")]
    assert sorted(described) == sorted(TRIALS)


def test_sigterm_ends_a_tune_with_one_line_and_keeps_its_finished_trials(tmp_path):
    import signal
    import subprocess

    pytest.importorskip("ray")
    path = _write(tmp_path, make_suite(["ewc", "naive"], stream_params=DIGITS))
    out = tmp_path / "out"
    script = (  # after the first search, wait to be killed
        "import sys, time, clbench.cli as c, clbench.tune as t\n"
        "search = t._search\n"
        "t._search = lambda job, **kw: (search(job, **kw), print('ready', flush=True), time.sleep(60))\n"
        f"sys.exit(c.main(['tune', {path!r}, '--out', {str(out)!r}, '--trials', '2', '--workers', '1']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)  # the local Ray instance is running: ray.init set a handler of its own
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "clbench: interrupted; finished trials are saved, run again to resume" in err
    assert "Traceback" not in err
    assert len(pd.read_parquet(out / "trials")) == 2  # the first search's two trials
