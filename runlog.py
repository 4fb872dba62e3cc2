"""A run directory: resolved config, log file, metrics.jsonl, TensorBoard events, drawings, checkpoints.

Layout of ``<log_dir>/<dataset>_<comment>/``::

    params.json        resolved configuration
    train.log          the console log
    metrics.jsonl      one JSON object per epoch
    events.out.tfevents.*   TensorBoard scalars and images
    networks/          drawings of sampled and derived architectures
    checkpoints/       latest.pt (every epoch) and epoch_XXXX.pt (after epoch XXXX, every save_epoch; newest kept)
    best_arch.json     the derived architecture
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from utils import UserError, atomic_write_bytes

log = logging.getLogger("wpl")


class RunDir:
    def __init__(self, path: Path, use_tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.networks = self.path / "networks"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self._writer = None
        self._use_tensorboard = use_tensorboard

    # ------------------------------------------------------------------------------ metrics
    @property
    def writer(self) -> Any:
        if self._writer is None and self._use_tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.path), flush_secs=30)
        return self._writer

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        if self.writer is None or png.suffix != ".png":
            return
        import imageio.v3 as iio

        self.writer.add_image(tag, iio.imread(png)[..., :3], step, dataformats="HWC")

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop the records of epochs a resumed run will redo (they come after its checkpoint)."""
        kept = [r for r in self.read_metrics() if r["epoch"] < epochs_done]
        atomic_write_bytes(self.metrics_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any], epoch: int, numbered: bool, keep: int) -> Path:
        """Write ``latest.pt`` (and ``epoch_XXXX.pt`` when ``numbered``) atomically."""
        latest = self.checkpoints / "latest.pt"
        atomic_write_bytes(latest, lambda f: torch.save(state, f))
        if numbered:
            target = self.checkpoints / f"epoch_{epoch:04d}.pt"
            atomic_write_bytes(target, lambda f: torch.save(state, f))
            for old in sorted(self.checkpoints.glob("epoch_*.pt"))[:-keep] if keep > 0 else []:
                old.unlink()
        return latest

    def latest_checkpoint(self) -> Path | None:
        latest = self.checkpoints / "latest.pt"
        if latest.is_file():
            return latest
        numbered = sorted(self.checkpoints.glob("epoch_*.pt"))
        return numbered[-1] if numbered else None


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Load a checkpoint written by ``RunDir.save_checkpoint``, with a clear error when unreadable."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as err:
        raise UserError(f"checkpoint {path} does not exist") from err
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise UserError(f"checkpoint {path} is unreadable or corrupt ({type(err).__name__})") from err
    if not isinstance(state, dict) or state.get("format") != 1:
        raise UserError(f"{path} is not a checkpoint of this project")
    return state


def resolve_checkpoint(load_path: str, device: torch.device) -> tuple[Path, dict[str, Any]]:
    """``--load_path`` may name a run directory (its latest checkpoint) or a checkpoint file."""
    if not load_path:
        raise UserError("this mode needs --load_path=<run directory or checkpoint file>")
    path = Path(load_path)
    if path.is_dir():
        found = RunDir(path, use_tensorboard=False).latest_checkpoint()
        if found is None:
            raise UserError(f"run directory {path} holds no checkpoint (checkpoints/latest.pt)")
        path = found
    return path, load_checkpoint(path, device)
