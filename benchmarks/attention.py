"""Attention speed: clbench's Triton kernels against torch's scaled_dot_product_attention.

On a CUDA GPU, in one run, bf16, timed with triton.testing.do_bench (median of CUDA-event
timings after warm-up; the autotuner runs before timing):

1. dense shapes (B, H, N, D), causal and not: forward and forward+backward TFLOP/s of ours
   (dQ ``split`` and ``atomic``, see clbench.models.kernels.flash.dq_mode) and of SDPA pinned to its
   ``flash`` and ``cudnn`` backends;
2. padded batches, lengths drawn uniformly in [N/2, N]: ours against the SDPA backends that take
   a padding mask (``cudnn``, ``efficient``);
3. one training step of the clbench Transformer (bf16 autocast, AdamW), tokens per second, with
   attention on ours and on SDPA.

FLOPs follow FlashAttention's convention: forward 4·B·H·N²·D, halved when causal; backward 2.5×
the forward; forward+backward 3.5×. Padded batches are counted as if unpadded (same count for
every implementation, so the ratios are ratios of times). A backend that cannot run a case shows
"n/a" with the reason in a footnote. "max rel. gap" checks that the timed kernels give the right
answers: the largest difference between ours and the first SDPA backend that ran, over the output
and dq, dk, dv, each relative to that tensor's largest value (bf16 rounding gives about 1e-2; a
wrong kernel, about 1).

Without a GPU the script still runs: SDPA against the reference implementation on small CPU
shapes, and it says that the GPU figures are owed. ``--dry-run`` runs the GPU tables' code on
the CPU instead, kernels interpreted, at tiny shapes: it checks that the script gets through
(its numbers mean nothing), so that time on a GPU is not lost to a bug in it.

    python benchmarks/attention.py [--quick] [--dtype bf16] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from clbench.models.attention import _key_mask, reference_attention, sdpa_attention

DENSE = [(4, 32, 1024, 64), (4, 32, 4096, 64), (4, 16, 4096, 128), (1, 16, 16384, 128)]
PADDED = [(64, 8, 256, 64), (32, 8, 512, 64)]
CPU_SHAPES = [(2, 4, 256, 64), (2, 4, 512, 64)]
DEVICE = "cuda"  # the GPU tables' device (a dry run of their code can set "cpu")


def flops(b, h, n, d, causal, mode):
    f = 4 * b * h * n * n * d * (0.5 if causal else 1.0)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]


# -- timing ------------------------------------------------------------------------------------


def bench_gpu(fn) -> float:
    """Median milliseconds of ``fn`` on the GPU."""
    import triton.testing

    if DEVICE != "cuda":
        return bench_cpu(fn, repeats=1)
    fn()  # compile / autotune outside the timing
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_cpu(fn, repeats=5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- implementations ---------------------------------------------------------------------------


def sdpa_backend(name):
    """A context manager pinning SDPA to one backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name])


def impls_for(kind):
    """name -> fn(q, k, v, lengths, causal) for the GPU tables."""
    from clbench.models.kernels import flash_attention

    def ours(mode):
        def run(q, k, v, lengths, causal):
            os.environ["CLBENCH_FLASH_DQ"] = mode  # read by the backward
            return flash_attention(q, k, v, lengths=lengths, causal=causal)
        return run

    def sdpa(backend):
        def run(q, k, v, lengths, causal):
            with sdpa_backend(backend):
                if lengths is None:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                mask = _key_mask(lengths, q.shape[-2], k.shape[-2], causal, q.device)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return run

    out = {"ours (dQ split)": ours("split"), "ours (dQ atomic)": ours("atomic")}
    backends = ("flash", "cudnn") if kind == "dense" else ("cudnn", "efficient")
    if DEVICE != "cuda":  # a dry run: the GPU backends do not run on the CPU; math gives the gaps
        backends += ("math",)
    for backend in backends:
        out[f"sdpa {backend}"] = sdpa(backend)
    return out


def time_case(fn, q, k, v, lengths, causal):
    """(forward ms, backward ms, forward+backward ms); raises if the implementation cannot run."""
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(qg, kg, vg, lengths, causal)
    do = torch.randn_like(out)
    fwd = bench_gpu(lambda: fn(qg, kg, vg, lengths, causal))
    bwd = bench_gpu(lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True))

    def step():
        o = fn(qg, kg, vg, lengths, causal)
        torch.autograd.grad(o, (qg, kg, vg), do)

    return fwd, bwd, bench_gpu(step)


