"""Fault injection in what a run is given: bad, foreign or reshaped checkpoints, bad text corpora and image folders,
and its environment (the drawing program, the thread count): one line each, never a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import main
from engine import runlog
from conftest import write_corpus
from fault_harness import SMALL, Kill, argv, killed_at_checkpoint, write_folder
from utils import UserError


# ------------------------------------------------------------------------- bad checkpoints
def write_variant(fault_base: Path, tmp_path: Path, kind: str) -> Path:
    good = fault_base / "checkpoints" / "latest.pt"
    path = tmp_path / f"{kind}.pt"
    state = torch.load(good, weights_only=True)
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_config":
        torch.save({k: v for k, v in state.items() if k != "config"}, path)
    elif kind == "config_not_dict":
        torch.save({**state, "config": [1, 2]}, path)
    elif kind == "missing_tensor":
        torch.save({**state, "model": dict(list(state["model"].items())[1:])}, path)
    elif kind == "wrong_shape":
        torch.save({**state, "model": {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}}, path)
    elif kind == "not_a_dict":
        torch.save([1, 2, 3], path)
    elif kind == "other_format":
        torch.save({"format": 7}, path)
    elif kind == "foreign_pickle":
        import pickle

        path.write_bytes(pickle.dumps(Kill("payload")))
    return path


BAD_CHECKPOINTS = ["garbage", "truncated", "empty", "no_config", "config_not_dict", "missing_tensor", "wrong_shape",
                   "not_a_dict", "other_format", "foreign_pickle"]


@pytest.mark.parametrize("mode", ["derive", "test"])
@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_one_line(kind: str, mode: str, fault_base: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write_variant(fault_base, tmp_path, kind)
    extra = [f"--arch={fault_base / 'best_arch.json'}"] if mode == "test" else []
    assert main.main([f"--mode={mode}", f"--load_path={path}", "--num_gpu=0", *extra]) == 2
    assert one_error_line(capsys.readouterr().err)


def one_error_line(err: str) -> bool:
    """Whether stderr holds exactly one line besides the timestamped log lines, an ``error:`` one, and no traceback."""
    lines = [line for line in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_foreign_run_checkpoint_is_refused(fault_base: Path, data_dir: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    comment = "victim"
    run = killed_at_checkpoint(monkeypatch, fault_base, data_dir, comment, 1)
    params_before = (run / "params.json").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_bytes()
    (run / "checkpoints" / "latest.pt").write_bytes((fault_base / "checkpoints" / "latest.pt").read_bytes())
    assert main.main(argv(data_dir, fault_base.parent, comment, "--resume=True")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "belongs to run" in err and "--resume_with_new_params=True" in err
    assert (run / "params.json").read_bytes() == params_before and (run / "metrics.jsonl").read_bytes() == metrics_before


def test_other_shape_on_resume_is_refused(fault_base: Path, data_dir: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    comment = "reshaped"
    killed_at_checkpoint(monkeypatch, fault_base, data_dir, comment, 1)
    reshaped = ("--resume=True", "--shared_hid=12", "--shared_embed=12")
    assert main.main(argv(data_dir, fault_base.parent, comment, *reshaped)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "another shape" in err and "--shared_embed=12 (checkpoint: 8)" in err
    assert main.main(argv(data_dir, fault_base.parent, comment, "--resume=True", "--shared_hid=12", "--shared_embed=12",
                          "--resume_with_new_params=True")) == 2
    assert "does not fit this configuration" in capsys.readouterr().err


# ------------------------------------------------------------------------------ bad datasets
def corpus_with(tmp_path: Path, split: str, content: bytes) -> Path:
    write_corpus(tmp_path / "bad")
    (tmp_path / "bad" / f"{split}.txt").write_bytes(content)
    return tmp_path


BAD_TEXT = [
    ("train", "caf\xe9 au lait\n".encode("latin-1"), "train.txt is not UTF-8 text: byte 3 (0xe9)"),
    ("valid", b"ok words\n\xff\xfe binary", "valid.txt is not UTF-8 text: byte 9"),
    ("test", b"\x00\x01\x02\x03" * 10, "test.txt is not text: it holds a NUL byte"),
    ("train", b"", "train.txt holds no words"),
    ("valid", b"a b c\n", "valid.txt: 4 tokens are too few for batch size 4"),
    ("test", b"a\n", "test.txt: 2 tokens are too few for batch size 2"),
]


@pytest.mark.parametrize("split,content,message", BAD_TEXT)
def test_bad_text_corpus_is_one_line(split: str, content: bytes, message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = corpus_with(tmp_path, split, content)
    code = main.main([*SMALL, "--dataset=bad", f"--data_dir={data}", f"--log_dir={tmp_path / 'logs'}"])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and message in err, err


def test_image_that_fails_in_a_worker_is_one_line_naming_it(tmp_path: Path) -> None:
    from data.image import load_images
    from data.image_stream import Preprocess, iterate_split

    root = write_folder(tmp_path)
    broken = root / "shapes" / "test" / "b" / "1.png"
    data = load_images(root, "shapes", valid_size=2, seed=0)
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError) as err:
        list(iterate_split(data.test, 4, Preprocess(data, torch.device("cpu")), num_workers=1, seed=0))
    assert "\n" not in str(err.value) and str(broken) in str(err.value) and "cannot decode image" in str(err.value)


def test_empty_class_folder_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from data.image import load_images

    root = write_folder(tmp_path)
    (root / "shapes" / "train" / "zzz_empty").mkdir()
    (root / "shapes" / "test" / "zzz_empty").mkdir()
    data = load_images(root, "shapes", valid_size=2, seed=0)
    assert data.classes == ["a", "b"] and "zzz_empty" in caplog.text


# --------------------------------------------------------------------------------- environment
def test_graphviz_pure_beside_the_interpreter_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import utils

    tool = tmp_path / "bin" / "graphviz-pure"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert utils.dot_program() == str(tool)


def test_resume_on_another_thread_count_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    runlog.warn_on_thread_change({"cpu_threads": threads}, cpu)
    runlog.warn_on_thread_change({}, cpu)  # a checkpoint written before the count was recorded
    assert caplog.text == ""
    runlog.warn_on_thread_change({"cpu_threads": threads + 1}, cpu)
    assert f"checkpointed on {threads + 1}" in caplog.text and f"OMP_NUM_THREADS={threads + 1}" in caplog.text
