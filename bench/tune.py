"""``clbench tune``: a hyper-parameter search for every (stream, strategy) of a suite, each with
the same budget, on Ray Tune, under a protocol that never reads a test split (docs/tuning.md).

* :func:`plan` turns a suite into :class:`Job` s, one per (stream, strategy), every check done
  (search spaces, protocol, metric) before Ray starts;
* :func:`run_trial` is the Ray Tune trainable: one cell on the protocol's stream, reporting the
  objective after every task (ASHA stops trials by task), or replaying a trial that an earlier
  run finished;
* :func:`tune_suite` runs the searches, records each trial as it ends
  (:mod:`clbench.results.tuning`), and writes the best configurations as a suite file and the
  report.

Ray Tune and Optuna are optional (``clbench[tune]``): they are imported inside the functions that
use them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape

from . import search
from .config import CellConfig, Suite, order_label
from .errors import UserError
from .host import get_host
from .loop import build_stream, run_cell
from .params import suite_name
from .suite import to_toml
from .suiterun import WorkerSetup, make_executor, preflight, stream_key, worker_stream

from clbench.results import Matrices
from clbench.results.summary import fwt_undefined
from clbench.results.tuning import (TRIALS, best_trials, budget_notes, read_trials, write_report, write_trial,
                                    write_trials)
from clbench.tasks.validation import validation_split

PROTOCOLS = ("validation", "first-tasks")
SEARCHERS = ("random", "tpe")
SCHEDULERS = ("asha", "fifo")
#: Summary metrics for which lower is better (for the others, higher is).
LOWER_IS_BETTER = frozenset({"forgetting", "forgetting_since_learned", "intransigence", "intransigence_last"})
#: Metrics measured against a ``cumulative`` run, which a trial does not have.
NEEDS_REFERENCE = frozenset({"intransigence", "intransigence_last"})
#: Statuses of trials a resumed tune does not run again (a failed trial runs again).
FINISHED = ("ok", "stopped", "diverged")


@dataclass(frozen=True)
class Protocol:
    """How trials are scored. ``validation``: on a validation split of ``fraction`` of each
    task's training data (seeded by ``seed``); ``first-tasks`` (Chaudhry et al. 2019): the same,
    on a stream of the first ``first_tasks`` tasks only, the rest being left for the report."""

    name: str = "validation"
    fraction: float = 0.2
    first_tasks: int = 3
    seed: int = 0

    def describe(self) -> dict:
        d = {"name": self.name, "validation_fraction": self.fraction, "seed": self.seed}
        return {**d, "first_tasks": self.first_tasks} if self.name == "first-tasks" else d


@dataclass(frozen=True)
class Job:
    """One search, a (stream, strategy) of the suite: what its trials need (it travels to Ray's
    workers) and where its best configuration goes in the suite file."""

    cell: CellConfig  # the template: the search's fixed values set; first-tasks: the first tasks only
    space: search.Space
    protocol: Protocol
    metric: str
    mode: str
    searcher: str
    scheduler: str
    n_tasks: int  # tasks a trial runs
    seed: int  # the searcher's
    stream_entry: int  # index in the suite's [[streams]]
    strategy_entry: int  # index in the suite's [[strategies]]
    report_tasks: tuple[int, ...] | None  # first-tasks: the positions the tuned suite runs on
    setup: WorkerSetup | None = None
    cache: dict = field(default_factory=dict)  # run_id -> the row of a trial of this search an earlier run finished

    @property
    def search_key(self) -> str:
        """What determines the search's trials, in order: its template cell, space, protocol,
        objective, searcher, scheduler and seed (not the number of trials: more trials extend it)."""
        space = {search.key_name(k): str(v) for k, v in self.space.dims.items()}
        blob = json.dumps([self.cell.config(), space, self.protocol.describe(), self.metric, self.mode, self.searcher,
                           self.scheduler, self.seed], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def key(self, trial: int) -> str:
        """The ``trial_key`` of the search's trial number ``trial`` (0: the default configuration)."""
        return hashlib.sha256(f"{self.search_key}:{trial}".encode()).hexdigest()[:16]

    @property
    def single(self) -> bool:
        return len(self.cell.strategy.parts) == 1


