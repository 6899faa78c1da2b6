"""Attention on a GPU: clbench's Triton kernels, checked and timed against torch's SDPA.

One step or several, in this order (all by default), each writing one JSONL row per result to
OUT/results.jsonl as it is measured (benchmarks/gpu_checks.sh runs them one by one, each under
its own time limit):

* ``versions``: Python, torch, CUDA, Triton, the GPU, and what Triton needs at run time (a C
  compiler and Python.h, to build its launcher);
* ``gate``: the correctness gate, first: a long run of full key blocks and a partial last one
  (N = 1531, mixed lengths 1, N − 74 and N, causal; head dims 64 and 128; split and atomic dQ;
  bf16, then descriptors off and fp32 as time allows), one candidate per kernel, against float64.
  It fails (exit status 1) on a relative gap over 5e-2 or a non-finite value;
* ``compile``: every autotuning candidate the timing steps will tune, compiled in parallel (one
  process per share of them) at the benchmark's very layouts, into Triton's cache; a row per
  candidate with its registers, spills, shared memory and HGMMA count (attention_compile.py's
  table, under this machine's Triton);
* ``dense``, ``padded``: forward, backward and forward+backward TFLOP/s of ours (atomic and split
  dQ; in bf16 also without tensor descriptors; padded also skipping padded query rows) and of SDPA
  pinned to its flash, cuDNN and efficient backends, in bf16 and fp32, with each result's largest
  relative gap to the first SDPA backend that ran (bf16 rounding gives about 1e-2; a wrong kernel
  about 1). The autotuner times each candidate for 20 ms, not 100;
* ``model``: a training step of the clbench Transformer (d_model 512, 8 heads, 4 layers, batch
  32 × 512 tokens, lengths in [N/2, N], AdamW) as the loop runs it (``training.precision``
  bf16 or fp32), in tokens per second, attention on ours and on SDPA.

FLOPs follow FlashAttention's convention: forward 4·B·H·N²·D, halved when causal; backward 2.5×
that, forward+backward 3.5×; padded batches counted as if unpadded (same count for everyone). A
backend that cannot run a case gets a row with its reason. An exception in our code prints its
full traceback (the first one of a step also in OUT/<step>.traceback.txt) and goes in its row.

Without a GPU the script prints SDPA against the reference on small CPU shapes. ``--dry-run``
runs every step's code on the CPU instead, kernels interpreted, at tiny shapes (its numbers mean
nothing): so that time on a GPU is not lost to a bug in this script.

    python3 benchmarks/attention.py [STEP ...] [--out DIR] [--dry-run] [--jobs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

STEPS = ("versions", "gate", "compile", "dense", "padded", "model")
DENSE = [(4, 32, 4096, 64), (4, 16, 4096, 128), (1, 16, 16384, 128)]
PADDED = [(64, 8, 256, 64), (32, 8, 512, 64)]
MODEL = dict(B=32, N=512, d_model=512, n_heads=8, n_layers=4)
GATE_N = 1531
FP32_MAX_N = 4096  # fp32 rows stop here: (1, 16, 16384, 128) alone would take a minute in fp32
CPU_SHAPES = [(2, 4, 256, 64), (2, 4, 512, 64)]
DRY = dict(dense=[(1, 2, 40, 32)], padded=[(2, 2, 40, 32)], model=dict(B=2, N=24, d_model=32, n_heads=2, n_layers=1),
           gate_n=70)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEVICE = "cuda"  # "cpu" in a dry run
GATE_LIMIT = 0.05
COMPILE_S = 85  # compiling stops here (the device script gives the step 100 s)


def flops(b, h, n, d, causal, mode):
    f = 4 * b * h * n * n * d * (0.5 if causal else 1.0)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]


# -- output ------------------------------------------------------------------------------------


class Results:
    """OUT/results.jsonl, a row per result as it comes; the first traceback of each step."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.traced: set[str] = set()

    def row(self, step: str, **fields) -> dict:
        row = {"step": step, **fields}
        if self.folder:
            with open(self.folder / "results.jsonl", "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        shown = {k: v for k, v in row.items() if k != "traceback"}
        print("  ".join(f"{k}={_short(v)}" for k, v in shown.items()), flush=True)
        return row

    def failure(self, step: str) -> dict:
        """The exception being handled, as row fields; its traceback printed (and kept) in full."""
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        if self.folder and step not in self.traced:
            self.traced.add(step)
            (self.folder / f"{step}.traceback.txt").write_text(tb)
        return {"error": tb.strip().splitlines()[-1][:300], "traceback": tb}


def _short(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return v


@contextlib.contextmanager
def env(**values):
    """Environment variables set (None: unset) inside the block."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# -- timing ------------------------------------------------------------------------------------


def bench(fn, warmup=10, rep=40) -> float:
    """Median milliseconds of ``fn`` (on the CPU of a dry run: one timed call)."""
    if DEVICE != "cuda":
        return bench_cpu(fn, repeats=1)
    import triton.testing

    fn()  # compile / autotune outside the timing
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def bench_cpu(fn, repeats=5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def short_autotuning():
    """The kernels' autotuner timing each candidate for 20 ms instead of 100 (on a GPU)."""
    from clbench.models.kernels import flash

    if DEVICE == "cuda":
        import triton.testing

        def do_bench(fn, quantiles=None, **_):
            return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)

        flash._KERNELS = flash.autotuned_kernels(do_bench=do_bench)


# -- implementations ---------------------------------------------------------------------------


def sdpa_backend(name):
    """A context manager pinning SDPA to one backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name])


def impls_for(kind, dtype):
    """label -> (fn(q, k, v, lengths, causal), environment) for a table: SDPA's backends first."""
    from clbench.models.attention import _key_mask
    from clbench.models.kernels import flash_attention

    def sdpa(backend):
        def run(q, k, v, lengths, causal):
            with sdpa_backend(backend):
                if lengths is None:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(lengths, q.shape[-2], k.shape[-2],
                                                                                   causal, q.device))
        return run

    def ours(skip=False):
        return lambda q, k, v, lengths, causal: flash_attention(q, k, v, lengths=lengths, causal=causal,
                                                                skip_padded_queries=skip)

    backends = ("flash", "cudnn", "efficient") if kind == "dense" else ("cudnn", "efficient")
    if DEVICE != "cuda":  # a dry run: the GPU's backends do not run on the CPU; math gives the gaps
        backends += ("math",)
    out = {f"sdpa {b}": (sdpa(b), {}) for b in backends}
    out["ours (dQ atomic)"] = (ours(), {"CLBENCH_FLASH_DQ": "atomic"})
    out["ours (dQ split)"] = (ours(), {"CLBENCH_FLASH_DQ": "split"})
    if kind == "dense" and dtype == "bf16":
        out["ours (dQ atomic, no TMA)"] = (ours(), {"CLBENCH_FLASH_DQ": "atomic", "CLBENCH_FLASH_TMA": "0"})
    if kind == "padded":
        out["ours (dQ atomic, padded rows skipped)"] = (ours(skip=True), {"CLBENCH_FLASH_DQ": "atomic"})
    return out


