"""The ENAS controller trained with REINFORCE (Pham et al. 2018), as the paper's search uses it.

The network is :class:`models.controller.Controller`; this file owns how it learns: an Adam (or
SGD) optimiser, an exponential-moving-average reward baseline, the entropy bonus (added to the
reward, or subtracted from the loss as a regulariser), a per-decision discount, an optional cosine
learning rate and gradient clip. Each step samples ``policy_batch_size`` architectures, scores them
on the next validation batches (``SearchSpace.reward``) and takes one policy-gradient step through the
engine's guarded ``Step`` (finite check, clip, optimiser step), as every other update of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from engine import NonFiniteGuard, NonFiniteLoss, Step, cosine, first_nonfinite
from models.controller import Controller
from spaces.base import SearchSpace, start_reward
from engine.runlog import RunDir
from samplers.base import best_of, last_checkpoint
from engine.stopping import boundary


@dataclass(frozen=True)
class ReinforceConfig:
    train_controller: bool
    start_training_controller: int
    stop_training_controller: int
    controller_max_step: int
    controller_optim: str
    controller_lr: float
    controller_lr_cosine: bool
    controller_lr_max: float
    controller_lr_min: float
    controller_grad_clip: float
    policy_batch_size: int
    nb_batch_reward_controller: int
    reward_c: float
    ppl_square: bool
    entropy_mode: str
    entropy_coeff: float
    ema_baseline_decay: float
    discount: float
    max_epoch: int
    amp: bool
    controller_hid: int
    softmax_temperature: float
    tanh_c: float
    controller_device: str  # "cpu" or "model": the shared model's device


class ReinforceSampler:
    """Architectures from the controller's policy; ``learn`` is the controller phase."""

    Config: ClassVar[type] = ReinforceConfig

    def __init__(self, space: SearchSpace, controller: Controller, cfg: ReinforceConfig, run: RunDir | None) -> None:
        self.space, self.controller, self.cfg, self.run = space, controller, cfg, run
        optim_cls = torch.optim.Adam if cfg.controller_optim == "adam" else torch.optim.SGD
        # foreach: one C++ loop over the ~50 small tensors instead of a Python one (the same arithmetic,
        # bit for bit; PyTorch picks it by itself only on CUDA, and the controller runs on the CPU)
        self.optim = optim_cls(controller.parameters(), lr=cfg.controller_lr, foreach=True)
        self.baseline: float | None = None
        self.step = 0  # controller steps taken
        self.epoch = 0
        self.guard = NonFiniteGuard("controller reward or loss", "the controller diverged (try a smaller "
                                    "--controller_lr or a --controller_grad_clip)",
                                    lambda: f"epoch {self.epoch}, controller step {self.step}", lambda: last_checkpoint(run))
        # the engine's guarded update; every rank computes the same loss, so its gradient is not averaged
        self.updater = Step(self.optim, controller.parameters(), cfg.controller_grad_clip, self.guard, replicated=True,
                            loss_name="controller loss")
        # With one architecture per step, no discount and the entropy in the reward, the policy gradient is
        # (reward - baseline) times that of the log-probabilities alone: a host-side controller computes the
        # latter while a GPU computes the reward, and scales it after (the same step up to fp32 rounding).
        on_gpu = next(space.model.parameters()).is_cuda and not next(controller.parameters()).is_cuda
        self.overlap = on_gpu and cfg.policy_batch_size == 1 and cfg.discount == 1.0 and cfg.entropy_mode == "reward"

    @classmethod
    def build(cls, space: SearchSpace, cfg: ReinforceConfig, device: torch.device, run: RunDir | None) -> ReinforceSampler:
        where = torch.device("cpu") if cfg.controller_device == "cpu" else device
        controller = Controller(space.decision_sizes, cfg.controller_hid, cfg.softmax_temperature, cfg.tanh_c).to(where)
        return cls(space, controller, cfg, run)

    def autocast(self) -> torch.autocast:
        return torch.autocast(next(self.space.model.parameters()).device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    @torch.no_grad()
    def sample(self, n: int) -> list[Any]:
        self.controller.train()
        return [self.space.decode(t) for t in self.controller(n).tokens.tolist()]

    def active(self, epoch: int) -> bool:
        c = self.cfg
        return c.train_controller and c.start_training_controller <= epoch < c.stop_training_controller

    @torch.no_grad()
    def derive(self, n: int, score: Callable[[Any], float]) -> tuple[Any, float]:
        """The best of ``n`` samples of the policy in eval mode (no tanh squashing of the logits)."""
        self.controller.eval()
        tokens = self.controller(n).tokens.tolist()
        return best_of(((tuple(t), self.space.decode(t)) for t in tokens), score)

    @property
    def skipped(self) -> int:
        return self.guard.total

    def learn(self, epoch: int) -> dict[str, float]:
        """``controller_max_step`` REINFORCE steps; the means of their figures as ``controller_*`` entries.

        A non-finite reward or loss skips its step; ten in a row (the shared steps in between do not
        count) stop the run.
        """
        c, metric = self.cfg, self.space.metric
        self.epoch = epoch
        if c.controller_lr_cosine:
            for group in self.optim.param_groups:
                group["lr"] = cosine(c.controller_lr_max, c.controller_lr_min, epoch, c.max_epoch)
        rewards, entropies, advs, losses, metrics = [], [], [], [], []
        bar = tqdm(range(c.controller_max_step), desc=f"epoch {epoch} controller", leave=False, disable=None)
        for _ in bar:
            boundary()
            self.controller.train()
            sample = self.controller(c.policy_batch_size)
            archs = [self.space.decode(t) for t in sample.tokens.tolist()]
            if self.overlap:  # queue the reward on the GPU, back-propagate the log-probabilities meanwhile
                with self.autocast():
                    finish = start_reward(self.space, archs[0], c.nb_batch_reward_controller, c.reward_c, c.ppl_square)
                self.updater.zero_grad()
                (-sample.log_probs.sum()).backward()
                scored = [finish()]
            else:
                with self.autocast():
                    scored = [self.space.reward(a, c.nb_batch_reward_controller, c.reward_c, c.ppl_square) for a in archs]
            reward = torch.tensor([r for r, _ in scored], device=sample.log_probs.device)
            if not self.guard.check(reward, "reward"):
                continue
            entropy = sample.entropies.sum(1)
            if c.entropy_mode == "reward":
                reward = reward + c.entropy_coeff * entropy.detach()
            mean_reward = float(reward.mean())
            if not self.guard.check(mean_reward, "reward"):
                continue
            self.baseline = mean_reward if self.baseline is None else (
                c.ema_baseline_decay * self.baseline + (1 - c.ema_baseline_decay) * mean_reward)
            steps = sample.log_probs.size(1)
            discounts = c.discount ** torch.arange(steps - 1, -1, -1, device=reward.device, dtype=reward.dtype)
            adv = reward[:, None] * discounts - self.baseline
            loss = -((sample.log_probs.detach() if self.overlap else sample.log_probs) * adv).sum(1).mean()
            if c.entropy_mode == "regularizer":
                loss = loss - c.entropy_coeff * entropy.mean()
            if not (self.updater.step_scaled(loss, float(adv[0, 0])) if self.overlap else self.updater.update(loss)):
                continue
            if not bool(torch.cat([p.detach().reshape(-1) for p in self.controller.parameters()]).isfinite().all()):
                raise NonFiniteLoss(f"the controller's weights became non-finite at epoch {epoch} (try a smaller "
                                    f"--controller_lr or a --controller_grad_clip); last good checkpoint: "
                                    f"{last_checkpoint(self.run)}")
            self.step += 1
            step_stats = {"controller/reward": mean_reward, "controller/entropy": float(entropy.detach().mean()),
                          "controller/baseline": self.baseline, "controller/adv": float(adv[:, -1].mean()),
                          "controller/loss": float(loss.detach()), f"controller/{metric}": float(np.mean([m for _, m in scored]))}
            rewards.append(mean_reward)
            entropies.append(step_stats["controller/entropy"])
            advs.append(step_stats["controller/adv"])
            losses.append(step_stats["controller/loss"])
            metrics.append(step_stats[f"controller/{metric}"])
            bar.set_postfix(reward=f"{mean_reward:.3f}")
            if self.run:
                self.run.scalars(step_stats, self.step)
        if not rewards:
            return {}
        return {"controller_reward": float(np.mean(rewards)), "controller_entropy": float(np.mean(entropies)),
                "controller_baseline": self.baseline, "controller_adv": float(np.mean(advs)),
                "controller_loss": float(np.mean(losses)), f"controller_{metric}": float(np.mean(metrics))}

    def first_nonfinite(self) -> str | None:
        bad = first_nonfinite([("controller", self.controller.state_dict())])
        if bad is None and self.baseline is not None and not math.isfinite(self.baseline):
            return "controller baseline"
        return bad

    # Format-1 search checkpoints kept these keys at their top level; engine/convert.py moves them here.
    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "controller_optim": self.optim.state_dict(),
                "baseline": self.baseline, "controller_step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optim.load_state_dict(state["controller_optim"])
        self.baseline = state["baseline"]
        self.step = state["controller_step"]