# -- the plan: everything checked before Ray starts -------------------------------------------


def check_options(*, trials: int, protocol: Protocol, metric: str, mode: str | None, searcher: str,
                  scheduler: str) -> str:
    """Check the tune's options (one line each); return the mode (max or min) of the objective."""
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if protocol.name not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol.name!r} (protocols: {', '.join(PROTOCOLS)})")
    if not 0 < protocol.fraction < 1:
        raise UserError(f"--validation-fraction must be in (0, 1), got {protocol.fraction}")
    if protocol.first_tasks < 1:
        raise UserError(f"--first-tasks must be at least 1, got {protocol.first_tasks}")
    metrics = get_host().names("metrics")
    if metric not in metrics:
        raise UserError(f"unknown metric {metric!r} (metrics: {', '.join(metrics)})")
    if metric in NEEDS_REFERENCE:
        raise UserError(f"metric {metric!r} needs a cumulative reference run, which a trial does not have")
    if searcher not in SEARCHERS:
        raise UserError(f"unknown searcher {searcher!r} (searchers: {', '.join(SEARCHERS)})")
    if searcher == "tpe":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("--searcher tpe needs Optuna: pip install optuna") from None  # or clbench[tune]
    if scheduler not in SCHEDULERS:
        raise UserError(f"unknown scheduler {scheduler!r} (schedulers: {', '.join(SCHEDULERS)})")
    if mode not in (None, "max", "min"):
        raise UserError(f"--mode must be max or min, got {mode!r}")
    return mode or ("min" if metric in LOWER_IS_BETTER else "max")


def _labels(data: dict) -> list[str]:
    out = []
    for s in data.get("strategies", []):
        names = [s["name"]] if isinstance(s["name"], str) else s["name"]
        out.append(s.get("label", "+".join(names)))
    return out


def plan(suite: Suite, data: dict, *, protocol: Protocol, metric: str, mode: str, searcher: str, scheduler: str,
         seed: int) -> list[Job]:
    """One :class:`Job` per (stream, strategy) of the suite: the stream's first order, the suite's
    first seed, the strategy's search space; a one-line error for anything that cannot run."""
    streams = preflight(suite)
    labels = _labels(data)
    entries: dict[str, int] = {}  # stream key (without order) -> index of its [[streams]] entry
    jobs, seen = [], set()
    for cell in suite.cells:
        skey = json.dumps([cell.stream, cell.stream_params, cell.tasks], sort_keys=True)
        entries.setdefault(skey, len(entries))
        if (skey, cell.strategy.label) in seen:
            continue  # the first cell of each (stream, strategy): first order, first seed
        seen.add((skey, cell.strategy.label))
        where = f"{suite.path}: stream '{cell.stream}'"
        stream = streams[stream_key(cell)]
        report_tasks = None
        if protocol.name == "first-tasks":
            k, T = protocol.first_tasks, stream.n_tasks
            if k >= T:
                raise UserError(f"{where}: --first-tasks {k} leaves no task to report on (the stream has {T} tasks)")
            base = list(cell.tasks) if cell.tasks is not None else list(range(T))
            report_tasks = tuple(base[k:])
            cell = replace(cell, tasks=tuple(base[:k]), order=order_label(cell.order_value, base[:k]))
            stream = stream.reorder(list(range(k)))
        try:
            validation_split(stream, protocol.fraction, protocol.seed)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        try:
            space = search.resolve_space(cell.strategy, cell.training, suite.search[cell.strategy.label])
        except UserError as exc:
            raise UserError(f"{suite.path}: {exc}") from None
        group_seed = int(hashlib.sha256(f"{seed}:{skey}:{cell.strategy.label}".encode()).hexdigest()[:8], 16)
        jobs.append(Job(search.apply(cell, space.fixed), space, protocol, metric, mode, searcher,
                        scheduler if stream.n_tasks > 1 else "fifo", stream.n_tasks, group_seed, entries[skey],
                        labels.index(cell.strategy.label), report_tasks))
    return jobs


