"""Zero-shot scores of a causal LM on instruction tasks, its prompts plain and through its chat
template: what a continual-learning run's first evaluation (``train_task = -1``) records.

Each task of an ``instructions`` stream (CL_Benchmark folders in O-LoRA's instruction format) is
evaluated by the untrained model exactly as a cell's evaluation before training does it
(``Generation.evaluate``): exact match of greedy answers (``exact_match``) and rank
classification of the label texts (``accuracy``), once with ``prompt_format = "plain"`` and once
with ``"chat"`` (the prompt as the user's turn, the answer after the assistant's header).

    python benchmarks/zero_shot.py --model FOLDER --data-dir ../shared/data/CL_Benchmark
        [--tasks dbpedia amazon agnews] [--test-per-class 10] [--formats plain chat]
        [--metrics exact_match accuracy] [--rank-per-class 4] [--rank-tasks amazon agnews] [--threads 2]

Rank classification scores every label after every prompt (dbpedia has 14), so it gets fewer
examples per class (``--rank-per-class``) and may be given fewer tasks (``--rank-tasks``).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a Hugging Face causal LM folder with a chat template (model.init)")
    ap.add_argument("--data-dir", default="../shared/data/CL_Benchmark")
    ap.add_argument("--tasks", nargs="+", default=["dbpedia", "amazon", "agnews"])
    ap.add_argument("--test-per-class", type=int, default=10, help="test examples per class, exact match")
    ap.add_argument("--rank-per-class", type=int, default=4, help="test examples per class, rank classification")
    ap.add_argument("--rank-tasks", nargs="+", default=None, help="the tasks ranked (default: --tasks)")
    ap.add_argument("--metrics", nargs="+", default=["exact_match", "accuracy"], choices=["exact_match", "accuracy"])
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", nargs="+", default=["plain", "chat"])
    args = ap.parse_args()

    from clbench.cell import CellContext
    from clbench.kinds import Generation
    from clbench.models.backbones import resolve
    from clbench.models.hf import load_causal_lm
    from clbench.suite import parse_suite
    from clbench.tasks.instructions import instructions

    torch.set_num_threads(args.threads)
    model = load_causal_lm(resolve(args.model)).eval()
    runs = [(m, args.test_per_class if m == "exact_match" else args.rank_per_class,
             args.tasks if m == "exact_match" else args.rank_tasks or args.tasks) for m in args.metrics]
    table: dict[tuple[str, str, str], float] = {}
    sizes: dict[tuple[str, str], int] = {}
    for fmt in args.formats:
        for metric, per_class, tasks in runs:
            params = {"data_dir": args.data_dir, "tasks": tasks, "train_per_class": 1, "test_per_class": per_class,
                      "metric": metric, "max_len": args.max_len, "prompt_format": fmt}
            suite = {"name": "zero-shot", "seeds": [0], "model": {"init": args.model},
                     "training": {"threads": args.threads, "eval_batch_size": 16},
                     "streams": [{"name": "instructions", "params": params}], "strategies": [{"name": "naive"}]}
            (cell,) = parse_suite(suite, "zero-shot").cells
            stream = instructions(**params, tokenizer=args.model)
            ctx = CellContext(cell, stream, model, torch.device("cpu"))
            for i, task in enumerate(ctx.tasks):
                t0 = time.perf_counter()
                scores = Generation().evaluate(ctx, i, task)
                table[(task.name, metric, fmt)] = scores[metric]
                table[(task.name, f"loss ({metric})", fmt)] = scores["loss"]
                sizes[(task.name, metric)] = len(task.test)
                print(f"{fmt:5s} {metric:11s} {task.name:12s} {scores[metric]:.3f}  loss {scores['loss']:.3f}  "
                      f"({len(task.test)} prompts, {time.perf_counter() - t0:.0f} s)", flush=True)
    names = list(dict.fromkeys(n for n, _, _ in table))
    cols = [c for m, _, _ in runs for c in (m, f"loss ({m})")]
    head = [f"{c} {f}" for c in cols for f in args.formats]
    print("\n| task | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for n in names:
        cells = ["" if (n, c, f) not in table else f"{table[(n, c, f)]:.2f}" if c.startswith("loss")
                 else f"{100 * table[(n, c, f)]:.1f} ({sizes[(n, c)]})" for c in cols for f in args.formats]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
