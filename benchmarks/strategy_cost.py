"""Each strategy's time relative to ``naive`` on the same cell, measured so that a busy machine
does not decide the answer.

The cells of a suite (one seed) run in rounds; each round runs every strategy once, in an order
rotated from round to round, so a slow period of the machine falls on different strategies. For
each cell it records the wall-clock train seconds (the runner's ``train_seconds``: training plus
the strategies' ``before_task``/``after_task`` work) and the process CPU seconds of the whole
cell (training and evaluation; evaluation is the same work for every strategy). The table gives
the medians over rounds and their ratios to naive's.

    python benchmarks/strategy_cost.py [--suite strategies] [--seed 0] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clbench.loop import build_stream, run_cell
from clbench.suite import load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="strategies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    cells = [c for c in suite.cells if c.seed == args.seed]
    stream = build_stream(cells[0])
    wall: dict[str, list[float]] = {c.strategy.label: [] for c in cells}
    cpu: dict[str, list[float]] = {c.strategy.label: [] for c in cells}
    for r in range(args.rounds):
        k = (r * len(cells)) // args.rounds
        for cell in cells[k:] + cells[:k]:
            c0 = time.process_time()
            res = run_cell(cell, stream=stream)
            cpu[cell.strategy.label].append(time.process_time() - c0)
            assert res.status == "ok", res.row["error"]
            wall[cell.strategy.label].append(res.row["train_seconds"])
            print(f"round {r}: {cell.strategy.label}: {wall[cell.strategy.label][-1]:.1f} s", flush=True)
    w0, c0 = statistics.median(wall["naive"]), statistics.median(cpu["naive"])
    print(f"\n{suite.name}, seed {args.seed}, {args.rounds} rounds, torch threads {torch.get_num_threads()}\n")
    print("| strategy | train s (wall) | × naive | cell CPU s | × naive |")
    print("|---|---|---|---|---|")
    for label in sorted(wall, key=lambda s: statistics.median(cpu[s])):
        w, c = statistics.median(wall[label]), statistics.median(cpu[label])
        print(f"| {label} | {w:.1f} | {w / w0:.2f} | {c:.1f} | {c / c0:.2f} |")


if __name__ == "__main__":
    main()
