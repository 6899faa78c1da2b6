"""Executors: the wall time of one 8-cell suite run in this process, in a pool of worker
processes, and on a local Ray instance; Ray's start and stop, and its overhead per cell.

The suite is split-digits with naive and cumulative × 4 seeds (8 cells). Each executor runs it
once (``--force``, into a fresh folder), in this order, in this process: local with one torch
thread per core (``training.threads`` = cores), local with one thread (the default, and what each
cell in a worker runs on), pool, ray. The table gives wall times, the speed-up over the first row, and the per-cell
overhead

    overhead = wall × workers / cells − mean(cell seconds)

i.e. what a cell costs beyond its own run (worker start, importing torch in a new worker,
building the stream there, shipping the result back), assuming the workers stay busy. For Ray the
instance is started before the timed run and stopped after it, timed apart.

    python benchmarks/executors.py [--workers 2] [--epochs 2] [--only local,local-1,pool,ray]

Wall times on a machine that other work shares are not precise: say so when you quote them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from clbench.results import load
from clbench.suite import parse_suite
from clbench.suiterun import run_suite


def suite_data(epochs: int, threads: int = 1) -> dict:
    return {
        "name": "executors",
        "seeds": [0, 1, 2, 3],
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "device": "cpu", "threads": threads},
        "streams": [{"name": "split-digits", "params": {"patch_size": 4}}],
        "strategies": [{"name": "naive"}, {"name": "cumulative"}],
    }


def timed(suite, out: Path, executor: str, options: dict) -> tuple[float, list[float], list]:
    t0 = time.perf_counter()
    run = run_suite(suite, out, executor=executor, executor_options=options, force=True, progress=False)
    wall = time.perf_counter() - t0
    assert not run.not_ok, [r.row["error"] for r in run.not_ok]
    return wall, [r.row["total_seconds"] for r in run.ran], load(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--only", default="local,local-1,pool,ray", help="which rows, comma-separated (default: all)")
    args = ap.parse_args()
    only = args.only.split(",")

    suite = parse_suite(suite_data(args.epochs), "benchmarks/executors.py")
    cores = os.cpu_count() or 1
    n = len(suite.cells)
    rows = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "local" in only:
            many = parse_suite(suite_data(args.epochs, cores), "benchmarks/executors.py")
            wall, secs, results["local"] = timed(many, Path(tmp) / "local", "local", {})
            rows.append((f"local (in-process, training.threads = {cores})", 1, wall, secs, ""))
        if "local-1" in only:
            wall, secs, results["local-1"] = timed(suite, Path(tmp) / "local-1", "local", {})
            rows.append(("local (in-process, 1 torch thread: the default)", 1, wall, secs, ""))
        if "pool" in only:
            wall, secs, results["pool"] = timed(suite, Path(tmp) / "pool", "pool", {"workers": args.workers})
            rows.append((f"pool, --workers {args.workers}", args.workers, wall, secs, ""))
        if "ray" in only:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            started = time.perf_counter() - t0
            wall, secs, results["ray"] = timed(suite, Path(tmp) / "ray", "ray", {"workers": args.workers})
            t0 = time.perf_counter()
            ray.shutdown()
            stopped = time.perf_counter() - t0
            rows.append((f"ray, {args.workers} CPUs", args.workers, wall, secs, f"ray.init {started:.1f} s, shutdown {stopped:.1f} s (not in wall)"))

    base = rows[0][2]
    print(f"{n} cells, {os.cpu_count()} cores, epochs {args.epochs}; speed-up against the first row")
    print("| executor | wall s | speed-up | mean cell s | overhead per cell s | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, workers, wall, secs, note in rows:
        mean = statistics.mean(secs)
        overhead = wall * workers / n - mean
        print(f"| {name} | {wall:.1f} | {base / wall:.2f}× | {mean:.2f} | {overhead:+.2f} | {note} |")
    first = next(iter(results))
    ref = results[first].summary.set_index(["strategy", "seed"])["acc"].sort_index()
    for name, t in results.items():  # another thread count is another cell (hash): match by strategy, seed
        acc = t.summary.set_index(["strategy", "seed"])["acc"].sort_index()
        print(f"{name}: max |ACC − {first} ACC| = {(acc - ref).abs().max():.2e}")


if __name__ == "__main__":
    main()