# -- a trial, in a Ray worker -------------------------------------------------------------------

def trial_stream(cell: CellConfig, protocol: Protocol):
    """The stream a trial of ``cell`` runs on: the cell's stream with each task's validation
    split in place of its test split, and nothing derived from the test split (docs/tuning.md)."""
    return validation_split(build_stream(cell), protocol.fraction, protocol.seed)


def _trial_stream(job: Job, cell: CellConfig):
    """The trial's stream (:func:`trial_stream`), in a worker set up as the driver."""
    return worker_stream(job.setup, cell, key=(stream_key(cell), job.protocol),
                         build=lambda cell: trial_stream(cell, job.protocol))


def _values(config: dict) -> dict[search.Key, Any]:
    """A trial's sampled configuration (``{"strategy name" or "training": {param: value}}``) by key."""
    return {(part, name): v for part, table in config.items() for name, v in table.items()}


def _nest(values: dict[search.Key, Any]) -> dict:
    out: dict[str, dict] = {}
    for (part, name), v in values.items():
        out.setdefault(part, {})[name] = v
    return out


def _trial_number(trial, searcher: str) -> int:
    """A trial's number in its search, from Ray Tune's tag (which starts with the count of trials
    created before it: from 0 for the random searcher, from 1 for a Searcher such as Optuna's)."""
    head = str(trial.experiment_tag).split("_", 1)[0]
    return int(head) - (1 if searcher == "tpe" else 0) if head.isdigit() else -1


def objective(metric_fn, acc: dict[int, list[float]], n: int, why: str | None) -> float:
    """The metric of the accuracy matrix over the first ``n`` tasks (``acc[i]``: the accuracies
    after training task i; ``acc[-1]``: before training)."""
    R = np.array([acc[i][:n] for i in range(n)])
    return float(metric_fn(Matrices(R=R, b=np.array(acc[-1][:n]), R_ref=None, fwt_undefined=why)))


def _replay(row: dict) -> None:
    """Report a finished trial's results again, as it reported them, without training."""
    from ray import tune

    objectives = json.loads(row["objective_by_task"])
    final = row["status"] != "stopped"
    for i in range(len(objectives) - (1 if final and row["status"] == "ok" else 0)):
        tune.report({"objective": objectives[i], "objective_by_task": json.dumps(objectives[: i + 1]),
                     "tasks_trained": i + 1, "status": "running", "cached": True})
    if final:
        tune.report({k: row[k] for k in ("objective", "objective_by_task", "tasks_trained", "status", "error", "seconds")}
                    | {"cached": True})


def run_trial(config: dict, job: Job) -> None:
    """The trainable: run the job's cell with ``config`` on the protocol's stream, reporting the
    objective after each task but the last, then the trial's result."""
    from ray import tune

    cell = search.apply(job.cell, _values(config))
    cached = job.cache.get(cell.run_id)  # the same configuration finished in an earlier run
    if cached is not None:
        return _replay(cached)
    started = time.perf_counter()
    try:
        stream = _trial_stream(job, cell)
        metric_fn = get_host().get("metrics", job.metric).obj
    except Exception as exc:  # the worker could not be set up: the trial fails, the search goes on
        return tune.report({"objective": math.nan, "objective_by_task": "[]", "tasks_trained": 0, "status": "failed",
                            "error": f"worker setup: {type(exc).__name__}: {exc}".splitlines()[0],
                            "seconds": time.perf_counter() - started})
    why = fwt_undefined({"scenario": stream.scenario, "strategy": cell.strategy.label,
                         "strategies": json.dumps([n for n, _ in cell.strategy.parts])})
    acc: dict[int, list[float]] = {}
    objectives: list[float] = []

    def on_evaluated(after: int, scores: list[dict[str, float]]) -> None:
        acc[after] = [s["acc"] for s in scores]
        if after < 0:
            return
        objectives.append(objective(metric_fn, acc, after + 1, why))
        if after + 1 < stream.n_tasks:  # the scheduler may stop the trial here (the report raises SystemExit)
            tune.report({"objective": objectives[-1], "objective_by_task": json.dumps(objectives),
                         "tasks_trained": after + 1, "status": "running"})

    result = run_cell(cell, stream=stream, on_evaluated=on_evaluated)
    ok = result.status == "ok"
    tune.report({"objective": objectives[-1] if ok else math.nan, "objective_by_task": json.dumps(objectives),
                 "tasks_trained": len(objectives), "status": result.status, "error": result.row["error"],
                 "seconds": time.perf_counter() - started})


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class TuneRun:
    out: Path
    trials: Any  # the trials of this run (a DataFrame)
    suites: list[Path]
    report: Path | None
    ran: int = 0  # trials run (not replayed from an earlier run)


