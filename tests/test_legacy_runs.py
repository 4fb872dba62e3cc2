"""Runs written before a modelling option existed keep their behaviour (config.LEGACY_VALUES).

``fixtures/legacy_rnn`` was written by the code before the paper-code defaults (DropConnect on node 0
only, output batch norm, input biases); a resume, a derive and a test of it must give what that code
gave, not what today's defaults would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import main
from conftest import metrics_without_timing, write_corpus
from engine.runlog import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_rnn"


@pytest.fixture()
def legacy(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "logs" / "tiny_legacy"
    shutil.copytree(FIXTURE, run)
    data = tmp_path / "data"
    write_corpus(data / "tiny")  # the corpus the run was trained on (same seed)
    return run, data


def test_legacy_checkpoint_has_the_old_model_and_tests_and_derives_as_before(legacy: tuple[Path, Path]) -> None:
    run, data = legacy
    state = load_checkpoint(run / "checkpoints" / "epoch_0001.pt", torch.device("cpu"))
    assert "rnn_output_norm" not in state["config"] and not any(k.startswith(("output_norm", "b_x0")) for k in state["model"])
    recorded_test = json.loads((FIXTURE / "test_results.json").read_text())
    recorded_arch = json.loads((FIXTURE / "best_arch.json").read_text())
    (run / "checkpoints" / "latest.pt").write_bytes((run / "checkpoints" / "epoch_0001.pt").read_bytes())

    assert main.main(["--mode=test", f"--load_path={run}", f"--data_dir={data}"]) == 0
    result = json.loads((run / "test_results.json").read_text())
    assert result["test_ppl"] == pytest.approx(recorded_test["test_ppl"], rel=1e-6)
    assert result["test_tokens"] == recorded_test["test_tokens"]

    assert main.main(["--mode=derive", f"--load_path={run}", "--derive_num_sample=3", f"--data_dir={data}"]) == 0
    derived = json.loads((run / "derived_arch.json").read_text())
    assert derived["arch"] == recorded_arch["arch"]
    assert derived["score"] == pytest.approx(recorded_arch["score"], rel=1e-6)


def test_legacy_run_resumes_as_before(legacy: tuple[Path, Path]) -> None:
    """Resumed after epoch 0 (latest = epoch 0, one metrics line), epoch 1 repeats the recorded one."""
    run, data = legacy
    recorded = metrics_without_timing(run)
    (run / "checkpoints" / "latest.pt").write_bytes((run / "checkpoints" / "epoch_0000.pt").read_bytes())
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    argv = ["--resume=True", "--comment=legacy", "--dataset=tiny", "--max_epoch=2", "--num_gpu=0",
            "--use_tensorboard=False", f"--log_dir={run.parent}", f"--data_dir={data}"]
    assert main.main(argv) == 0
    resumed = metrics_without_timing(run)
    assert len(resumed) == 2 and resumed[0] == recorded[0]
    for key, value in recorded[1].items():
        if isinstance(value, float):  # recorded on another CPU: AVX2 and AVX-512 kernels differ in the last digits
            assert resumed[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert resumed[1][key] == value, key
