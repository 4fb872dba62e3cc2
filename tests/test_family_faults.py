"""Issue 31's faults that need more than a command line: signals, NaN, a full disk, a refused folder.

The continual and PathNet experiments stop on SIGTERM with the search's line (what the checkpoint holds and
the exact resume command, which then finishes the run); a non-finite state is never saved as a continual
checkpoint; continual checkpoints load with ``weights_only=True``; a full disk while PathNet draws, and
folders the process may not write, are one line in every mode.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
from pathlib import Path
from typing import Any

import family_setups as fs
import pytest
import torch
from family_harness import CONTINUAL, PATHNET, RETRAIN, SEARCH, TOY, call, write_mnist

from experiments.continual import run as continual
from experiments.pathnet import run as pathnet_run


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root / "mnist")
    shutil.copytree(data_dir / "tiny", root / "tiny")
    return root


def signal_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, at: int, signum: int) -> None:
    """Send ``signum`` to this process when ``owner.name`` is called for the ``at``-th time (1-based)."""
    original, calls = getattr(owner, name), []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def resume_argv(line: str) -> list[str]:
    """The argv of the ``resume with: python main.py ...`` command in a stop line."""
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["python", "main.py"]
    return command[2:]


@pytest.mark.parametrize("mode,signum", [("continual", signal.SIGTERM), ("pathnet", signal.SIGINT)])
def test_a_signal_says_what_was_kept_and_the_command_that_finishes_the_run(
        mode: str, signum: int, mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = CONTINUAL if mode == "continual" else [*PATHNET, "--seeds=2"]
    argv = [*base, f"--data_dir={mnist}", f"--log_dir={tmp_path}", "--comment=sig"]
    if mode == "continual":
        signal_on_call(monkeypatch, continual, "train_task", 3, signum)  # during the third task
    else:
        signal_on_call(monkeypatch, pathnet_run, "run_pair", 2, signum)  # during the second seed
    stopped = call("main", argv)
    assert stopped.code == 128 + signum and "Traceback" not in stopped.err
    lines = [line for line in stopped.err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1, stopped.err
    assert ("holds 2 finished task(s)" if mode == "continual" else "holds 1 finished (pair, seed) run(s)") in lines[0]
    monkeypatch.undo()
    resumed = call("main", resume_argv(lines[0]))
    assert resumed.code == 0, resumed.err[-2000:]
    run = tmp_path / ("split_mnist_sig" if mode == "continual" else "pathnet_sig")
    assert (run / f"{mode}_results.json").is_file()


def test_continual_checkpoints_load_with_weights_only(mnist: Path, tmp_path: Path) -> None:
    assert call("main", [*CONTINUAL, f"--data_dir={mnist}", f"--log_dir={tmp_path}", "--comment=w"]).code == 0
    state = torch.load(tmp_path / "split_mnist_w" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["kind"] == "continual" and len(state["records"]) == 2 * 5


def test_a_nonfinite_continual_state_is_never_saved(mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, calls = continual.train_task, []

    def poisoned(model: Any, *args: Any, **kwargs: Any) -> None:
        original(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(iter(model.parameters())).fill_(float("nan"))

    monkeypatch.setattr(continual, "train_task", poisoned)
    result = call("main", [*CONTINUAL, f"--data_dir={mnist}", f"--log_dir={tmp_path}", "--comment=n"])
    assert result.code == 2 and "non-finite" in result.err and "Traceback" not in result.err
    assert "(the last finite state) is kept" in result.err
    state = torch.load(tmp_path / "split_mnist_n" / "checkpoints" / "latest.pt", weights_only=True)
    assert len(state["records"]) == 1
    assert state["model"] and all(bool(torch.isfinite(t).all()) for t in state["model"].values())


def test_a_seed_at_the_top_of_its_domain_runs(mnist: Path, tmp_path: Path) -> None:
    seed = 2**63 - 1
    result = call("main", [*CONTINUAL, "--strategies=none", f"--data_dir={mnist}", f"--log_dir={tmp_path}",
                           "--comment=s", f"--random_seed={seed}"])
    assert result.code == 0, result.err[-2000:]
    result = call("main", [*PATHNET, f"--data_dir={mnist}", f"--log_dir={tmp_path}", "--comment=s",
                           f"--random_seed={seed}"])
    assert result.code == 0, result.err[-2000:]


@pytest.mark.parametrize("mode", ["pathnet", "continual"])
def test_a_full_disk_while_drawing_keeps_the_results(mode: str, mnist: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.continual import main as continual_main

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathnet_run if mode == "pathnet" else continual_main, "plot", full)
    result = call("main", [*(PATHNET if mode == "pathnet" else CONTINUAL), f"--data_dir={mnist}",
                           f"--log_dir={tmp_path}", "--comment=d"])
    assert result.code == 2 and "Traceback" not in result.err
    assert "No space left on device" in result.err and "the results are kept in" in result.err
    folder = "pathnet_d" if mode == "pathnet" else "split_mnist_d"
    assert (tmp_path / folder / f"{mode}_results.json").is_file()


@pytest.mark.parametrize("entry", ["search", "continual", "pathnet", "retrain", "toy", "sweep"])
def test_a_folder_this_process_may_not_write_is_one_line(entry: str, mnist: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, which chmod does not stop: ``mkdir`` under ``locked/`` is refused as a read-only mount would."""
    locked = tmp_path / "locked"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(locked):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    search = tmp_path / "logs" / "tiny_s"
    if entry == "retrain":
        assert call("main", [*SEARCH, f"--data_dir={mnist}", f"--log_dir={tmp_path / 'logs'}", "--comment=s"]).code == 0
    argv = {"search": ("main", [*SEARCH, f"--data_dir={mnist}"]), "continual": ("main", [*CONTINUAL, f"--data_dir={mnist}"]),
            "pathnet": ("main", [*PATHNET, f"--data_dir={mnist}"]),
            "retrain": ("main", [*RETRAIN, f"--data_dir={mnist}", f"--load_path={search}"]),
            "toy": ("toy", [*TOY, "--data_dir", str(mnist), "--output_dir", str(locked / "out")]),
            "sweep": ("sweep", ["--grid", "x=1", "--measure=metrics.last.loss", "--minimize", "--"])}[entry]
    where = [] if entry == "toy" else [f"--log_dir={locked / 'logs'}", "--comment=ro"]
    if entry == "sweep":
        argv = (argv[0], [*where, *argv[1]])
        where = []
    result = call(argv[0], [*argv[1], *where])
    assert result.code != 0 and "Traceback" not in result.err, result.err[-2000:]
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Read-only file system" in lines[0], result.err[-2000:]


