"""The cell runner's overhead: one clbench cell against the same work in a bare PyTorch loop.

Both sides train the same model (same config, same seed) on the same split-digits tasks with the
same epochs, batch size, optimizer and gradient clipping, and evaluate every task before training
and after each task. They run alternately in one process, ``--repeats`` times; the table gives the
median wall times and their ratio (clbench / bare). The target is at most 1.10.

    python benchmarks/runner_overhead.py [--repeats 5] [--strategy naive]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from clbench.host import get_host
from clbench.models import Transformer
from clbench.loop import run_cell
from clbench.suite import parse_suite

SUITE = {
    "name": "overhead",
    "seeds": [0],
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4},
    "training": {"epochs": 4, "batch_size": 32, "lr": 1e-3, "grad_clip": 1.0, "device": "cpu"},
    "streams": [{"name": "split-digits", "params": {"patch_size": 4}}],
    "strategies": [{"name": "naive"}],
}


def bare_loop(cell, stream) -> float:
    """The same training and evaluation, written as a plain PyTorch loop."""
    t0 = time.perf_counter()
    cfg = cell.training
    torch.manual_seed(cell.seed)
    model = Transformer(cell.model, input_kind=stream.input_kind, input_dim=stream.input_dim, n_classes=stream.n_classes)
    g = torch.Generator().manual_seed(cell.seed)

    @torch.inference_mode()
    def evaluate_all():
        model.eval()
        out = []
        for task in stream.tasks:
            d = task.test
            correct, loss = 0, 0.0
            for i in range(0, len(d), cfg.eval_batch_size):
                x, y = d.x[i : i + cfg.eval_batch_size], d.y[i : i + cfg.eval_batch_size]
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
            out.append(correct / len(d))
        return out

    evaluate_all()
    for task in stream.tasks:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        d = task.train
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(d), generator=g)
            for s in range(0, len(d), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
        evaluate_all()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--strategy", default="naive")
    args = ap.parse_args()
    # run_cell on the same torch threads as the plain loop in this process
    data = dict(SUITE, strategies=[{"name": args.strategy}],
                training={**SUITE["training"], "threads": torch.get_num_threads()})
    cell = parse_suite(data, "overhead").cells[0]
    host = get_host()
    stream = host.get("streams", cell.stream).obj(**cell.stream_params, order=None)
    ours, bare = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = run_cell(cell, stream=stream)
        ours.append(time.perf_counter() - t0)
        assert result.status == "ok", result.row["error"]
        bare.append(bare_loop(cell, stream))
    mo, mb = statistics.median(ours), statistics.median(bare)
    print(f"split-digits (patch 4), d_model 64, 2 layers, {cell.training.epochs} epochs, batch {cell.training.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats, strategy {args.strategy}")
    print(f"{'':<22}{'median s':>10}{'min s':>10}")
    print(f"{'clbench run_cell':<22}{mo:>10.2f}{min(ours):>10.2f}")
    print(f"{'bare PyTorch loop':<22}{mb:>10.2f}{min(bare):>10.2f}")
    print(f"{'ratio (target ≤ 1.10)':<22}{mo / mb:>10.3f}{min(ours) / min(bare):>10.3f}")


if __name__ == "__main__":
    main()
