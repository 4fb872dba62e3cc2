"""Shared fixtures: a tiny generated text corpus, the paper's RNN command and the fault tests' finished search."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from data.text import write_toy_corpus as write_corpus  # the tests import it from here

ROOT = Path(__file__).resolve().parent.parent

PAPER_RNN_COMMAND = (
    "--comment='rnn-train' --train_controller=True --start_training_controller=1 --start_using_fisher=5 "
    "--max_epoch=150 --shared_max_step=60 --save_epoch=30 --fisher_clip_by_norm=10.0 --alpha_fisher=60.0 "
    "--alpha_decay=1. --alpha_decay_after=15 --set_fisher_zero_per_iter=2 --policy_batch_size=1 "
    "--controller_max_step=2000 --num_blocks=12 --num_batch_per_iter=7 --alpha_decay=1. --alpha_decay_after=15 "
    "--alpha_small_scale=.0001 --reward_c=80"
)


def paper_rnn_args() -> list[str]:
    """The README command of the paper, split as a shell would split it."""
    return shlex.split(PAPER_RNN_COMMAND)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_corpus(root / "tiny")
    return root


@pytest.fixture(scope="session")
def fault_base(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch tiny search (``fault_harness.SMALL``): the run the fault tests' interrupted runs must resume
    to. Built once for the three ``test_faults_*.py`` files, whose runs are written beside it."""
    import main
    from fault_harness import argv

    log_dir = tmp_path_factory.mktemp("faults")
    assert main.main(argv(data_dir, log_dir, "base")) == 0
    return log_dir / "tiny_base"


def interrupted_copy(run: Path, name: str) -> Path:
    """A copy of a finished 3-epoch run as it would be had it stopped right after epoch 0."""
    import shutil

    copy = run.parent / name
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints"
    shutil.copy(ckpt / "epoch_0000.pt", ckpt / "latest.pt")
    for later in ("epoch_0001.pt", "epoch_0002.pt"):
        (ckpt / later).unlink()
    return copy


def metrics_without_timing(run: Path) -> list[dict]:
    """``metrics.jsonl`` records without their wall-clock fields, for run-to-run comparison."""
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_s", "elapsed_s")} for line in lines]
