"""Checkpoint format 2 and the one-time converter of format-1 runs (engine/convert.py, --mode=convert).

A format-1 checkpoint is built here from a real run, the way the code before format 2 wrote it (the
sampler's and regulariser's parts at the top level, no ``kind``); a resume from it is one line naming
the converter, and once converted it resumes exactly like the uninterrupted run.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import main
from conftest import interrupted_copy, metrics_without_timing
from engine.checkpoint import FORMAT
from engine.convert import REGULARIZER_KEY, upgrade

SMALL = ["--dataset=tiny", "--max_epoch=3", "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2",
         "--train_controller=True", "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4",
         "--test_batch_size=2", "--num_blocks=3", "--derive_num_sample=2", "--num_gpu=0", "--forgetting_eval_batches=1",
         "--alpha_fisher=5", "--use_tensorboard=False", "--policy_batch_size=2"]


def argv(data_dir: Path, log_dir: Path, comment: str, *extra: str) -> list[str]:
    return [*SMALL, f"--data_dir={data_dir}", f"--log_dir={log_dir}", f"--comment={comment}", *extra]


def as_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-2 search checkpoint as format 1 wrote it: no kind, the sampler's and WPL's parts at the top."""
    rest = {k: v for k, v in state.items() if k not in ("format", "kind", "sampler", "regularizer")}
    return {"format": 1, **rest, **state["sampler"], REGULARIZER_KEY: state["regularizer"]}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]


@pytest.fixture(scope="module")
def base(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("format")
    assert main.main(argv(data_dir, log_dir, "base")) == 0
    return log_dir / "tiny_base"


def test_a_format_1_run_is_one_line_then_converted_resumes_like_the_uninterrupted_run(
        base: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = interrupted_copy(base, "tiny_old")
    for path in (run / "checkpoints").glob("*.pt"):
        torch.save(as_format_1(torch.load(path, weights_only=True)), path)
    capsys.readouterr()

    assert main.main(argv(data_dir, base.parent, "old", "--resume=True")) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "format 1" in lines[0] and "--mode=convert" in lines[0]
    assert len(metrics_without_timing(run)) == 3  # nothing rewritten by the refused resume

    assert main.main(["--mode=convert", f"--load_path={run}", "--num_gpu=0"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"format 1 -> {FORMAT} (search)") == 2  # latest.pt and epoch_0000.pt
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["kind"] == "search" and "controller" in state["sampler"] and REGULARIZER_KEY not in state
    assert main.main(["--mode=convert", f"--load_path={run}", "--num_gpu=0"]) == 0  # a second time: nothing to do
    assert capsys.readouterr().out.count(f"already format {FORMAT}") == 2

    assert main.main(argv(data_dir, base.parent, "old", "--resume=True")) == 0
    assert metrics_without_timing(run) == metrics_without_timing(base)


@pytest.mark.parametrize("bad", ["garbage", "empty", "foreign", "format_99", "planted_pickle"])
def test_a_foreign_or_corrupt_file_is_one_line(bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latest.pt"
    marker = tmp_path / "ran"
    writes = {"garbage": lambda: path.write_bytes(b"not a checkpoint at all"),
              "empty": lambda: path.write_bytes(b""),
              "foreign": lambda: torch.save({"weights": torch.zeros(3)}, path),
              "format_99": lambda: torch.save({"format": 99, "epoch": 0, "config": {}}, path),
              "planted_pickle": lambda: path.write_bytes(pickle.dumps(Planted(marker)))}
    writes[bad]()
    before = path.read_bytes()
    assert main.main(["--mode=convert", f"--load_path={path}", "--num_gpu=0"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert path.read_bytes() == before and not marker.exists()


class Planted:
    """A pickle that would create a file if it were unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_continual_and_pathnet_checkpoints_move_their_keys() -> None:
    """Format 1 kept continual learning's network under ``current`` and stamped an empty model; format 2 holds
    the network under ``model`` and PathNet (no network between units) holds none."""
    weights = {"trunk.0.weight": torch.ones(2, 2)}
    old = {"format": 1, "kind": "continual", "epoch": 1, "model": {}, "config": {"a": 1}, "records": [{"task": 0}],
           "runs": {"ewc/0": {"R": [[1.0]]}}, "current": {"key": "ewc/0", "model": weights, "optim": {}, "reg": {}}}
    new = upgrade(old)
    assert new["format"] == FORMAT and new["model"] is weights
    assert new["current"] == {"key": "ewc/0", "optim": {}, "reg": {}} and new["records"] == old["records"]
    pathnet = upgrade({"format": 1, "kind": "pathnet", "epoch": 2, "model": {}, "config": {}, "runs": [1, 2]})
    assert pathnet == {"format": FORMAT, "kind": "pathnet", "epoch": 2, "config": {}, "runs": [1, 2]}
