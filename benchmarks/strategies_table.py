"""The strategies' summary table: ACC, BWT and forgetting (mean ± sd over seeds, in %), and each
strategy's cost: train seconds, train seconds relative to ``naive`` on the same stream (the ratio
of the means over seeds), memory-buffer size and trainable parameters.

    clbench run strategies --out clbench-results/strategies
    clbench run strategies-task-il --out clbench-results/strategies-task-il
    python benchmarks/strategies_table.py clbench-results/strategies clbench-results/strategies-task-il

One table per scenario (the cells are grouped by the stream's scenario, so folders of several
scenarios of one stream can be given together).

Train seconds are wall-clock: on a machine shared with other work they are noisy, and the ratio
to naive is the number to compare.
"""

from __future__ import annotations

import argparse

import clbench.results
from clbench.results import aggregate


def pm(mean: float, sd: float) -> str:
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def table(*folders: str) -> str:
    tables = clbench.results.load(*folders)
    cells = tables.cells[tables.cells["status"] == "ok"]
    scenario = {r["run_id"]: r["scenario"] for _, r in cells.iterrows()}
    summary = tables.summary.assign(scenario=tables.summary["run_id"].map(scenario))
    lines = []
    for (stream, scen), g in summary.groupby(["stream", "scenario"], sort=False):
        agg_g = aggregate(g.drop(columns="scenario"), metrics=["acc", "bwt", "forgetting"])
        naive = agg_g.loc[agg_g["strategy"] == "naive", "train_seconds_mean"]
        base = float(naive.iloc[0]) if len(naive) else float("nan")
        buffers = g.groupby("strategy")["buffer_size"].max()
        lines += [
            f"\n{stream} · {scen} · mean ± sd over seeds (%)\n",
            "| strategy | seeds | ACC | BWT | forgetting | train s | × naive | buffer | trainable params |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in agg_g.sort_values("acc_mean", ascending=False).iterrows():
            lines.append(
                f"| {r['strategy']} | {r['seeds']} | {pm(r['acc_mean'], r['acc_std'])} | {pm(r['bwt_mean'], r['bwt_std'])} "
                f"| {pm(r['forgetting_mean'], r['forgetting_std'])} | {r['train_seconds_mean']:.1f} "
                f"| {r['train_seconds_mean'] / base:.2f} | {int(buffers[r['strategy']])} | {int(r['trainable_params_mean']):,} |"
            )
    failed = tables.cells[tables.cells["status"] != "ok"]
    for _, r in failed.iterrows():
        lines.append(f"{r['status']}: {r['strategy']} seed {r['seed']}: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="results folders (clbench run strategies --out ...)")
    print(table(*ap.parse_args().results))


if __name__ == "__main__":
    main()
