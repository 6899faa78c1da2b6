"""What the attention kernels compile to on a Hopper GPU, measured without one.

Compiles every autotuning candidate of each kernel (clbench.models.kernels.flash) for sm_90 with
Triton's own compiler and ptxas, specialised as a launch on contiguous tensors would be (unit
strides constant; pointers, other strides and N multiples of 16, as for every shape that
benchmarks/attention.py times), and prints per candidate:
registers per thread, stack bytes and local loads/stores (spills), shared memory, and the count
of Hopper tensor-core instructions (HGMMA), older ones (HMMA) and asynchronous global→shared
copies (LDGSTS) and TMA loads (UTMALDG) in the SASS. A candidate whose shared memory exceeds the
227 KB a block may take is one the autotuner will skip. No GPU is needed; timings come from benchmarks/attention.py.

    python benchmarks/attention_compile.py [--dtype bf16] [--head-dims 64 128] [--jobs 2] [--tma on|off|both]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

KERNELS = ("fwd", "dkdv", "dkdv_atomic", "dq")


def compile_one(job):
    """Compile one (kernel, config, variant) for sm_90; returns a row of the table."""
    kernel, dtype, d, causal, lengths, tma, (bm, bn, warps, stages) = job
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from clbench.models.kernels import flash

    fn = {"fwd": flash._attn_fwd, "dkdv": flash._attn_bwd_dkdv, "dkdv_atomic": flash._attn_bwd_dkdv,
          "dq": flash._attn_bwd_dq}[kernel]
    consts = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), CAUSAL=causal, HAS_LENGTHS=lengths,
                  SKIP_PADDED=False, BF16_IN_FP32=False, PRECISION="tf32x3" if dtype == "fp32" else "tf32",
                  USE_DESC=tma, BLOCK_M=bm, BLOCK_N=bn)
    if kernel.startswith("dkdv"):
        consts["DQ_ATOMIC"] = kernel == "dkdv_atomic"
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name.startswith("stride_") and name.endswith("d"):
            consts[name] = 1  # the JIT turns an argument equal to 1 into a constant
        if name in consts:
            signature[name] = "constexpr"
            continue
        if name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"):
            signature[name] = f"*{dtype}"
        elif name in ("LSE", "DELTA", "DQ_ACC"):
            signature[name] = "*fp32"
        elif name == "Lengths":
            signature[name] = "*i64"  # the model's
        elif name in ("qk_scale", "sm_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        if signature[name].startswith("*") or name.startswith("stride_") or name in ("N_Q", "N_K", "N_BUCKET"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # as the JIT marks multiples of 16
    row = dict(kernel=kernel, dtype=dtype, d=d, causal=causal, lengths=lengths, tma=tma,
               config=f"{bm}x{bn} w{warps} s{stages}")
    try:
        k = triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=warps, num_stages=stages))
    except Exception as e:  # noqa: BLE001 - report, don't stop the table
        return {**row, "error": str(e).splitlines()[0][:80]}
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True).stdout
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-sass", f.name],
                              capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", usage, re.S)
    return {**row, "regs": int(m.group(1)), "stack": int(m.group(2)), "smem_kb": k.metadata.shared / 1024,
            "spills": sass.count("LDL") + sass.count("STL"), "hgmma": sass.count("HGMMA"),
            "hmma": sass.count("HMMA"), "ldgsts": sass.count("LDGSTS"), "utmaldg": sass.count("UTMALDG")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tma", default="on", choices=["on", "off", "both"],
                    help="tiles loaded through tensor descriptors (the Hopper default), pointers, or both")
    ap.add_argument("--masked-only", action="store_true", help="only causal with lengths (the most code)")
    args = ap.parse_args(argv)

    from clbench.models.kernels import flash

    configs = {"fwd": flash.FWD_CONFIGS, "dkdv": flash.DKDV_CONFIGS, "dkdv_atomic": flash.DKDV_CONFIGS,
               "dq": flash.DQ_CONFIGS}
    masks = [(True, True)] if args.masked_only else [(c, ln) for c in (False, True) for ln in (False, True)]
    tmas = {"on": [True], "off": [False], "both": [False, True]}[args.tma]
    if not flash.HAS_DESCRIPTORS:
        tmas = [False]
    jobs = [(kern, args.dtype, d, causal, lengths, tma, cfg)
            for kern in args.kernels for d in args.head_dims for causal, lengths in masks for tma in tmas
            for cfg in configs[kern]["fp32" if args.dtype == "fp32" else 64 if d <= 64 else 128]]
    print(f"{'kernel':12s} {'dtype':5s} {'D':>4s} {'causal':6s} {'lengths':7s} {'tma':5s} {'config':15s} "
          f"{'regs':>4s} {'stack':>5s} {'spills':>6s} {'smem KB':>7s} {'HGMMA':>5s} {'HMMA':>4s} {'LDGSTS':>6s} "
          f"{'UTMALDG':>7s}")
    with ProcessPoolExecutor(args.jobs) as pool:
        for r in pool.map(compile_one, jobs):
            head = (f"{r['kernel']:12s} {r['dtype']:5s} {r['d']:>4d} {str(r['causal']):6s} {str(r['lengths']):7s} "
                    f"{str(r['tma']):5s} {r['config']:15s}")
            if "error" in r:
                print(f"{head} compile error: {r['error']}")
                continue
            flag = "  > 227 KB: skipped by the autotuner" if r["smem_kb"] > 227 else ""
            print(f"{head} {r['regs']:>4d} {r['stack']:>5d} {r['spills']:>6d} {r['smem_kb']:>7.0f} "
                  f"{r['hgmma']:>5d} {r['hmma']:>4d} {r['ldgsts']:>6d} {r['utmaldg']:>7d}{flag}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
