"""benchmarks/gpu_check.sh end to end in its CPU mode (tiny size): every phase runs, the summary comes last."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_its_pipeline_on_the_cpu(tmp_path: Path) -> None:
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils timeout")
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_SIZE": "tiny", "GPU_CHECK_OUT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = done.stdout[done.stdout.index("=== summary"):]
    for phase in ("cuda_tests", "fp32_tf32 ", "bf16 ", "eager_fp32_tf32 ", "eager_fp32_tf32_compile"):
        assert phase in summary, phase
    assert f"{'cuda_tests':24s} ok" in summary and f"{'fp32_tf32':24s} ok" in summary
    out = json.loads((tmp_path / "bench_fp32_tf32.json").read_text())
    assert out["device"] == "cpu" and out["projected_rnn_epoch_s"] > 0 and out["projected_cnn_epoch_s"] > 0
    assert "RNN command, one epoch" in (tmp_path / "fp32_tf32.log").read_text()
    assert out["rnn_step_ops"] > out["rnn_step_cell_ops"] > 0  # the launch counts are measured on the CPU too