def _recorder(job: Job, suite: str, out: Path, rows: list, counts: dict):
    """A Ray Tune callback, in the driver, that writes each trial's row as it ends."""
    from ray import tune

    class Recorder(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            self.record(trial, None)

        def on_trial_error(self, iteration, trials, trial, **info):  # its worker died (the trainable catches the rest)
            self.record(trial, _ray_error(trial))

        def record(self, trial, error: str | None) -> None:
            number = _trial_number(trial, job.searcher)
            cell = search.apply(job.cell, _values(trial.config))
            key = job.key(number)
            r = trial.last_result or {}
            if r.get("cached"):  # replayed: the earlier row, as this trial of this search
                old = job.cache[cell.run_id]
                row = {**old, "trial": number, "trial_key": key}
                if old["trial_key"] != key:
                    write_trial(out, row)
                rows.append(row)
                return
            status = "failed" if error else r.get("status", "failed")
            status = "stopped" if status == "running" else status
            done = int(r.get("tasks_trained", 0))
            row = {
                "trial_key": key, "search_key": job.search_key, "suite": suite, "stream": cell.stream,
                "stream_params": json.dumps(cell.stream_params, sort_keys=True), "order": cell.order,
                "strategy": cell.strategy.label, "protocol": json.dumps(job.protocol.describe()), "metric": job.metric,
                "mode": job.mode, "searcher": job.searcher, "scheduler": job.scheduler, "trial": number,
                "searched": json.dumps({search.key_name(k, job.single): v for k, v in search.current(cell, job.space.dims).items()}),
                "params": json.dumps(cell.strategy.to_json(), sort_keys=True),
                "training": json.dumps(asdict(cell.training), sort_keys=True),
                "objective": float(r.get("objective", math.nan)) if status in ("ok", "stopped") else math.nan,
                "objective_by_task": r.get("objective_by_task", "[]"), "tasks_trained": done, "n_tasks": job.n_tasks,
                "budget_used": done * cell.training.epochs, "status": status,
                "error": error or r.get("error", "") or "", "seconds": float(r.get("seconds", r.get("time_total_s", math.nan))),
                "seed": cell.seed, "run_id": cell.run_id,
            }
            write_trial(out, row)
            rows.append(row)
            counts["ran"] += 1

    return Recorder()


def _ray_error(trial) -> str:
    """One line of the error Ray Tune wrote for a trial: its exception's last line, or the
    first line of an error without a traceback (an actor that died)."""
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", Path(trial.error_file).read_text())
    except (OSError, TypeError):
        return "the trial's Ray worker failed"
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]  # after "Failure # 1 (occurred at ...)"
    if not lines:
        return "the trial's Ray worker failed"
    return lines[-1] if 'File "' in text else lines[0]


