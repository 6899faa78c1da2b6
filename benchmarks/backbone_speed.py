"""MiniLM in the clbench Transformer against the reference implementation (``transformers``'
BertModel) on the same weights: forward and forward+backward time on padded batches.

Both sides run in one process, alternately, ``--repeats`` times; the table gives median
milliseconds per batch and the ratio (clbench / BertModel; below 1 is faster). On a CPU clbench's
attention is torch SDPA with the padding given as lengths; on a CUDA device it is our Triton
kernels (pass ``--device cuda``).

    python benchmarks/backbone_speed.py [--batch 16] [--tokens 64] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clbench.models.backbones import load_into, resolve
from clbench.models import ModelConfig, Transformer


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64, help="the longest sequence; lengths are drawn in [tokens/2, tokens]")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from transformers import BertModel

    device = torch.device(args.device)
    backbone = resolve("minilm")
    ours = Transformer(ModelConfig(**backbone.arch), input_kind="tokens", input_dim=backbone.input_dim, n_classes=4)
    load_into(ours, backbone)
    ref = BertModel.from_pretrained(str(backbone.folder), attn_implementation="sdpa")
    ours.to(device).train()
    ref.to(device).train()

    g = torch.Generator().manual_seed(0)
    n = args.tokens
    lengths = torch.randint(n // 2, n + 1, (args.batch,), generator=g)
    lengths[0] = n
    x = torch.randint(1000, 29000, (args.batch, n), generator=g)
    mask = torch.arange(n)[None, :] < lengths[:, None]
    x = x * mask
    x, lengths, mask = x.to(device), lengths.to(device), mask.long().to(device)

    def ours_fwd():
        with torch.no_grad():
            ours.hidden_states(x, lengths)

    def ref_fwd():
        with torch.no_grad():
            ref(input_ids=x, attention_mask=mask)

    def ours_step():
        ours.zero_grad(set_to_none=True)
        ours.hidden_states(x, lengths).square().mean().backward()

    def ref_step():
        ref.zero_grad(set_to_none=True)
        ref(input_ids=x, attention_mask=mask).last_hidden_state.square().mean().backward()

    rows = []
    for what, a, b in (("forward", ours_fwd, ref_fwd), ("forward+backward", ours_step, ref_step)):
        a(), b()  # warm up
        ta, tb = [], []
        for _ in range(args.repeats):
            ta.append(timed(a, device))
            tb.append(timed(b, device))
        rows.append((what, statistics.median(ta), statistics.median(tb)))

    print(f"MiniLM-L6 (22.6 M parameters), batch {args.batch}, up to {n} tokens (padded), {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print("| pass | clbench ms | BertModel ms | ratio |")
    print("|---|---:|---:|---:|")
    for what, a, b in rows:
        print(f"| {what} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