def outputs(fn, q, k, v, lengths, causal, do):
    """(out, dq, dk, dv) of one implementation."""
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(qg, kg, vg, lengths, causal)
    return (out.detach(), *torch.autograd.grad(out, (qg, kg, vg), do))


def relative_gap(ours, base):
    """Largest |ours - base| of the output and its gradients, each over the largest |base|."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()
               for a, b in zip(ours, base))


# -- tables ------------------------------------------------------------------------------------


def print_table(title, headers, rows, notes=()):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) if i else str(h).ljust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for r in rows:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for n in notes:
        print(f"  {n}")


def tf(x):
    return "n/a" if x is None else f"{x:.1f}"


def attention_tables(shapes, kind, dtype, causals):
    """Rows of one table: per case and implementation, TFLOP/s and ours against each SDPA backend."""
    impls = impls_for(kind)
    baselines = [name for name in impls if name.startswith("sdpa")]
    headers = ["(B, H, N, D)", "mask", "implementation", "fwd TFLOP/s", "bwd TFLOP/s", "fwd+bwd TFLOP/s",
               "bwd/fwd"] + [f"fwd+bwd / {name}" for name in baselines] + ["max rel. gap"]
    rows, notes = [], []
    for (b, h, n, d) in shapes:
        for causal in causals:
            g = torch.Generator(device=DEVICE).manual_seed(0)
            q, k, v = (torch.randn(b, h, n, d, device=DEVICE, dtype=dtype, generator=g) for _ in range(3))
            lengths = None
            if kind == "padded":
                lengths = torch.randint(n // 2, n + 1, (b,), device=DEVICE, generator=g)
            tflops = {}
            for name, fn in impls.items():
                try:
                    times = time_case(fn, q, k, v, lengths, causal)
                    tflops[name] = [flops(b, h, n, d, causal, m) / (t * 1e9)
                                    for m, t in zip(("fwd", "bwd", "fwd+bwd"), times)]
                except Exception as e:  # noqa: BLE001 - a backend that cannot run this case
                    tflops[name] = None
                    notes.append(f"{name} at {(b, h, n, d)} causal={causal}: {str(e).splitlines()[0][:100]}")
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
            # a check that the figures are of right answers: ours against the first SDPA backend
            # that ran, output and gradients, on these inputs
            base = next((name for name in baselines if tflops.get(name)), None)
            gaps = {}
            if base:
                do = torch.randn(q.shape, device=DEVICE, dtype=dtype, generator=g)
                expected = outputs(impls[base], q, k, v, lengths, causal, do)
                for name in impls:
                    if tflops.get(name) and not name.startswith("sdpa"):
                        gaps[name] = f"{relative_gap(outputs(impls[name], q, k, v, lengths, causal, do), expected):.1e}"
                del expected
            for name, t in tflops.items():
                row = [f"{(b, h, n, d)}", "causal" if causal else "full", name]
                if t is None:
                    rows.append(row + ["n/a"] * (len(headers) - 3))
                    continue
                row += [tf(t[0]), tf(t[1]), tf(t[2]), f"{t[1] / t[0]:.2f}"]
                for base_name in baselines:
                    ok = tflops.get(base_name) and not name.startswith("sdpa")
                    row.append(f"{t[2] / tflops[base_name][2]:.2f}x" if ok else "")
                row.append(f"{gaps[name]} vs {base}" if name in gaps else "")
                rows.append(row)
            del q, k, v
    return headers, rows, notes


def model_step(dtype, impl, steps=10, B=32, N=512, d_model=512, n_heads=8, n_layers=4):
    """(positions/s, valid tokens/s, ms per step) of a training step of the clbench Transformer
    with attention ``impl`` (CLBENCH_ATTENTION)."""
    from clbench.models import ModelConfig, Transformer

    os.environ["CLBENCH_ATTENTION"] = impl
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=n_layers, max_len=N)
        model = Transformer(cfg, input_kind="tokens", input_dim=1000, n_classes=10).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randint(0, 1000, (B, N), device=DEVICE, generator=g)
        y = torch.randint(0, 10, (B,), device=DEVICE, generator=g)
        lengths = torch.randint(N // 2, N + 1, (B,), device=DEVICE, generator=g)

        def step():
            with torch.autocast(DEVICE, dtype=dtype):
                loss = F.cross_entropy(model(x, lengths), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):  # autotuning and allocator warm-up
            step()
        sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        ms = (time.perf_counter() - t0) * 1e3 / steps
    finally:
        del os.environ["CLBENCH_ATTENTION"]
    return B * N / (ms / 1e3), int(lengths.sum()) / (ms / 1e3), ms


MODEL = dict(B=32, N=512, d_model=512, n_heads=8, n_layers=4)


def gpu(args, dense=DENSE, padded=PADDED, model=MODEL, steps=10):
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    where = torch.cuda.get_device_name() if DEVICE == "cuda" else "dry run on the CPU, kernels interpreted"
    print(f"GPU: {where}, torch {torch.__version__}, triton {triton.__version__}, {args.dtype}")
    print_table("Dense attention", *attention_tables(dense[:1] if args.quick else dense, "dense", dtype, (False, True)))
    print_table("Padded batches (lengths uniform in [N/2, N]; FLOPs counted as if unpadded)",
                *attention_tables(padded[:1] if args.quick else padded, "padded", dtype, (False,)))

    from clbench.models.kernels import flash
    print("\nautotuner choices (kernel: key -> config):")
    for name, kern in flash._KERNELS.items():
        for key, cfg in getattr(kern, "cache", {}).items():
            print(f"  {name}: {key} -> {cfg}")

    rows = []
    for label, impl, dq in (("ours (dQ split)", "triton", "split"), ("ours (dQ atomic)", "triton", "atomic"),
                            ("sdpa", "sdpa", "split")):
        os.environ["CLBENCH_FLASH_DQ"] = dq
        try:
            tok, valid, ms = model_step(dtype, impl, steps=steps, **model)
            rows.append([label, f"{ms:.2f}", f"{tok:,.0f}", f"{valid:,.0f}"])
        except Exception as e:  # noqa: BLE001
            rows.append([label, "n/a", "n/a", str(e).splitlines()[0][:80]])
    os.environ.pop("CLBENCH_FLASH_DQ", None)
    print_table(f"clbench Transformer training step (d_model {model['d_model']}, {model['n_heads']} heads, "
                f"{model['n_layers']} layers, B {model['B']}, N {model['N']}, lengths in [N/2, N], AdamW, autocast)",
                ["attention", "ms/step", "positions/s", "valid tokens/s"], rows)


def dry_run(args):
    """The GPU tables' code on the CPU, the kernels interpreted, at tiny shapes."""
    global DEVICE
    DEVICE = "cpu"
    gpu(args, dense=[(1, 2, 40, 32)], padded=[(2, 2, 40, 32)],
        model=dict(B=2, N=24, d_model=32, n_heads=2, n_layers=1), steps=1)


