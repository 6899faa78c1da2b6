"""clbench against Avalanche on the same work: naive, replay and EWC.

Both sides train the same Transformer (same config, same seed, so the same initial weights) on
the same tasks with the same epochs, batch size, optimizer (Adam, rebuilt for every task) and
gradient clipping, and both evaluate every task before training and after each task:

* clbench: ``run_cell`` with ``naive``, ``replay`` (memory ``--memory``, reservoir, one memory
  example per new example) or ``ewc`` (``lambda_ = 2 × --ewc-lambda``: clbench's penalty has a
  factor 1/2 that Avalanche's has not, so the two penalties are equal);
* Avalanche: its own ``Naive``, ``Replay(mem_size=--memory)`` or ``EWC(ewc_lambda=--ewc-lambda)``
  training loop (its data loaders, its plugins) and its own evaluation (``accuracy_metrics``) on
  an Avalanche benchmark made from the same clbench stream (``benchmark_from_stream``), with the
  clbench model behind Avalanche's ``model(x)`` (``PackedModel``).

The algorithms are not bit-for-bit the same beyond naive: Avalanche's Replay keeps a memory
balanced over experiences, filled at the end of each, and appends a memory batch as large as the
new batch; clbench's replay (``update = "task-end"``, ratio 1) keeps a reservoir sample; their
EWC Fisher differs (Avalanche squares minibatch gradients, clbench per-example ones). So ACC is
compared within the spread over seeds, not exactly.

Wall time (and the process's CPU time, steadier than wall time on a shared machine) is the
whole run after the data is in memory (stream built, benchmark converted) and Avalanche is
imported. Peak memory is the growth of the process's peak resident set during the
run (Linux: ``/proc/self/clear_refs`` resets it) on a CPU, or the peak CUDA allocation on a GPU.
On a CPU every run is a forked child of a parent that has imported everything and built the
data, so each starts from the same heap; sides alternate, seed by seed. ``--threads 1`` keeps
torch from oversubscribing a shared machine's cores.

``--precision bf16`` trains and evaluates clbench's cells in bf16 (``training.precision``: autocast,
as every clbench cell runs it); Avalanche's side stays fp32 (its loop is run as it comes, with no
autocast). The table's precision column is what clbench's cells ran in (a device without bf16
arithmetic runs fp32, with a warning).

    python benchmarks/vs_avalanche.py [--seeds 0 1 2] [--strategies naive replay ewc]
        [--streams split-digits text] [--data-dir ../shared/data/CL_Benchmark] [--epochs 3] [--threads 0]
        [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from clbench.models import Transformer
from clbench.loop import build_stream, run_cell
from clbench.suite import parse_suite

MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4}
TRAINING = {"epochs": 3, "batch_size": 32, "lr": 1e-3, "grad_clip": 1.0, "optimizer": "adam"}
STREAMS = {
    "split-digits": {"patch_size": 4},
    "text": {
        "tasks": ["TC/agnews", "SC/amazon", "TC/dbpedia", "SC/yelp"],
        "train_per_class": 40,
        "test_per_class": 20,
        "tokenizer": "bytes",
        "max_len": 64,
    },
}


# -- memory ------------------------------------------------------------------------------------


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def memory_start(device: torch.device) -> float:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    except OSError:
        pass
    return _status("VmRSS")


def memory_peak(device: torch.device, start: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20 - start
    return _status("VmHWM") - start


# -- the two sides ---------------------------------------------------------------------------


def clbench_side(cell, stream, device) -> tuple[float, float, float, float, str]:
    start = memory_start(device)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_cell(cell, stream=stream)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if res.status != "ok":
        raise RuntimeError(res.row["traceback"] or res.row["error"])
    T = stream.n_tasks
    final = [m["value"] for m in res.measurements if m["metric"] == "acc" and m["train_task"] == T - 1]
    return wall, memory_peak(device, start), float(np.mean(final)), cpu, res.row["precision"]


def avalanche_side(cell, stream, bench, strategy: str, args, device) -> tuple[float, float, float, float]:
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import EWC, Naive, Replay

    from clbench.plugins.avalanche import PackedModel, _clip_plugin
    from clbench.loop import make_optimizer

    start = memory_start(device)
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cell.seed)
    net = Transformer(cell.model, input_kind=stream.input_kind, input_dim=stream.input_dim, n_classes=stream.n_classes)
    model = PackedModel(net, stream.class_mask(), tokens=stream.input_kind == "tokens").to(device)
    tcfg = cell.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    common = dict(
        model=model,
        optimizer=make_optimizer(model.parameters(), tcfg),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=tcfg.batch_size,
        train_epochs=tcfg.epochs,
        eval_mb_size=tcfg.eval_batch_size,
        device=device,
        plugins=[_clip_plugin(tcfg.grad_clip)],
        evaluator=evaluator,
        eval_every=-1,
    )
    if strategy == "naive":
        algo = Naive(**common)
    elif strategy == "replay":
        algo = Replay(mem_size=args.memory, **common)
    else:
        algo = EWC(ewc_lambda=args.ewc_lambda, **common)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        algo.eval(bench.test_stream)  # before training, as clbench does
        for exp in bench.train_stream:
            algo.train(exp, reset_optimizer_state=True)
            last = algo.eval(bench.test_stream)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    accs = [v for k, v in last.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    assert len(accs) == stream.n_tasks, sorted(last)
    return wall, memory_peak(device, start), float(np.mean(accs)), cpu


def isolated(fn, *args):
    """``fn(*args)`` in a forked child on a CPU, so that each run starts from the same heap (the
    parent's, after imports and data) and its peak resident set is its own; in-process on a GPU
    (CUDA cannot be forked)."""
    device = args[-1]
    if device.type == "cuda" or not hasattr(os, "fork"):
        return fn(*args)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        try:
            send.send(("ok", fn(*args)))
        except BaseException as exc:  # report it to the parent
            send.send(("error", repr(exc)))

    proc = ctx.Process(target=child)
    proc.start()
    status, value = recv.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def clbench_strategy(strategy: str, args) -> dict:
    if strategy == "replay":
        return {"name": "replay", "params": {"memory_size": args.memory, "update": "task-end"}}
    if strategy == "ewc":
        return {"name": "ewc", "params": {"lambda_": 2 * args.ewc_lambda}}
    return {"name": "naive"}


def fmt(xs: list[float], digits: int = 3) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=["naive", "replay", "ewc"], choices=["naive", "replay", "ewc"])
    ap.add_argument("--streams", nargs="+", default=["split-digits", "text"], choices=sorted(STREAMS))
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "CL_Benchmark"))
    ap.add_argument("--text-tasks", nargs="+", default=STREAMS["text"]["tasks"])
    ap.add_argument("--per-class", type=int, default=STREAMS["text"]["train_per_class"], help="text: training examples per class")
    ap.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    ap.add_argument("--memory", type=int, default=200)
    ap.add_argument("--ewc-lambda", type=float, default=50.0, help="Avalanche's ewc_lambda (clbench gets twice it)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="clbench's training.precision (Avalanche's side stays fp32)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"precision: clbench {args.precision} (training.precision), Avalanche fp32 (its own loop, no autocast); "
          f"{torch.get_num_threads()} torch thread(s)", flush=True)

    import avalanche  # noqa: F401  (imported before timing: it takes seconds)

    from clbench.plugins.avalanche import benchmark_from_stream

    rows = []
    for sname in args.streams:
        params = dict(STREAMS[sname])
        if sname == "text":
            if not Path(args.data_dir).is_dir():
                print(f"skipping the text stream: no data folder at {args.data_dir}")
                continue
            params.update(data_dir=args.data_dir, tasks=args.text_tasks, train_per_class=args.per_class)
        suite = parse_suite(
            {
                "name": "vs-avalanche",
                "seeds": args.seeds,
                "model": MODEL,
                # clbench's cells run on the same torch threads as Avalanche's loop in this process
                "training": {**TRAINING, "epochs": args.epochs, "device": args.device, "threads": torch.get_num_threads(),
                             "precision": args.precision},
                "streams": [{"name": sname, "params": params}],
                "strategies": [clbench_strategy(s, args) for s in args.strategies],
            },
            "vs_avalanche",
        )
        stream = build_stream(suite.cells[0])
        bench = benchmark_from_stream(stream)
        for label, strategy in zip([clbench_strategy(s, args)["name"] for s in args.strategies], args.strategies):
            cells = [c for c in suite.cells if c.strategy.label == label]
            res = {"clbench": [], "avalanche": []}
            for cell in cells:
                device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
                res["clbench"].append(isolated(clbench_side, cell, stream, device))
                res["avalanche"].append(isolated(avalanche_side, cell, stream, bench, strategy, args, device))
                c, a = res["clbench"][-1], res["avalanche"][-1]
                print(f"  {sname} {strategy} seed {cell.seed}: clbench ({c[4]}) {c[0]:.1f}s (cpu {c[3]:.1f}s) {c[1]:.0f}MiB ACC {c[2]:.3f} | avalanche {a[0]:.1f}s (cpu {a[3]:.1f}s) {a[1]:.0f}MiB ACC {a[2]:.3f}", flush=True)
            rows.append((sname, strategy, res))

    print()
    print("| stream | strategy | clbench precision | clbench s | Avalanche s | time ratio | clbench CPU s | Avalanche CPU s | CPU ratio | clbench MiB | Avalanche MiB | clbench ACC | Avalanche ACC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sname, strategy, res in rows:
        c, a = res["clbench"], res["avalanche"]
        ratio = statistics.median(x[0] for x in c) / statistics.median(x[0] for x in a)
        cratio = statistics.median(x[3] for x in c) / statistics.median(x[3] for x in a)
        print(
            f"| {sname} | {strategy} | {'/'.join(sorted({x[4] for x in c}))} | {fmt([x[0] for x in c], 1)} | {fmt([x[0] for x in a], 1)} | {ratio:.2f} | "
            f"{fmt([x[3] for x in c], 1)} | {fmt([x[3] for x in a], 1)} | {cratio:.2f} | "
            f"{fmt([x[1] for x in c], 0)} | {fmt([x[1] for x in a], 0)} | {fmt([x[2] for x in c])} | {fmt([x[2] for x in a])} |"
        )
    print(f"\n(time and CPU ratio: median clbench / median Avalanche wall time and process CPU time over {len(args.seeds)} seed(s); "
          f"memory: peak growth of the process's resident set (CPU) or CUDA allocation (GPU); ACC: mean ± std over seeds; "
          f"Avalanche's side ran fp32)")


if __name__ == "__main__":
    main()
