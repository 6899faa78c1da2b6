"""Text streams: seconds to load and tokenize a CL_Benchmark folder, and the padding fraction of
random and length-aware batching on agnews.

1. Load + tokenize every task of the folder with the byte tokenizer, and with BPE trained from
   scratch (an empty cache) and then read from the cache (median of ``--repeats``).
2. Padding fraction of one epoch of agnews training batches (batch size ``--batch-size``), as the
   runner records it (each batch trimmed to its longest sequence), for random batching and for
   length-aware batching with several windows; mean over 5 seeds.
3. With ``--cell``: one real naive cell on agnews per batching mode (capped at 250 examples per
   class, one epoch): the ``padding_fraction`` and train seconds the runner recorded.

    python benchmarks/text_streams.py [--data-dir DIR] [--repeats 3] [--cell]

DIR defaults to $CLBENCH_DATA, else ../shared/data/CL_Benchmark next to the repository.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clbench.tasks.batching import batch_indices, padding_fraction
from clbench.tasks.text import text_stream


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    default = os.environ.get("CLBENCH_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "CL_Benchmark")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cell", action="store_true", help="also run one real cell per batching mode")
    args = ap.parse_args()
    data = args.data_dir
    print(f"data: {data}  torch threads: {torch.get_num_threads()}  cpus: {os.cpu_count()}")

    # 1. loading and tokenizing ---------------------------------------------------------------
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CLBENCH_CACHE"] = cache
        times = []
        for _ in range(args.repeats):
            s, t = timed(lambda: text_stream(data_dir=data, max_len=args.max_len))
            times.append(t)
        n_ex = sum(len(t.train) + len(t.test) for t in s.tasks)
        tokens = sum(int(t.train.lengths.sum() + t.test.lengths.sum()) for t in s.tasks)
        rows.append(("bytes", len(s.tasks), n_ex, tokens, statistics.median(times)))
        s, t = timed(lambda: text_stream(data_dir=data, max_len=args.max_len, tokenizer="bpe", vocab_size=args.vocab_size))
        tokens = sum(int(t_.train.lengths.sum() + t_.test.lengths.sum()) for t_ in s.tasks)
        rows.append((f"bpe {args.vocab_size}, train (empty cache)", len(s.tasks), n_ex, tokens, t))
        times = []
        for _ in range(args.repeats):
            s, t = timed(lambda: text_stream(data_dir=data, max_len=args.max_len, tokenizer="bpe", vocab_size=args.vocab_size))
            times.append(t)
        rows.append((f"bpe {args.vocab_size}, from cache", len(s.tasks), n_ex, tokens, statistics.median(times)))
        bpe_agnews = text_stream(data_dir=data, tasks=["agnews"], max_len=args.max_len, tokenizer="bpe", vocab_size=args.vocab_size)
        os.environ.pop("CLBENCH_CACHE")

    print(f"\nload + tokenize (max_len {args.max_len}; median of {args.repeats} except the BPE training)")
    print("| tokenizer | tasks | examples | tokens | seconds |\n|---|---|---|---|---|")
    for name, nt, ne, tok, sec in rows:
        print(f"| {name} | {nt} | {ne} | {tok} | {sec:.2f} |")

    # 2. padding fraction on agnews -------------------------------------------------------------
    byte_agnews = text_stream(data_dir=data, tasks=["agnews"], max_len=args.max_len)
    print(f"\npadding fraction, agnews train ({len(byte_agnews.tasks[0].train)} examples), batch size {args.batch_size}, mean of 5 seeds")
    print("| tokenizer | mean length | random | length, window 4 | length, window 16 | length, window 64 |\n|---|---|---|---|---|---|")
    for name, st in (("bytes", byte_agnews), (f"bpe {args.vocab_size}", bpe_agnews)):
        lengths = st.tasks[0].train.lengths
        cols = []
        for mode, window in (("random", 16), ("length", 4), ("length", 16), ("length", 64)):
            fr = [
                padding_fraction(lengths, batch_indices(lengths, args.batch_size, torch.Generator().manual_seed(s), mode, window))
                for s in range(5)
            ]
            cols.append(f"{statistics.mean(fr):.3f}")
        print(f"| {name} | {lengths.float().mean():.1f} | " + " | ".join(cols) + " |")

    # 3. a real cell per mode --------------------------------------------------------------------
    if args.cell:
        from clbench.loop import run_cell
        from clbench.suite import parse_suite

        print("\none naive cell on agnews (250 per class, 1 epoch, bytes, d_model 64, 2 layers), as recorded")
        print("| batching | padding_fraction | tokens_seen | train seconds |\n|---|---|---|---|")
        for mode in ("random", "length"):
            suite = parse_suite({
                "name": "padding", "seeds": [0],
                "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": args.max_len},
                "training": {"epochs": 1, "batch_size": args.batch_size, "batching": mode, "device": "cpu"},
                "streams": [{"name": "text", "params": {"data_dir": data, "tasks": ["agnews"], "train_per_class": 250,
                                                        "test_per_class": 50, "max_len": args.max_len}}],
                "strategies": [{"name": "naive"}],
            }, "padding.toml")
            row = run_cell(suite.cells[0]).row
            print(f"| {mode} | {row['padding_fraction']:.3f} | {row['tokens_seen']} | {row['train_seconds']:.1f} |")


if __name__ == "__main__":
    main()