def _asha():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class ASHA(ASHAScheduler):
        """Ray Tune's ASHA, except that the default configuration (trial 0) is never stopped
        early: tuned against default is always measured. Its results count in the rungs."""

        def __init__(self, searcher: str, **kw):
            super().__init__(**kw)
            self.searcher = searcher

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if _trial_number(trial, self.searcher) == 0 else action

    return ASHA


def _search(job: Job, *, trials: int, workers: int | None, storage: str, callback) -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    dims = job.space.dims
    default = [_nest(search.current(job.cell, dims))] if dims else None
    if job.searcher == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from ray.tune.utils.util import flatten_dict

        # Optuna names the parameters of a nested space "part/name": the default must say them so
        points = [flatten_dict(p, "/") for p in default] if default else None
        algorithm = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=job.seed), points_to_evaluate=points)
    else:
        algorithm = BasicVariantGenerator(points_to_evaluate=default, random_state=job.seed)
    scheduler = (_asha()(job.searcher, time_attr="training_iteration", max_t=job.n_tasks, grace_period=1, reduction_factor=2)
                 if job.scheduler == "asha" else FIFOScheduler())
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, job=job), {"cpu": 1}),
        param_space=_nest({k: d.domain() for k, d in dims.items()}),
        tune_config=tune.TuneConfig(metric="objective", mode=job.mode, num_samples=trials if dims else 1,
                                    search_alg=algorithm, scheduler=scheduler, max_concurrent_trials=workers,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"search-{job.seed}", storage_path=storage, verbose=0, callbacks=[callback],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()


def tune_suite(suite: Suite, data: dict, out: Path, *, trials: int = 8, protocol: Protocol = Protocol(),
               metric: str = "acc", mode: str | None = None, searcher: str = "random", scheduler: str = "asha",
               seed: int = 0, address: str | None = None, workers: int | None = None,
               console: Console | None = None) -> TuneRun:
    """Tune every (stream, strategy) of ``suite`` (``data``: its parsed TOML, to write the tuned
    suite from) with ``trials`` trials each, into ``out``; see docs/tuning.md."""
    console = console or Console(stderr=True)
    mode = check_options(trials=trials, protocol=protocol, metric=metric, mode=mode, searcher=searcher,
                         scheduler=scheduler)
    executor = make_executor("ray", {k: v for k, v in (("address", address), ("workers", workers)) if v is not None})
    jobs = plan(suite, data, protocol=protocol, metric=metric, mode=mode, searcher=searcher, scheduler=scheduler,
                seed=seed)
    out = Path(out)
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
    finished = [r for r in read_trials(out).to_dict("records") if r["status"] in FINISHED]
    setup = WorkerSetup.of()
    jobs = [replace(j, setup=setup, cache={r["run_id"]: r for r in finished if r["search_key"] == j.search_key})
            for j in jobs]
    done = {r["trial_key"]: r for r in finished}
    console.print(f"tune [bold]{escape(suite.name)}[/bold]: {len(jobs)} searches × {trials} trials, protocol "
                  f"{protocol.name}, objective {metric} ({mode}), {searcher} search, {scheduler} → {out}", soft_wrap=True)

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the trials table is the record
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C ends the tune as it ends a run
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables from Ray Tune (clbench prints its own)
    rows: list[dict] = []
    counts = {"ran": 0}
    started = None
    quiet = logging.getLogger("ray.tune")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a failing trial is recorded in the table, not printed by Ray Tune
    try:
        with tempfile.TemporaryDirectory(prefix="clbench-tune-") as storage:
            for job in jobs:
                before = len(rows)
                keys = [job.key(i) for i in range(trials if job.space.dims else 1)]
                if all(k in done for k in keys):  # an earlier run finished this search: no need for Ray
                    rows += [done[k] for k in keys]
                else:
                    if started is None:  # as `clbench run --executor ray`: a local instance, or --address
                        started = executor.start()
                    _search(job, trials=trials, workers=workers, storage=storage,
                            callback=_recorder(job, suite.name, out, rows, counts))
                mine = rows[before:]
                ok = sorted((r for r in mine if r["status"] == "ok" and np.isfinite(r["objective"])), key=lambda r: r["trial"])
                best = (max if mode == "max" else min)(ok, key=lambda r: r["objective"]) if ok else None
                console.print(f"  {escape(job.cell.stream)} · {escape(job.cell.strategy.label)}: {len(mine)} trials, "
                              + (f"best {metric} {best['objective'] * 100:.1f} (trial {best['trial']})" if best else
                                 "[red]no trial finished[/red]"), soft_wrap=True)
    finally:
        quiet.setLevel(level)
        if started:
            import ray

            ray.shutdown()

    write_trials(out, read_trials(out))
    table = pd.DataFrame(rows, columns=list(TRIALS))
    for line in budget_notes(table) if len(table) else []:
        console.print(f"[yellow]{escape(line)}[/yellow]", soft_wrap=True)
    suites = write_best_suites(data, suite.name, jobs, best_trials(table), out)
    report = write_report(table, out)[0] if len(table) else None
    return TuneRun(out, table, suites, report, counts["ran"])


# -- the tuned suite ------------------------------------------------------------------------------


def best_suite_data(data: dict, name: str, jobs: list[Job], best, stream_entry: int) -> dict:
    """The suite ``data`` for one of its streams with each strategy's best configuration (its
    searched and fixed values), no search tables, and (first-tasks) the tasks left for the report."""
    new = copy.deepcopy(data)
    new.pop("search", None)
    new["name"] = f"{name}-tuned" if len({j.stream_entry for j in jobs}) == 1 else f"{name}-tuned-{stream_entry}"
    new["description"] = (f"{name} with each strategy's hyper-parameters from clbench tune "
                          f"(protocol {jobs[0].protocol.name}, objective {jobs[0].metric})")
    stream = new["streams"][stream_entry]
    if jobs[0].report_tasks is not None:  # first-tasks: the tasks the search never saw, in the order it tuned on
        stream["tasks"] = list(jobs[0].report_tasks)
        if "orders" in stream:
            stream["orders"] = stream["orders"][:1]
    new["streams"] = [stream]
    best = best.set_index("strategy") if len(best) else best
    for job in jobs:
        entry = new["strategies"][job.strategy_entry]
        entry.pop("search", None)
        cell = job.cell
        if len(best) and cell.strategy.label in best.index:
            b = best.loc[cell.strategy.label]
            cell = replace(cell, strategy=replace(cell.strategy, parts=tuple((n, p) for n, p in json.loads(b["params"]))))
            cell = search.apply(cell, {k: json.loads(b["training"])[k[1]] for k in job.space.dims if k[0] == "training"})
        keys = [*job.space.dims, *job.space.fixed]
        values = search.current(cell, keys)
        for (part, pname), v in values.items():
            if part == "training":
                entry.setdefault("training", {})[pname] = v
            elif job.single:
                entry.setdefault("params", {})[suite_name(pname)] = v
            else:
                entry.setdefault("params", {}).setdefault(part, {})[suite_name(pname)] = v
    return new


def write_best_suites(data: dict, name: str, jobs: list[Job], best, out: Path) -> list[Path]:
    """``out/best.toml`` (one file per stream of the suite: ``best-<i>-<stream>.toml``)."""
    entries = sorted({j.stream_entry for j in jobs})
    paths = []
    for i in entries:
        mine = [j for j in jobs if j.stream_entry == i]
        c = mine[0].cell
        b = best[(best["stream"] == c.stream) & (best["stream_params"] == json.dumps(c.stream_params, sort_keys=True))] if len(best) else best
        path = out / ("best.toml" if len(entries) == 1 else f"best-{i}-{mine[0].cell.stream}.toml")
        text = to_toml(best_suite_data(data, name, mine, b, i))
        path.write_text(f"# written by clbench tune: {name}, the best trial of each strategy\n{text}", encoding="utf-8")
        paths.append(path)
    return paths