def inputs(b, h, n, d, dtype, padded, seed=0):
    """q, k, v ~ N(0, 1), lengths uniform in [N/2, N] (padded) or None, and dO (zero on padded
    query rows, as the model's pooling gives)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k, v, do = (torch.randn(b, h, n, d, device=DEVICE, dtype=DTYPES[dtype], generator=g) for _ in range(4))
    lengths = torch.randint(n // 2, n + 1, (b,), device=DEVICE, generator=g) if padded else None
    if padded:
        do = do.masked_fill(torch.arange(n, device=DEVICE)[None, None, :, None] >= lengths[:, None, None, None], 0.0)
    return q, k, v, lengths, do


def outputs(fn, q, k, v, lengths, causal, do):
    """(out, dq, dk, dv) of one implementation."""
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(qg, kg, vg, lengths, causal)
    return (out.detach(), *torch.autograd.grad(out, (qg, kg, vg), do))


def gaps(ours, base, lengths=None):
    """Largest |ours - base| of the output and each gradient, over the largest |base|; query rows
    past a sequence's length left out of the output's."""
    names = ("out", "dq", "dk", "dv")
    out = {}
    for name, a, b in zip(names, ours, base):
        a, b = a.float(), b.float()
        if name == "out" and lengths is not None:
            keep = torch.arange(a.shape[2], device=a.device)[None, None, :, None] < lengths[:, None, None, None]
            a, b = a * keep, b * keep
        out[name] = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    return out


def run_once(fn, kind, shape, dtype, causal):
    """One forward and backward of ``fn`` on a table's case."""
    q, k, v, lengths, do = inputs(*shape, dtype, kind == "padded")
    return outputs(fn, q, k, v, lengths, causal, do)


