#!/usr/bin/env bash
# One prepared check of a fresh GPU machine, from the repository root, in under 8 minutes:
#   install -> the GPU -> python -m pytest -m cuda -> bench_search.py at paper size in five settings
#   (fp32 with TF32, the RNN cell as CUDA graphs and the controller on the CPU, the defaults; the same
#   with each node's elementwise work compiled into one kernel, --fused-graphs; the eager cell with
#   the controller on the GPU, the defaults before; and the CNN part
#   twice more: one inference batch per forward (--cnn-eval-images 0) and without cuDNN's autotuning,
#   the CNN defaults before) -> a summary with kernels and launches per step, GPU busy fraction and
#   projections.
# It runs with whatever torch the machine has (offline GPU images cannot install the pinned one)
# and says which.
# Every phase has its own time limit and a failing phase does not stop the others.
#
#   bash benchmarks/gpu_check.sh                                   # on the GPU machine
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny bash benchmarks/gpu_check.sh   # the same pipeline, tiny, on a CPU
#   GPU_CHECK_INSTALL=0 ...   # skip the pip step (offline machines: an install attempt only waits out its limit)
#
# Output: the console, plus $GPU_CHECK_OUT (default gpu_check_out/) holding each phase's log and JSON.
set -u
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-paper}
OUT=${GPU_CHECK_OUT:-gpu_check_out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
# Time limits (s): install 60 + tests 180 + 70 + 90 + 80 + 2 x 45 = 570 s at most, plus nvidia-smi
# (the fused setting compiles its three Triton kernels first).
if [ "$SIZE" = tiny ]; then  # the pipeline's smoke test: a few cheap CUDA tests, one repetition each
    BENCH=(--size tiny --reps 1 --warmup 0 --derive-samples 3 --threads 1)
    TESTS=(-m cuda -k "fused_cell_matches or wpl_on_the_device")
    LIMIT_TEST=60; LIMIT_BENCH=30; LIMIT_FUSED=60; LIMIT_EAGER=30; LIMIT_CNN=30
else
    BENCH=(--size paper --reps 3 --warmup 1 --derive-samples 100)
    TESTS=(-m cuda)
    LIMIT_TEST=180; LIMIT_BENCH=70; LIMIT_FUSED=90; LIMIT_EAGER=80; LIMIT_CNN=45
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
    SUMMARY+=("$(printf '%-24s %-18s %4ss' "$name" "$status" "$(( $(date +%s) - t0 ))")")
}

echo "=== install"
if [ "${GPU_CHECK_INSTALL:-1}" = 0 ]; then echo "install: skipped (GPU_CHECK_INSTALL=0: an offline machine, packages carried in)"
elif $PY - <<'EOF' 2>/dev/null
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
import re
import torch
pinned = next((l.split("==")[1].strip() for l in open("requirements.txt") if re.match(r"torch==", l)), "?")
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| pinned:", pinned, "" if torch.__version__.split("+")[0] == pinned else "(not installed here: this run uses the machine's torch)")
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (torch.cuda.is_available() is False)")
EOF

TEST_ENV=()
[ "$DEVICE" = cpu ] && TEST_ENV=(env CUDA_TESTS_ON_CPU=1)
phase cuda_tests "$LIMIT_TEST" "${TEST_ENV[@]}" $PY -m pytest "${TESTS[@]}" -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_graphs.py tests/test_cuda_cnn.py

VARIANTS=(fp32_tf32 fused_fp32_tf32 eager_fp32_tf32 cnn_one_batch cnn_no_autotune)
for variant in "${VARIANTS[@]}"; do
    flags=(--device "$DEVICE" --json "$OUT/bench_$variant.json")
    [ "$DEVICE" = cuda ] && flags+=(--tf32)
    limit=$LIMIT_BENCH
    case $variant in fused*) flags+=(--fused-graphs --parts rnn); limit=$LIMIT_FUSED ;; esac
    case $variant in eager*) flags+=(--eager-cell --controller-device model --reps 2); limit=$LIMIT_EAGER ;; esac
    case $variant in cnn_*) flags+=(--parts cnn); limit=$LIMIT_CNN ;; esac
    case $variant in cnn_one_batch) flags+=(--cnn-eval-images 0) ;; cnn_no_autotune) flags+=(--no-cudnn-benchmark) ;; esac
    phase "$variant" "$limit" $PY -m benchmarks.bench_search "${BENCH[@]}" "${flags[@]}"
done

echo; echo "=== summary ($(( $(date +%s) - START ))s in all; logs and JSON in $OUT/)"
printf '%s\n' "${SUMMARY[@]}"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

rows = [("rnn_step_s", "shared batch s"), ("rnn_step_kernels", "kernels"), ("rnn_step_launches", "launches"),
        ("rnn_step_gpu_busy", "GPU busy"), ("wpl_step_s", "+WPL s"), ("controller_step_s", "REINFORCE s"),
        ("controller_step_no_overlap_s", "no overlap s"),
        ("controller_step_launches", "launches"), ("controller_step_syncs", "syncs"), ("rnn_derive_s", "RNN derive s"),
        ("graph_train_kernel_ops", "graph train"), ("graph_infer_kernel_ops", "graph infer"),
        ("graph_fused_train_kernel_ops", "fused train"), ("graph_fused_infer_kernel_ops", "fused infer"),
        ("cnn_step_s", "CNN batch s"), ("cnn_eval_batch_s", "CNN eval s"), ("cnn_reward_s", "CNN reward s"),
        ("cnn_reward_kernels", "kernels"), ("peak_gpu_mib", "peak GPU MiB"), ("projected_rnn_epoch_s", "RNN epoch s"),
        ("projected_cnn_epoch_s", "CNN epoch s")]
print("\n" + f"{'setting':24s}" + "".join(f"{label:>13s}" for _, label in rows))
for variant in ("fp32_tf32", "fused_fp32_tf32", "eager_fp32_tf32", "cnn_one_batch", "cnn_no_autotune"):
    path = Path(sys.argv[1]) / f"bench_{variant}.json"
    if not path.is_file():
        print(f"{variant:24s} (no result)")
        continue
    out = json.loads(path.read_text())
    cells = []
    for key, _ in rows:
        value = out.get(key)
        value = value["median"] if isinstance(value, dict) else value
        cells.append(f"{value:13.4g}" if isinstance(value, (int, float)) else f"{'-':>13s}")
    print(f"{variant:24s}" + "".join(cells))
print("\nEpoch projections: medians of the step times above times the counts of the paper's commands (RNN: "
      "60 x (sample + 7 WPL batches + Fisher refresh + 2 forgetting errors) + 2000 REINFORCE steps; CNN: "
      "70 x (7 batches + 2 errors of 4 eval batches) + 1000 x (reward of 20 eval batches + controller update), "
      "the eval batches run together up to --cnn_eval_images per forward); derives are extra, "
      "see each phase's log and benchmarks/README.md. kernels/launches/syncs: one shared batch and one REINFORCE "
      "step under torch.profiler (launches: host-side kernel, graph and copy launches); GPU busy: their kernel time "
      "over the unprofiled step time; graph train/infer: the computing operators one BPTT slice's CUDA graphs hold "
      "(counted eagerly, as on a CPU); fused_*: --fused-graphs (--cuda_graph_fusion), RNN part only. eager_*: the cell eager and the controller on the GPU (the defaults before "
      "--cuda_graphs and --controller_device); cnn_*: CNN part only, one eval batch per forward or without "
      "cudnn.benchmark.")
EOF
