"""One weight-sharing architecture search loop, for any search space, sampler and regulariser.

Per epoch: shared phase (architectures from the sampler trained in turn on the shared weights, the
regulariser protecting what earlier ones needed) -> the sampler's learning phase (REINFORCE on
validation rewards for the controller) -> forgetting metric -> every ``save_epoch`` epochs: derive,
evaluate, draw -> metrics.jsonl and checkpoint. The search space supplies losses, rewards and
metrics, the sampler architectures, the regulariser its hooks (regularizers/base.py), so the loop
never branches on the kind of network, sampler or regulariser.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from analysis.stats import t_halfwidth
from distributed import comm
from distributed.context import world
from engine import NonFiniteGuard, NonFiniteLoss, Step, build_optimizer, first_nonfinite, improves, scheduled_lr, stamp
from spaces.base import SearchSpace
from regularizers.base import Objective, Regularizer
from engine.lifecycle import mid_epoch_saved
from engine.runlog import RunDir
from samplers.base import Sampler, last_checkpoint
from engine.stopping import boundary, critical, saving_on_signal
from utils import rng_state, save_json, set_rng_state

log = logging.getLogger("wpl")

@dataclass(frozen=True)
class TrainerConfig:
    max_epoch: int
    shared_max_step: int
    shared_num_sample: int
    shared_initial_step: int
    shared_optim: str
    num_batch_per_iter: int
    start_evaluate_diff: int
    save_epoch: int
    max_save_num: int
    derive_num_sample: int
    log_step: int
    amp: bool  # speed options (GPU; see models/rnn.py)
    compile: bool
    cuda_graphs: bool
    cuda_graph_fusion: bool


class Trainer:
    def __init__(
        self,
        space: SearchSpace,
        sampler: Sampler,
        regularizer: Regularizer | None,
        cfg: TrainerConfig,
        run: RunDir | None,
        config_dict: dict[str, Any],
    ) -> None:
        self.space, self.sampler, self.reg, self.cfg, self.run = space, sampler, regularizer, cfg, run
        self.config_dict = config_dict
        self.spec = space.optim_spec()
        if cfg.compile:  # --compile: torch.compile the shared model's hot paths where it has them
            if hasattr(space.model, "enable_compile"):
                space.model.enable_compile()
            else:
                log.warning("--compile: %s has no compiled path; running eagerly", type(space.model).__name__)
        graphed = cfg.cuda_graphs and hasattr(space.model, "enable_cuda_graphs")
        on_gpu = next(space.model.parameters()).is_cuda
        if graphed:  # --cuda_graphs: only on a CUDA device
            space.model.enable_cuda_graphs(fuse=cfg.cuda_graph_fusion)
            if cfg.compile and on_gpu:
                log.warning("--compile: on a GPU the RNN cell runs as CUDA graphs (--cuda_graphs=True), which take "
                            "the place of its compiled kernels; --cuda_graphs=False uses them (docs/benchmarks.md)")
        if cfg.cuda_graph_fusion and not (graphed and on_gpu):
            log.warning("--cuda_graph_fusion: it fuses the RNN cell's CUDA graphs, which run only with --cuda_graphs=True "
                        "on a CUDA device; nothing to fuse here")
        self.shared_optim = build_optimizer(self.spec, space.model.parameters(), cfg.shared_optim)
        self.guard = NonFiniteGuard("shared-step loss", "the search diverged (try a smaller --shared_lr or --alpha_fisher)",
                                    lambda: f"epoch {self.epoch}, shared step {self.shared_step}", lambda: last_checkpoint(run))
        self.step = Step(self.shared_optim, space.model.parameters(), self.spec.grad_clip, self.guard, cfg.amp,
                         space.model.buffers())
        self.device = self.step.params[0].device
        self.epoch = 0  # epochs completed
        self.shared_step = 0
        self.nonfinite_before = 0  # skipped updates counted before this process (a resumed run)
        self.best: dict[str, Any] | None = None
        self.started = time.time()
        self.elapsed_before = 0.0
        self.run_id = ""  # identifies the run its checkpoints belong to (set by main.py)
        self.phase = "the warm-up"  # where the epoch is, for a --save_on_signal checkpoint's message

    @property
    def nonfinite_total(self) -> int:
        """Updates skipped as non-finite over the whole run: shared steps, Fisher batches, the sampler's."""
        return self.nonfinite_before + self.guard.total + self.sampler.skipped

    # ------------------------------------------------------------------------- shared phase
    def train_arch(self, arch: Any, reg: Regularizer | None = None) -> dict[str, float]:
        """The shared step: ``num_batch_per_iter`` guarded updates of ``arch`` with ``reg``'s hooks.

        ``reg`` (``None``: plain training) reads and extends each batch's gradient and finishes the
        architecture with ``end_model``. Returns the mean loss terms of the updates made (one host
        synchronisation per shared step, not per batch).
        """
        names = self.space.groups_for(arch) if reg is not None else []
        sums = torch.zeros(4, device=self.device)  # total, ce, penalty, correct
        zero = sums.new_zeros(())
        done, n = 0, self.cfg.num_batch_per_iter
        for b in range(n):
            if reg is not None:
                reg.begin_batch(last=b == n - 1)
            with self.step.autocast():
                out = self.space.train_loss(arch)._replace(logits=None)  # not held through the backward
            stepped, added = self.step.update_regularised(out.total, reg, names)
            if not stepped:
                continue
            penalty = added if added is not None else zero
            accuracy = out.accuracy if out.accuracy is not None else zero
            sums += torch.stack([out.total.detach() + penalty, out.ce.detach(), penalty, accuracy.float()])
            done += 1
        if reg is not None:
            reg.end_model(names, lambda objective, what: self.held_out_backward(arch, objective, what))
            self.step.zero_grad()
        values = comm.mean_(sums / max(done, 1)).tolist()  # each rank's figures are its shard's
        return {"loss": values[0], "ce": values[1], "penalty": values[2], "accuracy": values[3], "batches": done}

    def held_out_backward(self, arch: Any, objective: Objective, what: str) -> bool:
        """Gradient of ``objective`` of one validation batch of ``arch`` in ``.grad`` (no weight update;
        averaged over the ranks, so the importance is the same everywhere); ``False`` when its value was
        not finite (counted by the shared step's guard)."""
        self.step.zero_grad()
        with self.step.autocast():
            loss = objective(self.space.fisher_loss(arch))  # the outputs (logits) are not held through the backward
        return self.step.backward(loss, what)

    def shared_phase(self, epoch: int, steps: int, measure_forgetting: bool) -> dict[str, Any]:
        reg = self.reg if self.reg is not None and self.reg.active(epoch) else None
        strength = reg.strength if reg is not None else 0.0
        lr = self.step.lr
        per_step: list[dict[str, float]] = []
        trained: list[tuple[Any, float]] = []  # (architecture, err1) for the forgetting metric
        figures: list[dict[str, float]] = []  # the regulariser's, after each architecture
        bar = tqdm(range(steps), desc=f"epoch {epoch} shared", leave=False, disable=None)
        for _ in bar:
            if self.spec.anneal > 0:  # the final anneal is set per shared step (the schedules otherwise per epoch)
                done = max(0, self.shared_step - self.cfg.shared_initial_step) / self.cfg.shared_max_step
                self.step.set_lr(scheduled_lr(self.spec, done, self.cfg.max_epoch))
                lr = self.step.lr
            for arch in self.sampler.sample(self.cfg.shared_num_sample):
                boundary()
                comm.agree("sampled architectures", comm.text_fingerprint(str(arch)))
                stats = self.train_arch(arch, reg)
                per_step.append(stats)
                if reg is not None:
                    figures.append(reg.stats(self.space.groups_for(arch)))
                if measure_forgetting:
                    trained.append((arch, self.space.error(arch)))
            self.shared_step += 1
            bar.set_postfix(loss=f"{stats['loss']:.3f}", penalty=f"{stats['penalty']:.3g}")
            if self.run:
                self.run.scalars({"shared/loss": stats["loss"], "shared/ce": stats["ce"], "shared/wpl": stats["penalty"],
                                  f"shared/{self.space.metric}": self._metric(stats["ce"], stats["accuracy"]),
                                  "shared/lr": lr, "wpl/alpha": strength,
                                  "wpl/fisher_norm": figures[-1]["importance_norm"] if figures else 0.0,
                                  "wpl/fisher_max": figures[-1]["importance_max"] if figures else 0.0}, self.shared_step)
            if self.cfg.log_step > 0 and self.shared_step % self.cfg.log_step == 0:
                log.info("| epoch %3d | shared step %6d | lr %.3g | loss %.3f | ce %.3f | penalty %.4g",
                         epoch, self.shared_step, lr, stats["loss"], stats["ce"], stats["penalty"])
        record: dict[str, Any] = {}
        if per_step:
            mean = {k: float(np.mean([s[k] for s in per_step])) for k in ("loss", "ce", "penalty", "accuracy")}
            # The regulariser's figures keep the names of the paper's WPL metrics (old runs, compare_runs.py).
            record = {"shared_loss": mean["loss"], "shared_ce": mean["ce"], "shared_wpl": mean["penalty"],
                      "shared_" + self.space.metric: self._metric(mean["ce"], mean["accuracy"]), "alpha": strength,
                      "wpl_ce_ratio": mean["penalty"] / mean["ce"] if mean["ce"] else 0.0,
                      "fisher_norm": float(np.mean([f["importance_norm"] for f in figures])) if figures else 0.0,
                      "fisher_max": float(np.max([f["importance_max"] for f in figures])) if figures else 0.0,
                      "shared_lr": lr}
        if trained:
            diffs = [self.space.error(arch) - err1 for arch, err1 in trained]
            record.update({"forgetting_mean_diff": float(np.mean(diffs)), "forgetting_max_diff": float(np.max(diffs)),
                           "forgetting_std_diff": float(np.std(diffs)), "forgetting_mean_diff_ci95": t_halfwidth(diffs)})
        return record

    def _metric(self, ce: float, accuracy: float) -> float:
        """Training metric of a step: perplexity from the cross-entropy, or accuracy in percent."""
        return math.exp(min(ce, 50.0)) if self.space.metric == "ppl" else 100.0 * accuracy

    def derive(self, num_samples: int) -> tuple[Any, float]:
        """The sampler's best of ``num_samples`` architectures by the space's forgetting-batch error."""
        return self.sampler.derive(num_samples, self.space.error)

    # ---------------------------------------------------------------------------- main loop
    def train(self) -> None:
        c = self.cfg
        with saving_on_signal(self.save_mid_epoch):
            if self.epoch == 0 and self.shared_step == 0 and c.shared_initial_step > 0:
                log.info("warm-up: %d shared steps at the initial learning rate", c.shared_initial_step)
                if self.reg is not None:
                    self.reg.begin_epoch(0)
                self.shared_phase(0, c.shared_initial_step, measure_forgetting=False)
            while self.epoch < c.max_epoch:
                self.run_epoch()

    def run_epoch(self) -> dict[str, Any]:
        c, epoch = self.cfg, self.epoch
        t0 = time.time()
        if self.reg is not None:
            self.reg.begin_epoch(epoch)
        self.step.set_lr(scheduled_lr(self.spec, epoch, c.max_epoch))
        record: dict[str, Any] = {"epoch": epoch}
        self.phase = "its shared phase"
        record.update(self.shared_phase(epoch, c.shared_max_step, measure_forgetting=epoch >= c.start_evaluate_diff))
        if self.sampler.active(epoch):
            self.phase = "its sampler phase"
            record.update(self.sampler.learn(epoch))
        save = (epoch + 1) % max(1, c.save_epoch) == 0 or epoch + 1 == c.max_epoch
        if save:
            record.update(self.derive_and_evaluate(epoch))
        self.check_ranks_agree()
        bad = self.nonfinite_state()
        if bad is not None:
            raise NonFiniteLoss(f"{bad} is not finite after epoch {epoch}: the search diverged and this state is not "
                                f"saved (try a smaller --shared_lr or --alpha_fisher); last good checkpoint: "
                                f"{last_checkpoint(self.run)}")
        with critical():  # the metrics line and the checkpoint that covers it: a stop signal waits
            self.epoch += 1
            record["nonfinite_losses"] = self.nonfinite_total
            record["epoch_s"] = time.time() - t0
            record["elapsed_s"] = self.elapsed_before + time.time() - self.started
            self._report(record)
            self.save_checkpoint(numbered=save)
        return record

    def check_ranks_agree(self) -> None:
        """Data-parallel runs: the shared weights, the sampler's and the regulariser's state are bit-identical
        on every rank (the averaged gradients make them so; a mismatch is a bug or mixed code versions)."""
        if not world().active:
            return
        comm.agree("shared weights", comm.fingerprint(self.space.model.state_dict()))
        comm.agree("sampler states", comm.fingerprint(self.sampler.state_dict()))
        if self.reg is not None:
            comm.agree(f"{self.reg.label} states", comm.fingerprint(self.reg.state_dict()))

    def nonfinite_state(self) -> str | None:
        """The first tensor of the model, the sampler or the regulariser that holds NaN or infinity, if any."""
        bad = first_nonfinite([("model", self.space.model.state_dict())]) or self.sampler.first_nonfinite()
        if bad is None and self.reg is not None:
            bad = first_nonfinite([(self.reg.label, self.reg.state_dict())])
        return bad

    def derive_and_evaluate(self, epoch: int) -> dict[str, Any]:
        arch, error = self.derive(self.cfg.derive_num_sample)
        result = self.space.evaluate(arch, "valid")
        metric_key = f"valid_{self.space.metric}"
        if self.best is None or improves(self.space.metric, result[metric_key], self.best["score"]):
            self.best = {"arch": arch.to_dict(), "score": result[metric_key], "epoch": epoch}
        if self.run:
            sampled = self.sampler.sample(1)[0]  # on every rank: the samplers' generators stay in step
            if self.run.writes:
                save_json(self.run.path / "best_arch.json", {**self.best, "metric": metric_key})
                png = self.space.draw(arch, self.run.networks / f"{epoch:04d}-derived.png")
                self.run.image("networks/derived", png, epoch)
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
        return stamp("search", {
            "epoch": self.epoch,
            "shared_step": self.shared_step,
            "model": self.space.model.state_dict(),
            "shared_optim": self.shared_optim.state_dict(),
            "sampler": self.sampler.state_dict(),
            "regularizer": self.reg.state_dict() if self.reg is not None else {},
            "space": self.space.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "nonfinite_total": self.nonfinite_total,
            "elapsed_s": self.elapsed_before + time.time() - self.started,
            "config": self.config_dict,
            "run_id": self.run_id,
        })

    def load_weights(self, state: dict[str, Any]) -> None:
        """The shared weights and the sampler of a checkpoint (what derive and test need)."""
        self.space.model.load_state_dict(state["model"])
        self.sampler.load_state_dict(state["sampler"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_weights(state)
        self.shared_optim.load_state_dict(state["shared_optim"])
        if self.reg is not None and state["regularizer"]:
            self.reg.load_state_dict(state["regularizer"])
        self.epoch = state["epoch"]
        self.shared_step = state["shared_step"]
        self.space.load_state_dict(state["space"])
        self.best = state["best"]
        self.nonfinite_before = state["nonfinite_total"] - self.guard.total - self.sampler.skipped
        self.elapsed_before = state["elapsed_s"]
        self.started = time.time()
        set_rng_state(state["rng"])

    def save_mid_epoch(self) -> str:
        """``--save_on_signal``: ``latest.pt`` part-way through the epoch; returns what it holds."""
        if self.run is None:
            return "nothing saved (no run directory)"
        bad = self.nonfinite_state()
        if bad is not None:
            return f"nothing more saved ({bad} is not finite); last good checkpoint: {last_checkpoint(self.run)}"
        path = self.run.save_checkpoint({**self.state_dict(), "mid_epoch": True}, self.epoch, numbered=False, keep=0)
        return mid_epoch_saved(path, self.epoch, f"{self.phase} (shared step {self.shared_step})")

    def save_checkpoint(self, numbered: bool) -> None:
        if self.run:
            self.run.save_checkpoint(self.state_dict(), self.epoch - 1, numbered, self.cfg.max_save_num)