def time_case(fn, q, k, v, lengths, causal, do):
    """(forward ms, backward ms, forward+backward ms); raises if the implementation cannot run."""
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(qg, kg, vg, lengths, causal)
    fwd = bench(lambda: fn(qg, kg, vg, lengths, causal))
    bwd = bench(lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True))

    def step():
        o = fn(qg, kg, vg, lengths, causal)
        torch.autograd.grad(o, (qg, kg, vg), do)

    return fwd, bwd, bench(step)


# -- steps -------------------------------------------------------------------------------------


def step_versions(res, args):
    import importlib.util
    import platform
    import shutil
    import sysconfig

    import triton

    from clbench.models.kernels import flash

    row = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               triton=triton.__version__, cpus=os.cpu_count(), interpreted=flash.INTERPRET,
               tensor_descriptors=flash.HAS_DESCRIPTORS,
               c_compiler=next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), ""),
               python_h=os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
               **{m: importlib.util.find_spec(m) is not None for m in ("pytest", "transformers", "peft")})
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        row.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1),
                   sms=p.multi_processor_count)
    res.row("versions", **row)
    return 0


def step_gate(res, args):
    """The correctness gate: exit status 1 on a relative gap over 5e-2 or a non-finite value."""
    from clbench.models.attention import reference_attention
    from clbench.models.kernels import flash, flash_attention

    n = DRY["gate_n"] if args.dry_run else GATE_N
    cases = [("bf16", d, mode, None) for d in (64, 128) for mode in ("split", "atomic")]
    cases += [("bf16", 128, "atomic", "0"), ("fp32", 64, "atomic", None)]  # as time allows
    start, failed = time.perf_counter(), 0
    for i, (dtype, d, mode, tma) in enumerate(cases):
        if i >= 4 and not args.dry_run and time.perf_counter() - start > 35:
            res.row("gate", dtype=dtype, d=d, dq=mode, tma=tma or "auto", skipped="time")
            continue
        if not flash.INTERPRET:  # one candidate per kernel (the first of its class): no tuning
            cls = "fp32" if dtype == "fp32" else 64 if d <= 64 else 128
            flash._KERNELS = flash.autotuned_kernels(fwd=flash.FWD_CONFIGS[cls][:1], dkdv=flash.DKDV_CONFIGS[cls][:1],
                                                     dq=flash.DQ_CONFIGS[cls][:1])
        t0 = time.perf_counter()
        mid = n - 74 if n > 148 else n - 5
        fields = dict(dtype=dtype, d=d, dq=mode, tma=tma or "auto", n=n, causal=True, lengths=[1, mid, n])
        try:
            q, k, v, _, do = inputs(3, 2, n, d, dtype, padded=False, seed=d)
            lengths = torch.tensor([1, mid, n], device=DEVICE)
            with env(CLBENCH_FLASH_DQ=mode, CLBENCH_FLASH_TMA=tma):
                ours = outputs(lambda *a: flash_attention(*a[:3], lengths=a[3], causal=a[4]), q, k, v, lengths, True, do)
            ref = outputs(lambda *a: reference_attention(*a[:3], a[3], a[4]), q.double(), k.double(), v.double(),
                          lengths, True, do.double())
            gap = gaps(ours, ref)
            finite = all(bool(torch.isfinite(t).all()) for t in ours)
            ok = finite and max(gap.values()) <= GATE_LIMIT
            res.row("gate", **fields, ok=ok, finite=finite, max_gap=max(gap.values()), gaps=gap,
                    seconds=time.perf_counter() - t0, tma_failed=flash._DESCRIPTORS_FAILED)
        except Exception:  # noqa: BLE001 - a failure of ours: reported in full
            ok = False
            res.row("gate", **fields, ok=False, seconds=time.perf_counter() - t0, **res.failure("gate"))
        failed += not ok
    return 1 if failed else 0


def _workload(args):
    """Every launch of the timing steps' kernels, in order: (kind, shape, dtype, causal)."""
    dense = DRY["dense"] if args.dry_run else DENSE
    padded = DRY["padded"] if args.dry_run else PADDED
    for dtype in DTYPES:
        for shape in dense:
            if dtype == "fp32" and shape[2] > FP32_MAX_N:
                continue
            for causal in (False, True):
                yield "dense", shape, dtype, causal
        for shape in padded:
            yield "padded", shape, dtype, False


