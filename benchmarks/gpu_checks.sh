#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run, most important first, each under its own time
# limit and logged as it goes (a run cut short keeps what it printed):
#
#   attention   benchmarks/attention.py: TFLOP/s of our kernels against SDPA's backends, padded
#               batches, the model's training step, and each timed case's answers checked
#               against SDPA ("max rel. gap")
#   tests       tests/test_kernels.py compiled on the GPU (the default selection)
#   candidates  every autotuning candidate of each kernel against float64 (slow test)
#   backbone    benchmarks/backbone_speed.py --device cuda: MiniLM in clbench vs BertModel
#   matrix      the rest of tests/test_kernels.py's slow tests (the full correctness matrix)
#
#   benchmarks/gpu_checks.sh [LOG_DIR] [STEP ...]      (LOG_DIR: gpu-checks; STEPs: all, in order)
#
# Run it from the repository root with clbench installed (pip install -e '.[dev]'). Limits in
# seconds: ATTENTION_S (420), TESTS_S (180), CANDIDATES_S (180), BACKBONE_S (120), MATRIX_S
# (600). The first run compiles and tunes the kernels (minutes); Triton keeps both in its cache
# directory for the next.
set -uo pipefail
logs=${1:-gpu-checks}
shift || true
steps=${*:-attention tests candidates backbone matrix}
for step in $steps; do
    case $step in
        attention|tests|candidates|backbone|matrix) ;;
        *) echo "unknown step '$step' (attention, tests, candidates, backbone, matrix)" >&2; exit 2 ;;
    esac
done
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET CLBENCH_ATTENTION CLBENCH_FLASH_DQ

summary=()
run_step() {  # name, limit, command...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.txt"
    local rc=${PIPESTATUS[0]}
    local how="ok"
    [ "$rc" -eq 124 ] && how="cut at ${limit} s"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && how="failed (exit $rc)"
    summary+=("$(printf '%-10s %-22s %5d s   %s' "$name" "$how" $((SECONDS - start)) "$logs/$name.txt")")
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$logs/machine.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    2>&1 | tee -a "$logs/machine.txt"
if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA GPU here: nothing to check (python benchmarks/attention.py alone gives the CPU table)" >&2
    exit 2
fi

for step in $steps; do
    case $step in
        attention) run_step attention "${ATTENTION_S:-420}" python benchmarks/attention.py ;;
        tests) run_step tests "${TESTS_S:-180}" env CLBENCH_TEST_DEVICE=cuda \
                   python -m pytest -q -x tests/test_kernels.py -m "not slow" ;;
        candidates) run_step candidates "${CANDIDATES_S:-180}" env CLBENCH_TEST_DEVICE=cuda \
                   python -m pytest -q -x tests/test_kernels.py -k test_every_autotuning_candidate_on_a_gpu ;;
        matrix) run_step matrix "${MATRIX_S:-600}" env CLBENCH_TEST_DEVICE=cuda \
                   python -m pytest -q tests/test_kernels.py -m slow -k "not test_every_autotuning_candidate" ;;
        backbone) run_step backbone "${BACKBONE_S:-120}" python benchmarks/backbone_speed.py --device cuda ;;
    esac
done

echo
echo "step       result                  time    log"
printf '%s\n' "${summary[@]}" | tee "$logs/summary.txt"
