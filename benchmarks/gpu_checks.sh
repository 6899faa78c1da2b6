#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run of at most eight minutes, on a machine with
# python3, torch and Triton but no clbench install and no network. From the repository root:
#
#   benchmarks/gpu_checks.sh OUT [--dry-run]
#
# OUT gets, as they are measured: results.jsonl (one JSON row per result, a "script" row per
# step), <step>.log (each step's output), <step>.traceback.txt (the first full traceback of a
# step that failed), summary.txt. The exit status is 0 when every step was ok (or skipped). Steps, in order, each under its own limit (seconds) within the whole
# budget (GPU_CHECKS_S, 480):
#
#   versions   30   Python, torch, CUDA, Triton, the GPU, a C compiler for Triton's launcher
#   gate       60   the correctness gate (N = 1531, mixed lengths, causal, head dims 64/128, split
#                   and atomic dQ, against float64); a relative gap over 5e-2 or a non-finite
#                   value stops the run here
#   compile   100   every autotuning candidate the timing will tune, compiled in parallel at the
#                   timed layouts (registers, spills, shared memory, HGMMA per candidate)
#   time      170   dense and padded attention, fp32 and bf16, ours against SDPA flash, cuDNN and
#                   efficient (benchmarks/attention.py dense padded)
#   model      45   a training step of the clbench Transformer, bf16 and fp32, ours and SDPA
#   tests    rest   tests/test_kernels.py compiled on the GPU, -x (skipped without pytest)
#
# --dry-run runs every step's code on the CPU, the kernels in Triton's interpreter, at tiny
# shapes (a test runs it), so that GPU time is not lost to a bug here.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_checks.sh OUT [--dry-run]}
dry=${2:-}
if [ -n "$dry" ] && [ "$dry" != "--dry-run" ]; then
    echo "usage: benchmarks/gpu_checks.sh OUT [--dry-run]" >&2
    exit 2
fi
if [ ! -f bench/models/kernels/flash.py ]; then
    echo "run benchmarks/gpu_checks.sh from the repository root" >&2
    exit 2
fi
mkdir -p "$out"
budget=${GPU_CHECKS_S:-480}

# import clbench from this tree: its package folders gathered under one name, as pyproject maps them
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir "$shim/clbench"
for entry in bench/*; do ln -s "$PWD/$entry" "$shim/clbench/"; done
for sub in plugins strategies tasks results; do ln -sfn "$PWD/$sub" "$shim/clbench/$sub"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset CLBENCH_ATTENTION CLBENCH_FLASH_DQ CLBENCH_FLASH_TMA CLBENCH_SKIP_PADDED_QUERIES
if [ -n "$dry" ]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi

summary=()
failed=0
run_step() {  # name, limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS - 5))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        record "$name" "skipped: the budget is spent" 0
        return 0
    fi
    echo "== $name (at most $limit s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]} how=ok
    [ "$rc" -ne 0 ] && how="failed (exit $rc)"
    [ "$rc" -eq 124 ] && how="cut at $limit s"
    record "$name" "$how" $((SECONDS - start))
    return "$rc"
}
record() {  # name, result, seconds
    case $2 in ok|skipped*) ;; *) failed=1 ;; esac
    printf '{"step": "script", "name": "%s", "result": "%s", "seconds": %d}\n' "$1" "$2" "$3" >> "$out/results.jsonl"
    summary+=("$(printf '%-9s %-30s %4d s' "$1" "$2" "$3")")
}
finish() {
    echo
    echo "step      result                          time   (rows: $out/results.jsonl)"
    printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
    for tb in "$out"/*.traceback.txt; do
        if [ -f "$tb" ]; then
            echo
            echo "== first traceback of $(basename "$tb" .traceback.txt):"
            cat "$tb"
        fi
    done
}

bench=(python3 benchmarks/attention.py --out "$out" ${dry:+--dry-run})
if [ -z "$dry" ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/machine.txt"
    if ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "no CUDA GPU here: nothing to check (benchmarks/gpu_checks.sh OUT --dry-run checks this script)" >&2
        exit 2
    fi
fi
run_step versions 30 "${bench[@]}" versions
if ! run_step gate 60 "${bench[@]}" gate; then
    echo "the correctness gate failed: stopping (the rest would time wrong answers)" >&2
    finish
    exit 1
fi
run_step compile 100 "${bench[@]}" compile
run_step time 170 "${bench[@]}" dense padded
run_step model 45 "${bench[@]}" model
if ! python3 -c "import pytest" 2>/dev/null; then
    record tests "skipped: pytest is not installed" 0
elif [ -n "$dry" ]; then
    run_step tests 120 python3 -m pytest -x -q -p no:cacheprovider tests/test_kernels.py -m "not slow" -k "N17-D32"
else
    run_step tests $((budget - SECONDS - 5)) env CLBENCH_TEST_DEVICE=cuda \
        python3 -m pytest -x -q -p no:cacheprovider tests/test_kernels.py -m "not slow"
fi
finish
exit "$failed"