def step_compile(res, args):
    """Every candidate of every kernel launch that the timing steps make, compiled in parallel."""
    import multiprocessing

    jobs = args.jobs or (2 if args.dry_run else max(1, (os.cpu_count() or 2) - 1))
    t0 = time.perf_counter()
    deadline = time.time() + COMPILE_S
    # a Pool, not an executor: interrupted (the step's time limit), it terminates its workers
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        done = pool.map(_compile_share, [(i, jobs, vars(args), deadline) for i in range(jobs)])
    rows = [r for share in done for r in share]
    res.row("compile", summary=True, processes=jobs, compiled=sum("seconds" in r and "error" not in r for r in rows),
            errors=sum("error" in r for r in rows), spilling=sum(bool(r.get("spills")) for r in rows),
            left_for_later=sum(r.get("left", 0) for r in rows), seconds=time.perf_counter() - t0)
    return 1 if any("error" in r for r in rows) else 0


def _compile_share(job):
    """One process's share: run the timing steps' launches with a launcher that compiles the
    candidates numbered ``share`` modulo ``shares`` (in launch order, each once) instead."""
    share, shares, argd, deadline = job
    args = argparse.Namespace(**argd)
    global DEVICE
    DEVICE = "cpu" if args.dry_run else "cuda"
    from clbench.models.kernels import flash

    res = Results(args.out)
    kernels = flash.autotuned_kernels()
    seen: dict = {}
    rows, left = [], [0]

    def launch(name, n, bh, kargs, meta):
        kernel = kernels[name]
        for cfg in kernel.early_config_prune(kernel.configs, dict(zip(kernel.arg_names, kargs)), **meta):
            # what Triton specialises a compiled kernel on: not N_BUCKET's value, but whether each
            # integer (H, N_Q, N_K) is a multiple of 16 (the timed tensors' strides all are)
            ints = dict(zip(kernel.arg_names, kargs))
            key = (name, tuple(str(a.dtype) for a in kargs if isinstance(a, torch.Tensor)),
                   *((k, v) for k, v in meta.items() if k != "N_BUCKET"),
                   *(ints[k] % 16 == 0 for k in ("H", "N_Q", "N_K")), flash._shape(cfg))
            if key in seen:
                continue
            seen[key] = len(seen)
            if seen[key] % shares != share:
                continue
            if time.time() > deadline:  # what is left compiles when the timing step needs it
                left[0] += 1
                continue
            what = dict(kernel=name, dtype=str(kargs[0].dtype).replace("torch.", ""), d=meta["HEAD_DIM"],
                        causal=meta["CAUSAL"], lengths=meta["HAS_LENGTHS"], skip=meta["SKIP_PADDED"],
                        tma=meta["USE_DESC"], config="{}x{} w{} s{}".format(*flash._shape(cfg)))
            t0 = time.perf_counter()
            try:
                compiled = kernel.fn.warmup(*kargs, grid=(1,), **meta, **cfg.all_kwargs())
                row = res.row("compile", **what, seconds=time.perf_counter() - t0, **_counts(compiled))
            except Exception:  # noqa: BLE001
                row = res.row("compile", **what, seconds=time.perf_counter() - t0, **res.failure(f"compile-{share}"))
            rows.append(row)

    flash._launch = launch  # the launches' results are garbage: only what they compile counts

    class Delta:  # the small delta kernel, not tuned: compiled once, by the first share
        def __getitem__(self, grid):
            return lambda *a, **kw: delta.warmup(*a, grid=grid, **kw) if share == 0 else None

    delta, flash._attn_bwd_delta = flash._attn_bwd_delta, Delta()
    work = [(label, variables, lambda fn=fn, c=c: run_once(fn, *c))
            for c in _workload(args) for label, (fn, variables) in impls_for(c[0], c[2]).items()
            if label.startswith("ours")]
    model = DRY["model"] if args.dry_run else MODEL
    work += [(f"model {precision} {mode}", {"CLBENCH_ATTENTION": "triton", "CLBENCH_FLASH_DQ": mode},
              lambda p=precision: model_step(p, steps=0, **model))
             for precision, mode in (("bf16", "atomic"), ("bf16", "split"), ("fp32", "atomic"))]
    for label, variables, run in work:
        try:
            with env(**variables):
                run()
        except Exception:  # noqa: BLE001
            rows.append(res.row("compile", workload=label, **res.failure(f"compile-{share}")))
    return rows + [{"left": left[0]}]