def test_an_image_bomb_is_one_line_in_a_dataloader_worker(tmp_path: Path) -> None:
    """The search's image folders decode in DataLoader workers: the bomb is a UserError there, not PIL's."""
    from fault_harness import write_folder

    from data.image import load_images
    from data.image_stream import Preprocess, iterate_split
    from utils import UserError

    root = write_folder(tmp_path)
    bomb = root / "shapes" / "test" / "b" / "1.png"
    data = load_images(root, "shapes", valid_size=2, seed=0)
    fs.png_bomb(bomb)
    with pytest.raises(UserError) as err:
        list(iterate_split(data.test, 4, Preprocess(data, torch.device("cpu")), num_workers=1, seed=0))
    assert "\n" not in str(err.value) and str(bomb) in str(err.value) and "decompression bomb" in str(err.value)


def test_compare_runs_draws_string_and_boolean_figures_as_missing(tmp_path: Path) -> None:
    import json

    run = tmp_path / "tiny_x"
    run.mkdir()
    (run / "params.json").write_text(json.dumps({"alpha_fisher": 1}))
    lines = [{"epoch": 0, "controller_reward": "high", "valid_ppl": True}, {"epoch": 1, "controller_reward": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "test_results.json").write_text(json.dumps({"test_ppl": "n/a"}))
    result = call("compare", [str(run), "--output", str(tmp_path / "r.png")])
    assert result.code == 0 and "Traceback" not in result.err, result.err[-2000:]
    assert (tmp_path / "r.png").is_file()


def test_generate_gif_still_writes_an_animation(tmp_path: Path) -> None:
    import imageio.v3 as iio

    fs.drawings("good")(tmp_path, {})
    result = call("gif", ["--model_name=run", f"--log_dir={tmp_path / 'logs'}", f"--output={tmp_path / 'a.gif'}"])
    assert result.code == 0, result.err
    assert iio.imread(tmp_path / "a.gif", index=None).shape[0] == 2


def test_an_allocation_that_does_not_fit_is_one_line() -> None:
    """torch's CPU and CUDA allocation failures (a batch or width far too large), and Python's MemoryError."""
    from options.safe_io import as_user_error

    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 313600000000 bytes.")
    for err in (cpu, RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), MemoryError()):
        line = str(as_user_error(err))
        assert line.startswith("out of memory") and "\n" not in line and "smaller batch size" in line
    assert as_user_error(RuntimeError("a genuine bug")) is None
