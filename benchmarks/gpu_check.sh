#!/usr/bin/env bash
# One prepared check of a fresh GPU machine, from the repository root, in under 8 minutes:
#   install -> the GPU -> python -m pytest -m cuda -> bench_search.py at paper size in four settings
#   (fp32 with TF32, bf16 --amp, each with and without --compile) -> a summary.
# Every phase has its own time limit and a failing phase does not stop the others.
#
#   bash benchmarks/gpu_check.sh                                   # on the GPU machine
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny bash benchmarks/gpu_check.sh   # the same pipeline, tiny, on a CPU
#
# Output: the console, plus $GPU_CHECK_OUT (default gpu_check_out/) holding each phase's log and JSON.
set -u
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-paper}
OUT=${GPU_CHECK_OUT:-gpu_check_out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
# Time limits (s): install 60 + tests 120 + 2 x 50 + 2 x 90 = 460 s at most, plus nvidia-smi.
if [ "$SIZE" = tiny ]; then  # the pipeline's smoke test: a few cheap CUDA tests, one repetition each
    BENCH=(--size tiny --reps 1 --warmup 0 --derive-samples 3 --threads 1)
    TESTS=(-m cuda -k "fused_cell_matches or wpl_on_the_device")
    LIMIT_TEST=60; LIMIT_BENCH=30; LIMIT_COMPILE=30
else
    BENCH=(--size paper --reps 3 --warmup 1 --derive-samples 100)
    TESTS=(-m cuda)
    LIMIT_TEST=120; LIMIT_BENCH=50; LIMIT_COMPILE=90
fi
SUMMARY=()
START=$(date +%s)

phase() {  # phase NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, record the outcome
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    echo; echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]} status
    case $rc in 0) status=ok ;; 124|137) status="TIMED OUT" ;; *) status="FAILED (exit $rc)" ;; esac
    SUMMARY+=("$(printf '%-18s %-18s %4ss' "$name" "$status" "$(( $(date +%s) - t0 ))")")
}

echo "=== install"
if $PY - <<'EOF' 2>/dev/null
import importlib.metadata as md, re, sys
for line in open("requirements.txt"):
    name = re.split(r"[<>=!~ ]", line.strip())[0]
    if name:
        md.version(name)
EOF
then echo "requirements.txt: every package already installed"
else timeout 60 $PY -m pip install -q -r requirements.txt || echo "pip install failed: continuing with what is installed"
fi

echo; echo "=== machine"
if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (torch.cuda.is_available() is False)")
EOF

TEST_ENV=()
[ "$DEVICE" = cpu ] && TEST_ENV=(env CUDA_TESTS_ON_CPU=1)
phase cuda_tests "$LIMIT_TEST" "${TEST_ENV[@]}" $PY -m pytest "${TESTS[@]}" -q -p no:cacheprovider tests/test_cuda.py

for variant in fp32_tf32 bf16 fp32_tf32_compile bf16_compile; do
    flags=(--device "$DEVICE" --json "$OUT/bench_$variant.json")
    [ "$DEVICE" = cuda ] && flags+=(--tf32)
    limit=$LIMIT_BENCH
    case $variant in bf16*) flags+=(--amp) ;; esac
    case $variant in *compile) flags+=(--compile); limit=$LIMIT_COMPILE ;; esac
    phase "$variant" "$limit" $PY benchmarks/bench_search.py "${BENCH[@]}" "${flags[@]}"
done

echo; echo "=== summary ($(( $(date +%s) - START ))s in all; logs and JSON in $OUT/)"
printf '%s\n' "${SUMMARY[@]}"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

rows = [("rnn_step_s", "shared batch s"), ("wpl_step_s", "+WPL s"), ("controller_step_s", "REINFORCE s"),
        ("rnn_derive_s", "RNN derive s"), ("cnn_step_s", "CNN batch s"), ("peak_gpu_mib", "peak GPU MiB"),
        ("projected_rnn_epoch_s", "RNN epoch s"), ("projected_cnn_epoch_s", "CNN epoch s")]
print("\n" + f"{'setting':20s}" + "".join(f"{label:>15s}" for _, label in rows))
for variant in ("fp32_tf32", "bf16", "fp32_tf32_compile", "bf16_compile"):
    path = Path(sys.argv[1]) / f"bench_{variant}.json"
    if not path.is_file():
        print(f"{variant:20s} (no result)")
        continue
    out = json.loads(path.read_text())
    cells = []
    for key, _ in rows:
        value = out.get(key)
        value = value["median"] if isinstance(value, dict) else value
        cells.append(f"{value:15.4g}" if isinstance(value, (int, float)) else f"{'-':>15s}")
    print(f"{variant:20s}" + "".join(cells))
print("\nEpoch projections: medians of the step times above times the counts of the paper's commands (RNN: "
      "60 x (sample + 7 WPL batches + Fisher refresh + 2 forgetting errors) + 2000 REINFORCE steps; CNN: "
      "70 x (7 batches + 8 eval batches) + 1000 x (20 eval batches + controller update)); derives are extra, "
      "see each phase's log and benchmarks/README.md.")
EOF