def _counts(compiled) -> dict:
    """Registers, spills, shared memory and HGMMA count of a compiled kernel (None when
    interpreting: nothing is compiled)."""
    if compiled is None:
        return {"compiled": False}
    out = {"smem_kb": compiled.metadata.shared / 1024}
    with contextlib.suppress(Exception):
        compiled._init_handles()
        out.update(regs=compiled.n_regs, spills=compiled.n_spills)
    with contextlib.suppress(Exception):
        out["hgmma"] = compiled.asm["sass"].count("HGMMA")
    return out


def attention_table(res, args, kind):
    """Rows of the dense or padded table: per case and implementation, times and TFLOP/s, ours
    against each SDPA backend, and the relative gap of ours to the first SDPA backend that ran."""
    short_autotuning()
    failed = 0
    for k, (b, h, n, d), dtype, causal in _workload(args):
        if k != kind:
            continue
        q, k_, v, lengths, do = inputs(b, h, n, d, dtype, kind == "padded")
        case = dict(shape=[b, h, n, d], dtype=dtype, causal=causal)
        sdpa_ms, expected, base = {}, None, None
        for label, (fn, variables) in impls_for(kind, dtype).items():
            ours = label.startswith("ours")
            try:
                with env(**variables):
                    ms = time_case(fn, q, k_, v, lengths, causal, do)
                    got = outputs(fn, q, k_, v, lengths, causal, do) if (ours or expected is None) else None
            except Exception:  # noqa: BLE001 - an SDPA backend that cannot run this case; ours must
                if ours:
                    failed += 1
                    res.row(kind, **case, impl=label, **res.failure(kind))
                else:
                    res.row(kind, **case, impl=label, unavailable=traceback.format_exc().strip().splitlines()[-1][:200])
                continue
            tflops = {m: flops(b, h, n, d, causal, m) / (t * 1e9) for m, t in zip(("fwd", "bwd", "fwd+bwd"), ms)}
            row = dict(**case, impl=label, ms=dict(zip(("fwd", "bwd", "fwd+bwd"), ms)), tflops=tflops,
                       bwd_over_fwd=tflops["bwd"] / tflops["fwd"])
            if not ours:
                sdpa_ms[label] = ms[2]
                if expected is None:
                    expected, base = got, label
            else:
                row["vs"] = {s: t / ms[2] for s, t in sdpa_ms.items()}  # fwd+bwd speed over SDPA's
                if expected is not None:
                    gap = gaps(got, expected, lengths)
                    row.update(gap=max(gap.values()), gap_to=base)
            res.row(kind, **row)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    from clbench.models.kernels import flash

    res.row(kind, chosen={name: {str(key): str(cfg) for key, cfg in getattr(kern, "chosen", {}).items()}
                          for name, kern in flash._KERNELS.items()})
    return 1 if failed else 0


