"""One ENAS search loop with Weight Plasticity Loss, for any search space.

Per epoch: optional Fisher reset -> shared phase (sampled architectures trained in turn on the
shared weights, WPL protecting what earlier architectures needed) -> controller phase (REINFORCE
on validation rewards) -> forgetting metric -> every ``save_epoch`` epochs: derive, evaluate, draw
-> metrics.jsonl and checkpoint. The search space supplies losses, rewards and metrics, so the loop
never branches on the kind of network.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine import MAX_NONFINITE_IN_A_ROW, NonFiniteLoss, build_optimizer, scheduled_lr
from models.controller import Controller
from models.space import OptimSpec, SearchSpace
from models.wpl import WPL, alpha_schedule
from runlog import RunDir
from stopping import critical
from utils import UserError, rng_state, save_json, set_rng_state

log = logging.getLogger("wpl")


@dataclass(frozen=True)
class TrainerConfig:
    max_epoch: int = 100
    shared_max_step: int = 50
    shared_num_sample: int = 1
    shared_initial_step: int = 0
    shared_optim: str = "sgd"
    num_batch_per_iter: int = 10
    # WPL
    start_using_fisher: int = 0
    set_fisher_zero_per_iter: int = -1
    alpha_fisher: float = 1.0
    alpha_decay: float = 2.0
    alpha_decay_after: float = 15.0
    alpha_decay_mode: int = 1
    alpha_small_scale: float = 0.0
    shared_valid_fisher: bool = True
    shared_ce_fisher: bool = True
    start_evaluate_diff: int = 0
    # controller
    train_controller: bool = False
    start_training_controller: int = 0
    stop_training_controller: int = 1000
    controller_max_step: int = 1500
    controller_optim: str = "adam"
    controller_lr: float = 3.5e-4
    controller_lr_cosine: bool = False
    controller_lr_max: float = 0.05
    controller_lr_min: float = 0.001
    controller_grad_clip: float = 0.0
    policy_batch_size: int = 5
    nb_batch_reward_controller: int = 1
    reward_c: float = 80.0
    ppl_square: bool = False
    entropy_mode: str = "reward"
    entropy_coeff: float = 1e-4
    ema_baseline_decay: float = 0.95
    discount: float = 1.0
    # bookkeeping
    save_epoch: int = 5
    max_save_num: int = 4
    derive_num_sample: int = 100
    log_step: int = 50
    # speed options (GPU; see models/rnn.py)
    amp: bool = False
    compile: bool = False


def ci95_half_width(values: list[float]) -> float:
    """Half-width of a t-based 95% confidence interval of the mean (0 for fewer than 2 values)."""
    if len(values) < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


class Trainer:
    def __init__(
        self,
        space: SearchSpace,
        controller: Controller,
        wpl: WPL | None,
        cfg: TrainerConfig,
        run: RunDir | None,
        config_dict: dict[str, Any],
    ) -> None:
        self.space, self.controller, self.wpl, self.cfg, self.run = space, controller, wpl, cfg, run
        self.config_dict = config_dict
        self.spec = space.optim_spec()
        if cfg.compile:  # --compile: torch.compile the shared model's hot paths where it has them
            if hasattr(space.model, "enable_compile"):
                space.model.enable_compile()
            else:
                log.warning("--compile: %s has no compiled path; running eagerly", type(space.model).__name__)
        self.shared_optim = build_optimizer(self.spec, space.model.parameters(), cfg.shared_optim)
        ctrl_cls = torch.optim.Adam if cfg.controller_optim == "adam" else torch.optim.SGD
        self.controller_optim = ctrl_cls(controller.parameters(), lr=cfg.controller_lr)
        self.epoch = 0  # epochs completed
        self.shared_step = 0
        self.controller_step = 0
        self.baseline: float | None = None
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.best: dict[str, Any] | None = None
        self.started = time.time()
        self.elapsed_before = 0.0
        self.run_id = ""  # identifies the run its checkpoints belong to (set by main.py)

    # ------------------------------------------------------------------------------ helpers
    def alpha(self, epoch: int) -> float:
        c = self.cfg
        return alpha_schedule(epoch, c.alpha_fisher, c.alpha_decay, c.alpha_decay_after, c.alpha_decay_mode, c.alpha_small_scale)

    def autocast(self) -> torch.autocast:
        """--amp: bfloat16 autocast around the shared model's forward and loss (off: a no-op context)."""
        return torch.autocast(next(self.space.model.parameters()).device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def wpl_active(self, epoch: int) -> bool:
        return self.wpl is not None and epoch >= self.cfg.start_using_fisher

    def controller_active(self, epoch: int) -> bool:
        c = self.cfg
        return c.train_controller and c.start_training_controller <= epoch < c.stop_training_controller

    @torch.no_grad()
    def sample_archs(self, n: int) -> list[Any]:
        self.controller.train()
        return [self.space.decode(t) for t in self.controller(n).tokens.tolist()]

    def _set_lrs(self, epoch: int) -> float:
        lr = scheduled_lr(self.spec, epoch, self.cfg.max_epoch)
        for group in self.shared_optim.param_groups:
            group["lr"] = lr
        if self.cfg.controller_lr_cosine:
            c = self.cfg
            ctrl_lr = c.controller_lr_min + 0.5 * (c.controller_lr_max - c.controller_lr_min) * (1 + math.cos(math.pi * epoch / max(1, c.max_epoch)))
            for group in self.controller_optim.param_groups:
                group["lr"] = ctrl_lr
        return lr

    # ------------------------------------------------------------------------- shared phase
    def train_arch(self, arch: Any, alpha: float, use_wpl: bool) -> dict[str, float]:
        """Train one sampled architecture on ``num_batch_per_iter`` batches, then update WPL.

        Returns the step's mean loss terms (one host synchronisation per step, not per batch).
        """
        space, model, wpl = self.space, self.space.model, self.wpl
        groups = space.groups_for(arch) if use_wpl else []
        sums = torch.zeros(4, device=next(model.parameters()).device)  # total, ce, wpl, correct
        done = 0
        n = self.cfg.num_batch_per_iter
        # Without shared_valid_fisher the Fisher reads the last training batch's gradient: before
        # the WPL term is added (shared_ce_fisher) or after it.
        fisher_from_train = use_wpl and not self.cfg.shared_valid_fisher
        for b in range(n):
            self.shared_optim.zero_grad(set_to_none=True)
            with self.autocast():
                out = space.train_loss(arch)
            if not bool(torch.isfinite(out.total)):
                self._nonfinite()
                continue
            out.total.backward()
            if fisher_from_train and b == n - 1 and self.cfg.shared_ce_fisher:
                wpl.update_fisher(groups, alpha)
            penalty = wpl.add_penalty_grad_(groups, alpha) if use_wpl else sums.new_zeros(())
            if use_wpl and not bool(torch.isfinite(penalty)):
                self._nonfinite("WPL penalty")
                continue
            self.nonfinite_in_row = 0
            if fisher_from_train and b == n - 1 and not self.cfg.shared_ce_fisher:
                wpl.update_fisher(groups, alpha)
            if self.spec.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), self.spec.grad_clip)
            self.shared_optim.step()
            accuracy = out.accuracy if out.accuracy is not None else sums.new_zeros(())
            sums += torch.stack([out.total.detach() + penalty, out.ce.detach(), penalty, accuracy.float()])
            done += 1
        if use_wpl:
            if self.cfg.shared_valid_fisher:
                self._fisher_from_validation(arch, groups, alpha)
            wpl.refresh_anchors()
        values = (sums / max(done, 1)).tolist()
        return {"loss": values[0], "ce": values[1], "wpl": values[2], "accuracy": values[3], "batches": done}

    def _fisher_from_validation(self, arch: Any, groups: list[str], alpha: float) -> None:
        """Fisher update from the gradient of one validation batch (no weight update)."""
        self.shared_optim.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.space.fisher_loss(arch)
        loss = out.ce if self.cfg.shared_ce_fisher else out.total
        if not bool(torch.isfinite(loss)):
            self._nonfinite("Fisher loss")
            return
        loss.backward()
        if not self.cfg.shared_ce_fisher:
            self.wpl.add_penalty_grad_(groups, alpha)
        self.wpl.update_fisher(groups, alpha)
        self.shared_optim.zero_grad(set_to_none=True)

    def _nonfinite(self, what: str = "loss") -> None:
        """Count a skipped non-finite loss or reward; too many in a row stop the run."""
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        log.warning("non-finite %s at epoch %d shared step %d controller step %d: update skipped (%d in a row)",
                    what, self.epoch, self.shared_step, self.controller_step, self.nonfinite_in_row)
        if self.nonfinite_in_row >= MAX_NONFINITE_IN_A_ROW:
            raise NonFiniteLoss(f"{MAX_NONFINITE_IN_A_ROW} non-finite losses or rewards in a row at epoch {self.epoch}: "
                                f"the search diverged (try a smaller --shared_lr or --alpha_fisher); "
                                f"last good checkpoint: {self._last_checkpoint()}")

    def _last_checkpoint(self) -> str:
        """The newest checkpoint on disk; only finite states are ever written (``nonfinite_state``)."""
        latest = self.run.latest_checkpoint() if self.run else None
        return str(latest) if latest else "none yet"

    def nonfinite_state(self) -> str | None:
        """The first tensor of the model, controller or WPL that holds NaN or infinity, if any."""
        sources = [("model", self.space.model.state_dict()), ("controller", self.controller.state_dict()),
                   ("wpl", self.wpl.state_dict() if self.wpl is not None else {})]
        for source, state in sources:
            for name, tensor in state.items():
                if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return f"{source} {name}"
        if self.baseline is not None and not math.isfinite(self.baseline):
            return "controller baseline"
        return None

    def shared_phase(self, epoch: int, steps: int, measure_forgetting: bool) -> dict[str, Any]:
        alpha = self.alpha(epoch)
        use_wpl = self.wpl_active(epoch)
        per_step: list[dict[str, float]] = []
        trained: list[tuple[Any, float]] = []  # (architecture, err1) for the forgetting metric
        fisher_norms: list[tuple[float, float]] = []
        bar = tqdm(range(steps), desc=f"epoch {epoch} shared", leave=False, disable=None)
        for _ in bar:
            for arch in self.sample_archs(self.cfg.shared_num_sample):
                stats = self.train_arch(arch, alpha, use_wpl)
                per_step.append(stats)
                if use_wpl:
                    fisher_norms.append(self.wpl.fisher_stats(self.space.groups_for(arch)))
                if measure_forgetting:
                    trained.append((arch, self.space.error(arch)))
            self.shared_step += 1
            bar.set_postfix(loss=f"{stats['loss']:.3f}", wpl=f"{stats['wpl']:.3g}")
            if self.run:
                self.run.scalars({"shared/loss": stats["loss"], "shared/ce": stats["ce"], "shared/wpl": stats["wpl"],
                                  f"shared/{self.space.metric}": self._metric(stats["ce"], stats["accuracy"]),
                                  "shared/lr": self.shared_optim.param_groups[0]["lr"], "wpl/alpha": alpha if use_wpl else 0.0,
                                  "wpl/fisher_norm": fisher_norms[-1][0] if use_wpl else 0.0,
                                  "wpl/fisher_max": fisher_norms[-1][1] if use_wpl else 0.0}, self.shared_step)
            if self.cfg.log_step > 0 and self.shared_step % self.cfg.log_step == 0:
                log.info("| epoch %3d | shared step %6d | lr %.3g | loss %.3f | ce %.3f | wpl %.4g",
                         epoch, self.shared_step, self.shared_optim.param_groups[0]["lr"], stats["loss"], stats["ce"], stats["wpl"])
        record: dict[str, Any] = {}
        if per_step:
            mean = {k: float(np.mean([s[k] for s in per_step])) for k in ("loss", "ce", "wpl", "accuracy")}
            record = {"shared_loss": mean["loss"], "shared_ce": mean["ce"], "shared_wpl": mean["wpl"],
                      "shared_" + self.space.metric: self._metric(mean["ce"], mean["accuracy"]),
                      "alpha": alpha if use_wpl else 0.0, "wpl_ce_ratio": mean["wpl"] / mean["ce"] if mean["ce"] else 0.0,
                      "fisher_norm": float(np.mean([f[0] for f in fisher_norms])) if fisher_norms else 0.0,
                      "fisher_max": float(np.max([f[1] for f in fisher_norms])) if fisher_norms else 0.0,
                      "shared_lr": self.shared_optim.param_groups[0]["lr"]}
        if trained:
            diffs = [self.space.error(arch) - err1 for arch, err1 in trained]
            record.update({"forgetting_mean_diff": float(np.mean(diffs)), "forgetting_max_diff": float(np.max(diffs)),
                           "forgetting_std_diff": float(np.std(diffs)), "forgetting_mean_diff_ci95": ci95_half_width(diffs)})
        return record

    def _metric(self, ce: float, accuracy: float) -> float:
        """Training metric of a step: perplexity from the cross-entropy, or accuracy in percent."""
        return math.exp(min(ce, 50.0)) if self.space.metric == "ppl" else 100.0 * accuracy

    # --------------------------------------------------------------------- controller phase
    def controller_phase(self, epoch: int) -> dict[str, float]:
        c = self.cfg
        rewards, entropies, advs, losses, metrics = [], [], [], [], []
        bar = tqdm(range(c.controller_max_step), desc=f"epoch {epoch} controller", leave=False, disable=None)
        for _ in bar:
            self.controller.train()
            sample = self.controller(c.policy_batch_size)
            archs = [self.space.decode(t) for t in sample.tokens.tolist()]
            with self.autocast():
                scored = [self.space.reward(a, c.nb_batch_reward_controller, c.reward_c, c.ppl_square) for a in archs]
            reward = torch.tensor([r for r, _ in scored], device=sample.log_probs.device)
            if not bool(torch.isfinite(reward).all()):
                self._nonfinite("reward")
                continue
            entropy = sample.entropies.sum(1)
            if c.entropy_mode == "reward":
                reward = reward + c.entropy_coeff * entropy.detach()
            mean_reward = float(reward.mean())
            if not math.isfinite(mean_reward):
                self._nonfinite("reward")
                continue
            self.baseline = mean_reward if self.baseline is None else (
                c.ema_baseline_decay * self.baseline + (1 - c.ema_baseline_decay) * mean_reward)
            steps = sample.log_probs.size(1)
            discounts = c.discount ** torch.arange(steps - 1, -1, -1, device=reward.device, dtype=reward.dtype)
            adv = reward[:, None] * discounts - self.baseline
            loss = -(sample.log_probs * adv).sum(1).mean()
            if c.entropy_mode == "regularizer":
                loss = loss - c.entropy_coeff * entropy.mean()
            if not bool(torch.isfinite(loss)):
                self._nonfinite("controller loss")
                continue
            self.nonfinite_in_row = 0
            self.controller_optim.zero_grad(set_to_none=True)
            loss.backward()
            if c.controller_grad_clip > 0:
                nn.utils.clip_grad_norm_(self.controller.parameters(), c.controller_grad_clip)
            self.controller_optim.step()
            if not all(bool(torch.isfinite(p).all()) for p in self.controller.parameters()):
                raise NonFiniteLoss(f"the controller's weights became non-finite at epoch {epoch} (try a smaller "
                                    f"--controller_lr or a --controller_grad_clip); last good checkpoint: "
                                    f"{self._last_checkpoint()}")
            self.controller_step += 1
            step_stats = {"controller/reward": mean_reward, "controller/entropy": float(entropy.detach().mean()),
                          "controller/baseline": self.baseline, "controller/adv": float(adv[:, -1].mean()),
                          "controller/loss": float(loss.detach()), f"controller/{self.space.metric}": float(np.mean([m for _, m in scored]))}
            rewards.append(mean_reward)
            entropies.append(step_stats["controller/entropy"])
            advs.append(step_stats["controller/adv"])
            losses.append(step_stats["controller/loss"])
            metrics.append(step_stats[f"controller/{self.space.metric}"])
            bar.set_postfix(reward=f"{mean_reward:.3f}")
            if self.run:
                self.run.scalars(step_stats, self.controller_step)
        if not rewards:
            return {}
        return {"controller_reward": float(np.mean(rewards)), "controller_entropy": float(np.mean(entropies)),
                "controller_baseline": self.baseline, "controller_adv": float(np.mean(advs)),
                "controller_loss": float(np.mean(losses)), f"controller_{self.space.metric}": float(np.mean(metrics))}

    # ------------------------------------------------------------------------------- derive
    @torch.no_grad()
    def derive(self, num_samples: int) -> tuple[Any, float]:
        """Sample ``num_samples`` architectures and keep the one with the lowest forgetting-batch error."""
        self.controller.eval()
        tokens = self.controller(num_samples).tokens.tolist()
        candidates = {tuple(t): self.space.decode(t) for t in tokens}  # de-duplicated, order kept
        scored = [(self.space.error(arch), arch) for arch in candidates.values()]
        error, arch = min(scored, key=lambda s: s[0])
        return arch, error

    # ---------------------------------------------------------------------------- main loop
    def train(self) -> None:
        c = self.cfg
        if self.epoch == 0 and self.shared_step == 0 and c.shared_initial_step > 0:
            log.info("warm-up: %d shared steps without WPL", c.shared_initial_step)
            self.shared_phase(0, c.shared_initial_step, measure_forgetting=False)
        while self.epoch < c.max_epoch:
            self.run_epoch()

    def run_epoch(self) -> dict[str, Any]:
        c, epoch = self.cfg, self.epoch
        t0 = time.time()
        if self.wpl is not None and c.set_fisher_zero_per_iter > 0 and epoch % c.set_fisher_zero_per_iter == 0:
            self.wpl.reset()
        self._set_lrs(epoch)
        record: dict[str, Any] = {"epoch": epoch}
        record.update(self.shared_phase(epoch, c.shared_max_step, measure_forgetting=epoch >= c.start_evaluate_diff))
        if self.controller_active(epoch):
            record.update(self.controller_phase(epoch))
        save = (epoch + 1) % max(1, c.save_epoch) == 0 or epoch + 1 == c.max_epoch
        if save:
            record.update(self.derive_and_evaluate(epoch))
        bad = self.nonfinite_state()
        if bad is not None:
            raise NonFiniteLoss(f"{bad} is not finite after epoch {epoch}: the search diverged and this state is not "
                                f"saved (try a smaller --shared_lr or --alpha_fisher); last good checkpoint: "
                                f"{self._last_checkpoint()}")
        with critical():  # the metrics line and the checkpoint that covers it: a stop signal waits
            self.epoch += 1
            record["nonfinite_losses"] = self.nonfinite_total
            record["epoch_s"] = time.time() - t0
            record["elapsed_s"] = self.elapsed_before + time.time() - self.started
            self._report(record)
            self.save_checkpoint(numbered=save)
        return record

    def derive_and_evaluate(self, epoch: int) -> dict[str, Any]:
        arch, error = self.derive(self.cfg.derive_num_sample)
        result = self.space.evaluate(arch, "valid")
        metric_key = f"valid_{self.space.metric}"
        better = (self.best is None or (result[metric_key] < self.best["score"]
                                        if self.space.metric == "ppl" else result[metric_key] > self.best["score"]))
        if better:
            self.best = {"arch": arch.to_dict(), "score": result[metric_key], "epoch": epoch}
        if self.run:
            save_json(self.run.path / "best_arch.json", {**self.best, "metric": metric_key})
            png = self.space.draw(arch, self.run.networks / f"{epoch:04d}-derived.png")
            self.run.image("networks/derived", png, epoch)
            sampled = self.sample_archs(1)[0]
            png = self.space.draw(sampled, self.run.networks / f"{epoch:04d}-sampled.png")
            self.run.image("networks/sampled", png, epoch)
            self.run.scalars({f"eval/{metric_key}": result[metric_key]}, epoch)
        log.info("| epoch %3d | derived %s | %s %.3f", epoch, arch, metric_key, result[metric_key])
        return {metric_key: result[metric_key], "derived_arch": arch.to_dict(), "derived_error": error,
                "best_arch": self.best["arch"]}

    def _report(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        parts = [f"| epoch {epoch:3d}", f"{record['epoch_s']:.1f}s"]
        for key in ("shared_ce", "shared_wpl", "alpha", "wpl_ce_ratio", "controller_reward",
                    "forgetting_mean_diff", "forgetting_max_diff", f"valid_{self.space.metric}"):
            if key in record:
                parts.append(f"{key} {record[key]:.4g}")
        log.info(" | ".join(parts))
        if self.run:
            self.run.append_metrics(record)
            self.run.scalars({f"forgetting/{k[11:]}": record[k] for k in record if k.startswith("forgetting_")}, epoch)
            self.run.scalars({"epoch/wpl_ce_ratio": record.get("wpl_ce_ratio", 0.0)}, epoch)

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "epoch": self.epoch,
            "shared_step": self.shared_step,
            "controller_step": self.controller_step,
            "model": self.space.model.state_dict(),
            "controller": self.controller.state_dict(),
            "shared_optim": self.shared_optim.state_dict(),
            "controller_optim": self.controller_optim.state_dict(),
            "wpl": self.wpl.state_dict() if self.wpl is not None else {},
            "baseline": self.baseline,
            "space": self.space.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "nonfinite_total": self.nonfinite_total,
            "elapsed_s": self.elapsed_before + time.time() - self.started,
            "config": self.config_dict,
            "run_id": self.run_id,
        }

    def load_state_dict(self, state: dict[str, Any], restore_optimizers: bool = True) -> None:
        self.space.model.load_state_dict(state["model"])
        self.controller.load_state_dict(state["controller"])
        if restore_optimizers:
            self.shared_optim.load_state_dict(state["shared_optim"])
            self.controller_optim.load_state_dict(state["controller_optim"])
        if self.wpl is not None and state["wpl"]:
            self.wpl.load_state_dict(state["wpl"])
        self.epoch = state["epoch"]
        self.shared_step = state["shared_step"]
        self.controller_step = state["controller_step"]
        self.baseline = state["baseline"]
        self.space.load_state_dict(state["space"])
        self.best = state["best"]
        self.nonfinite_total = state["nonfinite_total"]
        self.elapsed_before = state["elapsed_s"]
        self.started = time.time()
        set_rng_state(state["rng"])

    def save_checkpoint(self, numbered: bool) -> None:
        if self.run:
            self.run.save_checkpoint(self.state_dict(), self.epoch - 1, numbered, self.cfg.max_save_num)