def cpu(args):
    print(f"No CUDA GPU: CPU only (torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "timings on a shared machine are indicative).")
    rows = []
    shapes = CPU_SHAPES[:1] if args.quick else CPU_SHAPES
    for (b, h, n, d) in shapes:
        for causal in (False, True):
            for padded in (False, True):
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
                lengths = torch.randint(n // 2, n + 1, (b,), generator=g) if padded else None
                for name, fn in (("sdpa", sdpa_attention), ("reference", reference_attention)):
                    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
                    fwd = bench_cpu(lambda: fn(qg, kg, vg, lengths, causal))

                    def step():
                        fn(qg, kg, vg, lengths, causal).sum().backward()

                    both = bench_cpu(step)
                    rows.append([f"{(b, h, n, d)}", ("causal" if causal else "full") + (", padded" if padded else ""),
                                 name, f"{fwd:.2f}", f"{both:.2f}",
                                 f"{flops(b, h, n, d, causal, 'fwd') / (fwd * 1e6):.1f}",
                                 f"{flops(b, h, n, d, causal, 'fwd+bwd') / (both * 1e6):.1f}"])
    print_table("Attention on the CPU, fp32", ["(B, H, N, D)", "mask", "implementation", "fwd ms", "fwd+bwd ms",
                                               "fwd GFLOP/s", "fwd+bwd GFLOP/s"], rows)
    print("\nOwed: every GPU figure (ours vs SDPA flash/cudnn/efficient in TFLOP/s, padded batches, the model's\n"
          "tokens/s). Run this script on a CUDA GPU (an H200 for the targets in docs/kernels.md).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one shape of each kind")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--dry-run", action="store_true",
                    help="run the GPU tables' code on the CPU, interpreted, at tiny shapes (checks the script)")
    args = ap.parse_args(argv)
    if args.dry_run:
        if "triton" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
            print("--dry-run needs Triton's interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        dry_run(args)
        return 0
    if os.environ.get("TRITON_INTERPRET"):
        print("TRITON_INTERPRET is set: the kernels would be interpreted, not timed. Unset it.", file=sys.stderr)
        return 2
    if torch.cuda.is_available():
        gpu(args)
    else:
        cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