def model_step(precision, impl_env=None, steps=10, B=32, N=512, d_model=512, n_heads=8, n_layers=4, backend=None):
    """(positions/s, valid tokens/s, ms per step, implementations that ran) of a training step of
    the clbench Transformer as the loop runs it (autocast for bf16), AdamW."""
    from clbench.loop import autocast
    from clbench.models import ModelConfig, Transformer
    from clbench.models.attention import recording

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=n_layers, max_len=N)
    model = Transformer(cfg, input_kind="tokens", input_dim=1000, n_classes=10).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randint(0, 1000, (B, N), device=DEVICE, generator=g)
    y = torch.randint(0, 10, (B,), device=DEVICE, generator=g)
    lengths = torch.randint(N // 2, N + 1, (B,), device=DEVICE, generator=g)
    device = torch.device(DEVICE)

    def step():
        with autocast(precision, device):
            loss = F.cross_entropy(model(x, lengths), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    pin = sdpa_backend(backend) if backend else contextlib.nullcontext()
    with env(**(impl_env or {})), pin, recording() as used:
        step()  # autotuning and allocator warm-up
        step()
        sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
    ms = (time.perf_counter() - t0) * 1e3 / max(steps, 1)
    return B * N / (ms / 1e3), int(lengths.sum()) / (ms / 1e3), ms, ",".join(sorted(used))


def step_model(res, args):
    short_autotuning()
    model = DRY["model"] if args.dry_run else MODEL
    runs = [("bf16", "ours (dQ atomic)", {"CLBENCH_ATTENTION": "triton", "CLBENCH_FLASH_DQ": "atomic"}, None),
            ("bf16", "ours (dQ split)", {"CLBENCH_ATTENTION": "triton", "CLBENCH_FLASH_DQ": "split"}, None),
            ("bf16", "sdpa efficient", {"CLBENCH_ATTENTION": "sdpa"}, "efficient"),
            ("bf16", "sdpa cudnn", {"CLBENCH_ATTENTION": "sdpa"}, "cudnn"),
            ("fp32", "sdpa (the default)", {}, None),
            ("fp32", "ours (dQ atomic)", {"CLBENCH_ATTENTION": "triton", "CLBENCH_FLASH_DQ": "atomic"}, None)]
    if args.dry_run:  # no GPU backends on a CPU
        runs = [r for r in runs if r[3] is None]
    failed = 0
    for precision, label, variables, backend in runs:
        fields = dict(precision=precision, impl=label, **model)
        try:
            tok, valid, ms, used = model_step(precision, variables, steps=1 if args.dry_run else 10, backend=backend,
                                              **model)
            res.row("model", **fields, ms=ms, positions_per_s=tok, valid_tokens_per_s=valid, attention=used)
        except Exception:  # noqa: BLE001
            failed += label.startswith("ours")
            res.row("model", **fields, **res.failure("model"))
    return 1 if failed else 0


def cpu(args):
    """No GPU: SDPA against the reference on small CPU shapes."""
    from clbench.models.attention import reference_attention, sdpa_attention

    print(f"No CUDA GPU: CPU only (torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "timings on a shared machine are indicative).")
    print(f"{'(B, H, N, D)':16s} {'mask':15s} {'implementation':10s} {'fwd ms':>8s} {'fwd+bwd ms':>10s}")
    for (b, h, n, d) in CPU_SHAPES[:1] if args.quick else CPU_SHAPES:
        for causal in (False, True):
            for padded in (False, True):
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
                lengths = torch.randint(n // 2, n + 1, (b,), generator=g) if padded else None
                for name, fn in (("sdpa", sdpa_attention), ("reference", reference_attention)):
                    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
                    fwd = bench_cpu(lambda: fn(qg, kg, vg, lengths, causal))
                    both = bench_cpu(lambda: fn(qg, kg, vg, lengths, causal).sum().backward())
                    mask = ("causal" if causal else "full") + (", padded" if padded else "")
                    print(f"{str((b, h, n, d)):16s} {mask:15s} {name:10s} {fwd:8.2f} {both:10.2f}")
    print("\nOwed: every GPU figure. Run benchmarks/gpu_checks.sh on a CUDA GPU (docs/kernels.md).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", nargs="*", metavar="STEP", help=f"one or more of {', '.join(STEPS)} (default: all)")
    ap.add_argument("--out", help="folder for results.jsonl and tracebacks (default: print only)")
    ap.add_argument("--dry-run", action="store_true",
                    help="every step's code on the CPU, interpreted, at tiny shapes (checks the script)")
    ap.add_argument("--jobs", type=int, default=0, help="compile processes (default: one per CPU but one)")
    ap.add_argument("--quick", action="store_true", help="without a GPU: the first CPU shape only")
    args = ap.parse_args(argv)
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}: the steps are {', '.join(STEPS)}")
    global DEVICE
    if args.dry_run:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("--dry-run needs Triton's interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        DEVICE = "cpu"
    elif os.environ.get("TRITON_INTERPRET"):
        print("TRITON_INTERPRET is set: the kernels would be interpreted, not timed. Unset it.", file=sys.stderr)
        return 2
    elif not torch.cuda.is_available():
        cpu(args)
        return 0
    res = Results(args.out)
    status = 0
    for step in args.steps or STEPS:
        fn = {"versions": step_versions, "gate": step_gate, "compile": step_compile, "model": step_model,
              "dense": lambda r, a: attention_table(r, a, "dense"),
              "padded": lambda r, a: attention_table(r, a, "padded")}[step]
        try:
            status |= fn(res, args)
        except Exception:  # noqa: BLE001 - the step's own code failed: say where, go on
            res.row(step, **res.failure(step))
            status = 1
        if step == "gate" and status:
            print("the correctness gate failed: nothing else is worth timing", file=sys.stderr)
            return status
    return status


if __name__ == "__main__":
    sys.exit(main())
