"""A run directory as colleagues on a shared machine see it, and as the README describes it.

Files written atomically (a ``mkstemp`` file renamed into place) used to stay 0600 whatever the umask; every
file of a run now has the mode ``open()`` gives, ``0o666 & ~umask``. The README's lists of metrics and
TensorBoard tags are checked against what two real (tiny) runs write, one per kind of sampler figures.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # type: ignore[import-untyped]

import main
from utils import atomic_write_bytes, current_umask, save_json

TINY = ["--dataset=tiny", "--comment=modes", "--num_gpu=0", "--max_epoch=1", "--shared_max_step=2",
        "--num_batch_per_iter=1", "--train_controller=True", "--start_training_controller=0", "--controller_max_step=2",
        "--start_using_fisher=0", "--shared_embed=8", "--shared_hid=8", "--batch_size=4", "--test_batch_size=2",
        "--num_blocks=3", "--derive_num_sample=2", "--forgetting_eval_batches=1", "--save_epoch=1"]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny search and its test mode, under umask 022 (the common default on shared machines)."""
    logs = tmp_path_factory.mktemp("logs")
    with umask(0o022):
        assert main.main([*TINY, f"--data_dir={data_dir}", f"--log_dir={logs}"]) == 0
        assert main.main(["--mode=test", f"--load_path={logs / 'tiny_modes'}", f"--data_dir={data_dir}",
                          "--num_gpu=0"]) == 0
    return logs / "tiny_modes"


@pytest.fixture(scope="module")
def evolution_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same search with the evolution sampler, which writes its own figures instead of the controller's."""
    logs = tmp_path_factory.mktemp("logs")
    assert main.main([*TINY, "--sampler=evolution", "--evolution_population=3", f"--data_dir={data_dir}",
                      f"--log_dir={logs}"]) == 0
    return logs / "tiny_modes"


@pytest.fixture(scope="module")
def nao_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same search with NAO, two epochs with a round each (the held-out accuracy exists from the second)."""
    logs = tmp_path_factory.mktemp("logs")
    assert main.main([*TINY, "--sampler=nao", "--max_epoch=2", "--nao_pool=6", "--nao_top_k=2", "--nao_new=2",
                      "--nao_random=2", "--nao_round_every=1", "--nao_controller_epochs=2", "--nao_embed=8", "--nao_hid=8",
                      "--nao_mlp_hid=8", f"--data_dir={data_dir}", f"--log_dir={logs}"]) == 0
    return logs / "tiny_modes"


# ------------------------------------------------------------------------------------ modes
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_an_atomic_write_gives_the_mode_open_would(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        assert current_umask() == mask
        save_json(tmp_path / "atomic.json", {"a": 1})
        atomic_write_bytes(tmp_path / "atomic.bin", lambda f: f.write(b"x"))
        (tmp_path / "plain.txt").write_text("x")
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~mask
    for name in ("atomic.json", "atomic.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.bin", "atomic.json", "plain.txt"]  # no temp left


def test_every_file_of_a_run_is_readable_by_others_under_umask_022(run_dir: Path) -> None:
    files = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*") if p.is_file()}
    for name in ("params.json", "metrics.jsonl", "train.log", "best_arch.json", "test_results.json",
                 "checkpoints/latest.pt", "checkpoints/epoch_0000.pt"):
        assert files.get(name) == 0o644, (name, oct(files.get(name, 0)))
    assert any(name.startswith("events.out.tfevents") for name in files)
    assert {name: oct(mode) for name, mode in files.items() if mode != 0o644} == {}


# ---------------------------------------------------------------------------- the README
def readme_row(first_cell: str) -> str:
    """The README's row of 'What a run leaves' whose first cell is ``first_cell``."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, first_cell
    return rows[0]


def expand(code: str) -> set[str]:
    """``shared/{loss,ce}`` -> ``{shared/loss, shared/ce}`` (one level of braces)."""
    match = re.fullmatch(r"([^{}]*)\{([^{}]*)\}([^{}]*)", code)
    return {match.group(1) + part + match.group(3) for part in match.group(2).split(",")} if match else {code}


def metric_keys(run: Path) -> set[str]:
    return set().union(*(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()))


def tensorboard_tags(run: Path) -> set[str]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return set(events.Tags()["scalars"]) | set(events.Tags()["images"])


def test_readme_lists_exactly_the_metrics_the_runs_write(run_dir: Path, evolution_dir: Path, nao_dir: Path) -> None:
    written = metric_keys(run_dir) | metric_keys(evolution_dir) | metric_keys(nao_dir)
    listed = {c for c in re.findall(r"`([^`]+)`", readme_row("`metrics.jsonl`")) if re.fullmatch(r"[a-z][a-z0-9_]*", c)}
    assert written - listed == set(), "metrics.jsonl keys missing from the README"
    assert listed - written == set(), "README lists metrics no run writes"


def test_readme_lists_exactly_the_tensorboard_tags_the_runs_write(run_dir: Path, evolution_dir: Path,
                                                                  nao_dir: Path) -> None:
    written = tensorboard_tags(run_dir) | tensorboard_tags(evolution_dir) | tensorboard_tags(nao_dir)
    listed = set().union(*(expand(c) for c in re.findall(r"`([^`]+)`", readme_row("`events.out.tfevents.*`"))))
    listed = {tag for tag in listed if "/" in tag}
    assert written - listed == set(), "TensorBoard tags missing from the README"
    assert listed - written == set(), "README lists tags no run writes"


def test_a_downloaded_corpus_follows_the_umask_too(tmp_path: Path) -> None:
    from data.text import download_file

    source = tmp_path / "source.txt"
    source.write_text(" a b <eos>\n" * 100)
    dest = tmp_path / "datasets" / "ptb" / "train.txt"
    with umask(0o022):
        download_file(source.as_uri(), dest)
    assert dest.read_text() == source.read_text()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_a_corpus_left_in_the_old_default_folder_is_pointed_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from data.text import load_corpus
    from utils import UserError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mycorpus").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (tmp_path / "data" / "mycorpus" / f"{split}.txt").write_text("a b\n")
    with pytest.raises(UserError, match="no dataset folder datasets/mycorpus"):
        load_corpus("datasets", "mycorpus")
    assert "--data_dir=data reads it" in caplog.text
    assert not (tmp_path / "datasets").exists()  # nothing made by looking
