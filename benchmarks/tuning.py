"""clbench tune: does tuning with an equal budget change the strategies' ACC and their ranking,
and what does Ray Tune cost per trial?

``speed``: one search (split-digits, class-incremental, EWC, d_model 64, 2 layers) of ``--trials``
trials with the FIFO scheduler (every trial runs every task), with 1 and with 2 Ray workers, on a
local Ray instance started before the timed tune and stopped after it (timed apart). It prints
trials per minute and the overhead per trial

    overhead = wall × workers / trials − mean(trial seconds)

(trial seconds: the trial's own run, measured in the worker), and, against it, the default
configuration's cell run by ``clbench run`` in this process (its wall time and the cell's own
seconds). A trial trains on 80 % of each task's training data (the rest is its validation
split), so its cell is slightly smaller than the one ``clbench run`` trains.

``strategies``: ``clbench tune`` of the built-in ``strategies`` suite (validation protocol, ACC,
``--trials`` trials per strategy, random search, ASHA, seed 0, first seed of the suite), then the
suite as it is (defaults) and the tuned suite (``best.toml``), each over the suite's 3 seeds on
the test split, into fresh folders. It prints each strategy's ACC (mean ± sd over seeds) with
its defaults and tuned, the difference, and both rankings. ``--epochs`` overrides the suite's
training epochs everywhere (to fit a small machine), ``--strategies`` keeps some of its entries
(by label). ``clbench tune`` searches the learning rate for every strategy by default;
``--fix-lr`` fixes it at the suite's rate for all (``[search] lr = 1e-3``), leaving each
strategy's own space (naive, joint, cumulative then get one trial).

    python benchmarks/tuning.py speed [--trials 8] [--epochs 2]
    python benchmarks/tuning.py strategies [--trials 4] [--epochs 2] [--workers 2] [--strategies naive,ewc,...] [--fix-lr]

Wall times on a machine that other work shares are not precise: say so when you quote them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from clbench.results import aggregate, load
from clbench.suite import parse_suite, read_suite
from clbench.suiterun import run_suite
from clbench.tune import tune_suite


def speed(args) -> None:
    import ray

    data = {
        "name": "tune-speed", "seeds": [0],
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4},
        "training": {"epochs": args.epochs, "batch_size": 32, "lr": 1e-3, "device": "cpu"},
        "streams": [{"name": "split-digits", "params": {"patch_size": 4}}],
        "strategies": [{"name": "ewc"}],
    }
    suite = parse_suite(data, "benchmarks/tuning.py")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = run_suite(suite, Path(tmp) / "run", progress=False)
        run_wall = time.perf_counter() - t0
        run_cell_s = run.ran[0].row["total_seconds"]
        for workers in (1, 2):
            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            init = time.perf_counter() - t0
            t0 = time.perf_counter()
            tuned = tune_suite(suite, data, Path(tmp) / f"tune-{workers}", trials=args.trials, scheduler="fifo",
                               workers=workers)
            wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            ray.shutdown()
            stop = time.perf_counter() - t0
            trials = tuned.trials
            assert (trials["status"] == "ok").all(), trials[["status", "error"]]
            mean = statistics.mean(trials["seconds"])
            rows.append((workers, wall, len(trials) / wall * 60, mean, wall * workers / len(trials) - mean, init, stop))
    print(f"one search: split-digits, EWC, {args.trials} trials, FIFO, d_model 64, 2 layers, {args.epochs} epochs\n")
    print("| Ray workers | wall s | trials / min | mean trial s | overhead per trial s | ray.init s | shutdown s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for w, wall, per_min, mean, over, init, stop in rows:
        print(f"| {w} | {wall:.1f} | {per_min:.1f} | {mean:.2f} | {over:+.2f} | {init:.1f} | {stop:.1f} |")
    print(f"\nthe same cell (defaults) with clbench run, in this process: wall {run_wall:.2f} s, cell {run_cell_s:.2f} s")


def _acc(out: Path) -> dict[str, tuple[float, float, int]]:
    agg = aggregate(load(out).summary)
    return {r["strategy"]: (r["acc_mean"], r["acc_std"], int(r["rank"])) for _, r in agg.iterrows()}


def strategies(args) -> None:
    data, where = read_suite("strategies")
    if args.epochs:
        data["training"]["epochs"] = args.epochs
    if args.strategies:
        keep = args.strategies.split(",")
        data["strategies"] = [s for s in data["strategies"]
                              if s.get("label", "+".join([s["name"]] if isinstance(s["name"], str) else s["name"])) in keep]
    if args.fix_lr:
        data["search"] = {"lr": data["training"]["lr"]}
    suite = parse_suite(data, where)
    out = Path(args.out or tempfile.mkdtemp(prefix="clbench-bench-tuning-"))
    t0 = time.perf_counter()
    tuned = tune_suite(suite, data, out / "tune", trials=args.trials, workers=args.workers)
    tune_wall = time.perf_counter() - t0
    executor = {"executor": "pool", "executor_options": {"workers": args.workers}} if args.workers > 1 else {}
    t0 = time.perf_counter()
    ran = run_suite(suite, out / "default", progress=False, **executor).ran  # cells already there: kept
    default_wall = time.perf_counter() - t0
    best_data, best_where = read_suite(str(tuned.suites[0]))
    t0 = time.perf_counter()
    run_suite(parse_suite(best_data, best_where), out / "tuned", progress=False, **executor)
    tuned_wall = time.perf_counter() - t0
    default, after = _acc(out / "default"), _acc(out / "tuned")
    trials = tuned.trials
    print(f"strategies suite (split-digits, class-incremental), {suite.cells[0].training.epochs} epochs; tune: "
          f"{args.trials} trials per strategy, validation protocol, ACC, random search, ASHA"
          f"{', lr fixed for every strategy' if args.fix_lr else ', lr searched for every strategy'}; "
          f"{len(trials)} trials ({(trials['status'] == 'stopped').sum()} stopped by ASHA) in {tune_wall / 60:.1f} min; "
          f"{len(suite.cells)} cells each: default {default_wall / 60:.1f} min ({len(ran)} run), tuned {tuned_wall / 60:.1f} min "
          f"({'pool, ' + str(args.workers) + ' workers' if args.workers > 1 else 'in this process'})\n")
    print("| strategy | searched | ACC default | ACC tuned | tuned − default | rank default | rank tuned |")
    print("|---|---|---:|---:|---:|---:|---:|")
    best = {r["strategy"]: r["searched"] for _, r in trials.iterrows() if r["trial"] == 0}
    for label in sorted(default, key=lambda s: default[s][2]):
        (dm, ds, dr), (tm, ts, tr) = default[label], after[label]
        dims = ", ".join(json.loads(best.get(label, "{}"))) or "–"
        print(f"| {label} | {dims} | {dm * 100:.1f} ± {ds * 100:.1f} | {tm * 100:.1f} ± {ts * 100:.1f} | "
              f"{(tm - dm) * 100:+.1f} | {dr} | {tr} |")
    changed = [s for s in default if default[s][2] != after[s][2]]
    print(f"\nranking changed for: {', '.join(changed) if changed else 'none'}  (results in {out})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("speed", "strategies"))
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--strategies", help="strategies suite: the entries to keep, by label (default: all)")
    ap.add_argument("--fix-lr", action="store_true", help="strategies suite: fix the learning rate at the suite's for all")
    ap.add_argument("--out", help="strategies suite: where to keep the results (default: a new temporary folder)")
    args = ap.parse_args()
    if args.what == "speed":
        args.trials, args.epochs = args.trials or 8, args.epochs or 2
        speed(args)
    else:
        args.trials = args.trials or 4
        strategies(args)


if __name__ == "__main__":
    main()
