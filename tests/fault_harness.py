"""What the fault-injection tests (``test_faults_*.py``) share: the tiny search they interrupt, the stand-in for
a killed process, and the check that a resumed run ends as the uninterrupted one did.

The uninterrupted run is conftest's session fixture ``fault_base``, built once from :data:`SMALL` for the three
files, whose runs are written beside it. Interruptions are raised in-process as :class:`Kill` (a BaseException
nothing catches) at the chosen point; a real ``kill -9`` is the slow subprocess test of test_faults_interruptions.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import main
from conftest import metrics_without_timing

SMALL = ["--dataset=tiny", "--max_epoch=3", "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2",
         "--train_controller=True", "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4",
         "--test_batch_size=2", "--num_blocks=3", "--derive_num_sample=2", "--num_gpu=0", "--forgetting_eval_batches=1",
         "--alpha_fisher=5", "--use_tensorboard=False", "--policy_batch_size=2"]


class Kill(BaseException):
    """Stands for the process dying at this point."""


def argv(data_dir: Path, log_dir: Path, comment: str, *extra: str) -> list[str]:
    return [*SMALL, f"--data_dir={data_dir}", f"--log_dir={log_dir}", f"--comment={comment}", *extra]


def temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*.tmp")]


def kill_when(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, should_kill: Callable[..., bool],
              before: bool = True) -> None:
    """Replace ``owner.name`` so that it raises Kill (before or after doing its work) when ``should_kill(*args)``."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        hit = should_kill(*args, **kwargs)
        if hit and before:
            raise Kill(name)
        result = original(*args, **kwargs)
        if hit:
            raise Kill(name)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def killed_at_checkpoint(monkeypatch: pytest.MonkeyPatch, base: Path, data_dir: Path, comment: str, epoch: int) -> Path:
    """Run ``comment`` beside ``base`` until the process dies as it saves epoch ``epoch``'s checkpoint; its folder."""
    from engine.runlog import RunDir

    with monkeypatch.context() as m:
        kill_when(m, RunDir, "save_checkpoint", lambda self, state, e, *a: e == epoch)
        with pytest.raises(Kill):
            main.main(argv(data_dir, base.parent, comment))
    return base.parent / f"tiny_{comment}"


def resume_and_compare(base: Path, data_dir: Path, comment: str) -> Path:
    """Resume the interrupted run ``comment`` beside ``base`` (the uninterrupted run); check it ends as ``base`` did."""
    assert main.main(argv(data_dir, base.parent, comment, "--resume=True")) == 0
    run = base.parent / f"tiny_{comment}"
    assert metrics_without_timing(run) == metrics_without_timing(base)
    assert temp_files(run) == []
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    return run


def write_folder(root: Path, per_class: int = 4) -> Path:
    """A two-class folder of 8 x 8 grey images per split, ``per_class`` each (``root/shapes/<split>/<class>``)."""
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for name in ("a", "b"):
            (root / "shapes" / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / "shapes" / split / name / f"{k}.png")
    return root
