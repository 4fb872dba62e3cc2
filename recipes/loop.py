"""The epoch loop every retraining recipe shares: train, validate, keep the best weights, checkpoint.

A recipe (``recipes.rnn``, ``recipes.cnn``) supplies ``train_epoch`` and may react to each validation
(``after_validation``); the loop owns the rest. Updates go through the engine's guarded ``Step``, the
metric's direction through ``engine.improves``, checkpoints through ``engine.stamp("retrain", ...)``.
When a recipe starts weight averaging (NT-ASGD), the running average is the model validated, kept as
best and tested.

Data-parallel, nothing here changes: ``Step`` averages the gradients over the ranks, so every rank's
weights (and their running average) stay identical, and the space's evaluation reduces over the ranks,
so every rank sees the whole split's score and takes the same NT-ASGD and best-weights decisions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from engine import NonFiniteGuard, Step, build_optimizer, improves, stamp
from spaces.base import OptimSpec, SearchSpace
from engine.lifecycle import mid_epoch_saved
from engine.runlog import RunDir
from engine.stopping import boundary, critical, saving_on_signal
from utils import atomic_write_bytes, rng_state, set_rng_state

log = logging.getLogger("wpl")


@dataclass(frozen=True)
class RetrainConfig:
    """How a retrain runs (``builders.retrain_config`` fills it from the options)."""

    epochs: int
    save_epoch: int  # numbered checkpoint every this many epochs
    max_save_num: int  # numbered checkpoints kept
    log_step: int  # progress line every this many steps (0: none)
    bptt: int  # RNN: mean BPTT length
    nonmono: int  # RNN: NT-ASGD's patience in epochs (0: never average)
    cutout: int  # CNN: side of the cutout square in pixels (0: off)
    aux_weight: float  # CNN: weight of the auxiliary head's loss (0: no head)
    seed: int


class Retrainer:
    """One architecture's final training on the ``model`` pruned to it; ``space`` gives data and evaluation."""

    default_epochs: ClassVar[int]  # the recipe's epochs when --retrain_epochs is 0

    def __init__(self, space: SearchSpace, model: nn.Module, arch: Any, spec: OptimSpec, cfg: RetrainConfig,
                 run: RunDir, config_dict: dict[str, Any]) -> None:
        self.space, self.model, self.arch, self.spec, self.cfg, self.run = space, model, arch, spec, cfg, run
        self.config_dict = config_dict
        self.optim = build_optimizer(spec, model.parameters(), "sgd")
        self.guard = NonFiniteGuard("loss", "training diverged (try a smaller learning rate)",
                                    where=lambda: f"retrain step {self.step}",
                                    last_checkpoint=lambda: str(self.run.latest_checkpoint() or "none yet"))
        self.updater = Step(self.optim, model.parameters(), spec.grad_clip, self.guard, buffers=model.buffers())
        self.key = f"valid_{space.metric}"
        self.averaged: AveragedModel | None = None
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[float] = []  # validation score of every epoch
        self.best: dict[str, Any] | None = None
        self.started = time.time()
        self.elapsed_before = 0.0
        self._window = torch.zeros(2, device=next(model.parameters()).device)  # loss sum and steps since the last log line

    @staticmethod
    def model_for(pruned: nn.Module, space: SearchSpace, cfg: RetrainConfig) -> nn.Module:
        """The module a recipe trains around the pruned model (the pruned model itself unless overridden)."""
        return pruned

    # ------------------------------------------------------------------------------ helpers
    def start_averaging(self) -> None:
        """From now on every step updates a running average of the weights, the model validated and kept."""
        self.averaged = AveragedModel(self.model)

    def eval_model(self) -> nn.Module:
        return self.averaged.module if self.averaged is not None else self.model

    def evaluate(self, split: str) -> dict[str, float]:
        return self.space.evaluate(self.arch, split, model=self.eval_model())

    def update(self, loss: Tensor) -> bool:
        """One guarded optimiser step on ``loss`` (skipped when not finite; too many in a row stop the run)."""
        if not self.updater.update(loss):
            return False
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.step += 1
        self._log_step(loss.detach())
        boundary()
        return True

    def _log_step(self, loss: Tensor) -> None:
        """Progress line and TensorBoard scalars every ``log_step`` steps (one host synchronisation each)."""
        self._window += torch.stack([loss, torch.ones_like(loss)])
        if self.cfg.log_step <= 0 or self.step % self.cfg.log_step:
            return
        mean = float(self._window[0] / self._window[1])
        self._window.zero_()
        lr = self.updater.lr
        self.run.scalars({"retrain/loss": mean, "retrain/lr": lr}, self.step)
        log.info("| retrain epoch %3d | step %7d | lr %.3g | loss %.4f", self.epoch, self.step, lr, mean)

    # ---------------------------------------------------------------------------- the loop
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns at least ``train_loss`` and ``lr``."""
        raise NotImplementedError

    def after_validation(self, score: float) -> dict[str, Any]:
        """Hook after each validation, before ``score`` joins the history; returns extra metrics."""
        return {}

    def train(self) -> None:
        with saving_on_signal(self.save_mid_epoch):
            while self.epoch < self.cfg.epochs:
                self.run_epoch()

    def run_epoch(self) -> dict[str, Any]:
        epoch, t0 = self.epoch, time.time()
        record: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch)}
        result = self.evaluate("valid")
        score = result[self.key]
        record.update(result)
        if improves(self.space.metric, score, self.best["score"] if self.best else None):
            self.best = {"epoch": epoch, "score": score}
            self.save_best()
        record.update(self.after_validation(score))
        self.history.append(score)
        self.epoch += 1
        best = self.best or {"epoch": None, "score": None}
        record.update({f"best_{self.key}": best["score"], "best_epoch": best["epoch"],
                       "nonfinite_losses": self.guard.total, "epoch_s": time.time() - t0,
                       "elapsed_s": self.elapsed_before + time.time() - self.started})
        best_text = f"{best['score']:.4g} (epoch {best['epoch']})" if self.best else "none yet"
        log.info("| retrain epoch %3d | %.1fs | lr %.3g | train_loss %.4f | %s %.4g | best %s%s", epoch, record["epoch_s"],
                 record["lr"], record["train_loss"], self.key, score, best_text, " | averaging" if record.get("averaging") else "")
        numbered = (epoch + 1) % max(1, self.cfg.save_epoch) == 0 or self.epoch == self.cfg.epochs
        with critical():  # the metrics line and the checkpoint that covers it: a stop signal waits
            self.run.append_metrics(record)
            self.run.save_checkpoint(self.state_dict(), epoch, numbered, self.cfg.max_save_num)
        self.run.scalars({f"retrain/{self.key}": score, "retrain/train_loss": record["train_loss"]}, epoch)
        return record

    # ------------------------------------------------------------------------- checkpoints
    def save_mid_epoch(self) -> str:
        """``--save_on_signal``: ``latest.pt`` part-way through the epoch; returns what it holds."""
        path = self.run.save_checkpoint({**self.state_dict(), "mid_epoch": True}, self.epoch, numbered=False, keep=0)
        return mid_epoch_saved(path, self.epoch, f"step {self.step}")

    def best_state(self) -> dict[str, Any]:
        """What ``--mode=test`` needs: the validated weights, the architecture and the configuration."""
        assert self.best is not None
        return stamp("retrain", {"epoch": self.best["epoch"], "score": self.best["score"], "metric": self.key,
                                 "model": self.eval_model().state_dict(), "arch": self.arch.to_dict(),
                                 "config": self.config_dict})

    def save_best(self) -> None:
        state = self.best_state()
        if not self.run.writes:  # data-parallel: rank 0 writes the run directory
            return
        atomic_write_bytes(self.best_path, lambda f: torch.save(state, f))

    @property
    def best_path(self) -> Path:
        return self.run.checkpoints / "best.pt"

    def state_dict(self) -> dict[str, Any]:
        return stamp("retrain", {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "averaged": self.averaged.state_dict() if self.averaged is not None else None,
            "history": self.history,
            "best": self.best,
            "space": self.space.state_dict(),
            "rng": rng_state(),
            "nonfinite_total": self.guard.total,
            "elapsed_s": self.elapsed_before + time.time() - self.started,
            "arch": self.arch.to_dict(),
            "config": self.config_dict,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        if state["averaged"] is not None:
            self.start_averaging()
            self.averaged.load_state_dict(state["averaged"])  # type: ignore[union-attr]
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.best = list(state["history"]), state["best"]
        self.space.load_state_dict(state["space"])
        self.guard.total = state["nonfinite_total"]
        self.elapsed_before = state["elapsed_s"]
        self.started = time.time()
        set_rng_state(state["rng"])
