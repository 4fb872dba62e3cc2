"""Final training: one architecture trained from scratch, with no controller and no WPL (``--mode=retrain``).

    python main.py --mode=retrain --load_path=logs/ptb_search --comment=final     # the search's best_arch.json
    python main.py --mode=retrain --arch=path/to/best_arch.json --comment=final
    python main.py --mode=retrain --arch=random --random_seed=3 --comment=random3  # random-search baseline
    python main.py --mode=test --load_path=logs/ptb_final                          # re-evaluate the best weights

The model is the search space's shared model, built at the retrain's sizes with fresh weights and then
pruned to the architecture: every RNN edge and CNN op the architecture never runs is deleted. The
equations therefore stay those of models/rnn.py and models/cnn.py, and the pruned model's state_dict
keys are a subset of the shared model's, so shared weights transfer by name (``load_shared_weights``).

The search run's space and regularisation (node count, activations or ops, dropouts, ...) come from its
params.json when ``--load_path`` names it or ``--arch`` names a file inside it; explicit options win.
Recipes (config.py's "retrain" group says which source each default follows):

* RNN: ENAS's final PTB training (SGD lr 20, batch 64, BPTT 35, clip 0.25, L2 5e-7) with AWD-LSTM's
  variable BPTT and NT-ASGD: once validation is worse than the best but the last ``nonmono`` epochs,
  the weights are averaged over every later step and the average is what is validated and kept.
* micro-CNN: DARTS's CIFAR-10 evaluation (cosine lr, weight decay, cutout, auxiliary head after the last
  reduction cell), Nesterov momentum as ENAS.

Run directory ``<log_dir>/<dataset>_<comment>/``: params.json, arch.json, train.log, metrics.jsonl,
TensorBoard events, networks/arch.png, checkpoints/{latest,epoch_XXXX,best}.pt and test_results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import builders
import config
from engine import MAX_NONFINITE_IN_A_ROW, NonFiniteLoss, build_optimizer, scheduled_lr
from data.image import mixed_seed
from data.text import get_batch
from models.cnn import CNNArch, SharedCNN, live_nodes, loose_ends
from models.rnn import SharedRNN
from models.rnn_arch import RNNArch
from models.space import OptimSpec, SearchSpace
from runlog import RunDir, load_checkpoint, resolve_checkpoint
from stopping import Stopped, critical
from utils import (UserError, atomic_write_bytes, load_json, rng_state, save_json, seed_everything, set_rng_state,
                   setup_logging)

log = logging.getLogger("wpl")

RECIPE_EPOCHS = {"rnn": 500, "micro_cnn": 600}  # AWD-LSTM on PTB; DARTS on CIFAR-10
RESUME_KEYS = config.RUNTIME_KEYS | {"retrain_epochs"}  # a resumed retrain may be given more epochs
TEST_KEYS = (config.RUNTIME_KEYS - {"dataset"}) | {"test_batch_size"}
CUTOUT_SALT = 5  # separates the cutout generator's seeds from data.image's streams


# ------------------------------------------------------------------------------- architectures
def random_arch(space: SearchSpace, seed: int) -> Any:
    """A uniformly random architecture of ``space``, the same for the same seed (random-search baseline)."""
    return space.random_arch(torch.Generator().manual_seed(seed))


def read_arch_dict(path: Path) -> dict[str, Any]:
    """The architecture in a JSON file: ``{"arch": {...}, ...}`` (best_arch.json, arch.json) or a bare dict."""
    data = load_json(path)
    arch = data.get("arch", data) if isinstance(data, dict) else None
    if not isinstance(arch, dict):
        raise UserError(f"{path} holds no architecture")
    return arch


def arch_shape(d: dict[str, Any], origin: str) -> dict[str, Any]:
    """The network type and node count an architecture dict implies (so they need not be repeated as options)."""
    if d.get("type") == "rnn" and isinstance(d.get("activations"), list):
        return {"network_type": "rnn", "num_blocks": len(d["activations"])}
    if d.get("type") == "micro_cnn" and isinstance(d.get("normal"), list):
        return {"network_type": "micro_cnn", "num_blocks": len(d["normal"])}
    raise UserError(f"{origin}: not an architecture of this project (type={d.get('type')!r})")


def make_arch(space: SearchSpace, d: dict[str, Any] | None, seed: int) -> Any:
    """``d`` checked against ``space``, or a random architecture of it when ``d`` is None."""
    if d is None:
        return random_arch(space, seed)
    try:
        return space.arch_from_dict(d)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"not a valid architecture for this search space: {err}") from err


def arch_from_option(space: SearchSpace, value: str, seed: int) -> Any:
    """``--arch``'s architecture: ``random`` (seeded by ``seed``) or a JSON file."""
    return make_arch(space, None if value == "random" else read_arch_dict(Path(value)), seed)


def _run_dir_of(path: Path) -> Path:
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def search_run_of(args: argparse.Namespace) -> Path | None:
    """The search run a retrain inherits from: ``--load_path``, else the folder of ``--arch`` if it holds params.json."""
    if args.load_path:
        path = Path(args.load_path)
        if not path.exists():
            raise UserError(f"--load_path={path} does not exist")
        return _run_dir_of(path)
    if args.arch and args.arch != "random" and (Path(args.arch).parent / "params.json").is_file():
        return Path(args.arch).parent
    return None


def with_search_config(args: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """``args`` with the search run's space and regularisation options where the command line gave none."""
    run = search_run_of(args)
    if run is None:
        return args
    params = run / "params.json"
    if not params.is_file():
        raise UserError(f"{params} is missing: --load_path must name a search run directory or checkpoint")
    saved = load_json(params)
    saved = {**{k: v for k, v in config.LEGACY_VALUES.items() if k not in saved}, **saved}  # what older runs did
    inherited = {k: saved[k] for k in config.SEARCH_KEYS - explicit if k in saved}
    log.info("search configuration from %s: %s", params, ", ".join(f"{k}={v}" for k, v in sorted(inherited.items())))
    return argparse.Namespace(**{**vars(args), **inherited})


def choose_arch(args: argparse.Namespace, explicit: set[str]) -> tuple[argparse.Namespace, dict[str, Any] | None, str]:
    """The architecture to retrain (None: draw a random one) and where it came from; ``args`` gains its shape."""
    if args.arch == "random":
        return args, None, f"random (seed {args.random_seed})"
    if args.arch:
        path = Path(args.arch)
    elif args.load_path:
        path = search_run_of(args) / "best_arch.json"  # type: ignore[operator]
        if not path.is_file():
            raise UserError(f"{path} is missing: run --mode=derive on the search first, or pass --arch=FILE")
    else:
        raise UserError("--mode=retrain needs --arch=FILE, --arch=random or --load_path=<search run>")
    d = read_arch_dict(path)
    shape = {k: v for k, v in arch_shape(d, str(path)).items() if k not in explicit}
    return argparse.Namespace(**{**vars(args), **shape}), d, str(path)


# ------------------------------------------------------------------------------------- models
def prune_to_arch(model: nn.Module, arch: Any) -> nn.Module:
    """Delete, in place, every parameterised part of a shared model that ``arch`` never runs.

    The remaining parameters keep their names, so the model still computes ``arch`` with the shared
    model's own forward and its state_dict is the shared one restricted to ``arch``.
    """
    if isinstance(arch, RNNArch):
        used = {SharedRNN.edge_name(i, j) for i, j in arch.edges}
        for name in [n for n in model.edges if n not in used]:
            del model.edges[name]
        return model
    for cell in model.cells:
        spec = arch.reduce if cell.reduction else arch.normal
        live = live_nodes(spec, cell.output)  # with output "last", nodes the output does not depend on never run
        for j, node in enumerate(spec):
            for i, ops in enumerate(cell.nodes[j]):
                for op in [op for op in ops if (i, op) not in node or j not in live]:
                    del ops[op]
        read = {i for j in live for i, _ in spec[j]}
        if 0 not in read:  # a cell input nobody reads is never calibrated
            cell.pre0 = nn.Identity()
        if 1 not in read:
            cell.pre1 = nn.Identity()
    return model


def load_shared_weights(model: nn.Module, shared_state: dict[str, Tensor]) -> None:
    """Give a pruned model the weights of a shared model (its state_dict), matched by name."""
    model.load_state_dict({name: shared_state[name] for name in model.state_dict()})


class AuxHead(nn.Module):
    """DARTS's auxiliary classifier (Szegedy et al.), pooling adaptively to 2x2 so any image size fits."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class CNNWithAux(nn.Module):
    """A pruned SharedCNN and, optionally, an auxiliary head reading the last reduction cell (training only)."""

    def __init__(self, net: SharedCNN, num_classes: int, aux: bool) -> None:
        super().__init__()
        self.net = net
        reductions = [k for k, cell in enumerate(net.cells) if cell.reduction]
        if aux and not reductions:
            raise UserError("--retrain_aux_weight > 0 needs a reduction cell (--cnn_num_modules >= 2), or pass 0")
        self.aux_after = reductions[-1] if aux else -1
        self.aux = AuxHead(net.cells[self.aux_after].channels, num_classes) if aux else None

    def forward(self, images: Tensor, arch: CNNArch) -> Tensor:
        return self.net(images, arch)

    def forward_train(self, images: Tensor, arch: CNNArch) -> tuple[Tensor, Tensor | None]:
        """Logits and auxiliary logits; the SharedCNN's forward runs unchanged, its cell output is tapped by a hook."""
        if self.aux is None:
            return self.net(images, arch), None
        tapped: list[Tensor] = []
        handle = self.net.cells[self.aux_after].register_forward_hook(lambda _m, _i, out: tapped.append(out))
        try:
            logits = self.net(images, arch)
        finally:
            handle.remove()
        return logits, self.aux(tapped[0])


def count_parameters(model: nn.Module, arch: Any) -> int:
    """Parameters the architecture's inference uses: tied weights once, no auxiliary head (as DARTS counts),
    and no concat-projection columns of CNN nodes that are not cell outputs (they are sliced away)."""
    net = model.net if isinstance(model, CNNWithAux) else model
    total = sum(p.numel() for p in net.parameters())
    if isinstance(arch, CNNArch):
        for cell in net.cells:
            spec = arch.reduce if cell.reduction else arch.normal
            if cell.output == "concat":
                total -= cell.channels**2 * (len(spec) - len(loose_ends(spec)))
    return total


def sized_options(args: argparse.Namespace) -> argparse.Namespace:
    """The options the space is built from: the retrain's sizes in place of the search's."""
    if args.network_type == "rnn":
        sizes = {"shared_embed": args.retrain_embed, "shared_hid": args.retrain_hid,
                 "batch_size": args.retrain_batch_size, "shared_rnn_max_length": args.retrain_bptt}
    else:
        sizes = {"cnn_final_filter_size": args.retrain_filters * 2 ** (args.cnn_num_modules - 1),
                 "cnn_num_repeat_normal": args.retrain_layers, "batch_size": args.retrain_cnn_batch_size,
                 "test_batch_size": args.retrain_cnn_batch_size}
    return argparse.Namespace(**{**vars(args), **sizes})


def build_fixed(args: argparse.Namespace, arch_dict: dict[str, Any] | None, device: torch.device) -> tuple[SearchSpace, Any]:
    """The space (data, evaluation) whose model is the architecture alone, with fresh weights."""

    if args.network_type == "rnn" and args.tie_weights and args.retrain_embed != args.retrain_hid:
        raise UserError(f"--tie_weights needs --retrain_embed == --retrain_hid (got {args.retrain_embed} and {args.retrain_hid})")
    try:
        space = builders.build_space(sized_options(args), device)
    except ValueError as err:
        raise UserError(f"cannot build the model: {err}") from err
    arch = make_arch(space, arch_dict, args.random_seed)
    prune_to_arch(space.model, arch)
    if isinstance(arch, CNNArch):
        space.model = CNNWithAux(space.model, len(space.data.classes), args.retrain_aux_weight > 0).to(device)
    log.info("architecture %s: %.3fM parameters", arch, count_parameters(space.model, arch) / 1e6)
    return space, arch


# ----------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RetrainConfig:
    epochs: int
    save_epoch: int = 5
    max_save_num: int = 4
    log_step: int = 50
    bptt: int = 35  # RNN
    nonmono: int = 5  # RNN
    cutout: int = 0  # CNN
    aux_weight: float = 0.0  # CNN
    seed: int = 12345


def retrain_config(args: argparse.Namespace) -> RetrainConfig:
    return RetrainConfig(epochs=args.retrain_epochs or RECIPE_EPOCHS[args.network_type], save_epoch=args.save_epoch,
                         max_save_num=args.max_save_num, log_step=args.log_step, bptt=args.retrain_bptt,
                         nonmono=args.retrain_nonmono, cutout=args.retrain_cutout, aux_weight=args.retrain_aux_weight,
                         seed=args.random_seed)


def optim_spec(args: argparse.Namespace) -> OptimSpec:
    if args.network_type == "rnn":  # constant lr: the "decay" schedule with factor 1
        return OptimSpec(lr=args.retrain_lr, weight_decay=args.retrain_l2_reg, grad_clip=args.retrain_grad_clip)
    return OptimSpec(lr=args.retrain_cnn_lr, lr_min=args.retrain_cnn_lr_min, weight_decay=args.retrain_cnn_l2_reg,
                     grad_clip=args.retrain_cnn_grad_clip, momentum=args.retrain_cnn_momentum,
                     nesterov=args.retrain_cnn_momentum > 0, schedule="cosine")


def nonmono_trigger(history: list[float], current: float, nonmono: int) -> bool:
    """NT-ASGD's switch (Merity et al. 2018): ``current`` is worse than the best validation score before
    the last ``nonmono`` epochs (lower is better; ``nonmono`` <= 0 never switches)."""
    return nonmono > 0 and len(history) > nonmono and current > min(history[:-nonmono])


def sample_seq_len(bptt: int) -> int:
    """AWD-LSTM's BPTT length: ``bptt`` (p = 0.95) or half of it, then ~N(that, 5), at least 5.

    Drawn from Python's ``random``, whose whole state a checkpoint holds (numpy's cached Gaussian is not
    saved by utils.rng_state, so ``np.random.normal`` would break resume equality)."""
    mean = bptt if random.random() < 0.95 else bptt / 2
    return max(5, int(random.normalvariate(mean, 5)))


def cutout(images: Tensor, length: int, generator: torch.Generator) -> Tensor:
    """Zero a ``length`` x ``length`` square (clipped at the borders) at a random centre of each image (DeVries
    & Taylor 2017), after normalisation as DARTS does."""
    n, _, h, w = images.shape
    cy = torch.randint(h, (n, 1), generator=generator)
    cx = torch.randint(w, (n, 1), generator=generator)
    rows = (torch.arange(h) >= cy - length // 2) & (torch.arange(h) < cy + length // 2)
    cols = (torch.arange(w) >= cx - length // 2) & (torch.arange(w) < cx + length // 2)
    keep = ~(rows[:, :, None] & cols[:, None, :])
    return images * keep[:, None].to(images.device, images.dtype)


class Retrainer:
    """The epoch loop both network types share: train, validate, keep the best weights, checkpoint.

    Subclasses supply ``train_epoch``; the RNN one also switches to weight averaging (NT-ASGD), in which
    case the averaged weights are the ones validated, kept as best and tested.
    """

    def __init__(self, space: SearchSpace, arch: Any, spec: OptimSpec, cfg: RetrainConfig, run: RunDir,
                 config_dict: dict[str, Any]) -> None:
        self.space, self.arch, self.spec, self.cfg, self.run, self.config_dict = space, arch, spec, cfg, run, config_dict
        self.model = space.model
        self.optim = build_optimizer(spec, self.model.parameters(), "sgd")
        self.key = f"valid_{space.metric}"
        self.averaged: AveragedModel | None = None
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[float] = []  # validation score of every epoch
        self.best: dict[str, Any] | None = None
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.started = time.time()
        self.elapsed_before = 0.0
        self._window = torch.zeros(2, device=next(self.model.parameters()).device)  # loss sum and steps since the last log line

    # ------------------------------------------------------------------------------ helpers
    def improves(self, score: float) -> bool:
        """Whether a validation score beats the best so far (a non-finite one never does)."""
        if not math.isfinite(score):
            return False
        if self.best is None:
            return True
        return score < self.best["score"] if self.space.metric == "ppl" else score > self.best["score"]

    def start_averaging(self) -> None:
        """From now on every step updates a running average of the weights, the model validated and kept."""
        self.averaged = AveragedModel(self.model)

    def eval_model(self) -> nn.Module:
        return self.averaged.module if self.averaged is not None else self.model

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """The space evaluates ``space.model``: point it at the weights being validated for the duration."""
        self.space.model = self.eval_model()
        try:
            yield
        finally:
            self.space.model = self.model

    def evaluate(self, split: str) -> dict[str, float]:
        with self._evaluating():
            return self.space.evaluate(self.arch, split)

    def set_lr(self, lr: float) -> None:
        for group in self.optim.param_groups:
            group["lr"] = lr

    def update(self, loss: Tensor) -> bool:
        """One optimiser step on ``loss``, skipped when it is not finite (too many in a row stop the run)."""
        if not bool(torch.isfinite(loss)):
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            log.warning("non-finite loss at retrain step %d: update skipped (%d in a row)", self.step, self.nonfinite_in_row)
            if self.nonfinite_in_row >= MAX_NONFINITE_IN_A_ROW:
                raise NonFiniteLoss(f"{MAX_NONFINITE_IN_A_ROW} non-finite losses in a row at epoch {self.epoch}: "
                                    f"training diverged (try a smaller learning rate); last good checkpoint: "
                                    f"{self.run.latest_checkpoint() or 'none yet'}")
            return False
        self.nonfinite_in_row = 0
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.spec.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
        self.optim.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.step += 1
        self._log_step(loss.detach())
        return True

    def _log_step(self, loss: Tensor) -> None:
        """Progress line and TensorBoard scalars every ``log_step`` steps (one host synchronisation each)."""
        self._window += torch.stack([loss, torch.ones_like(loss)])
        if self.cfg.log_step <= 0 or self.step % self.cfg.log_step:
            return
        mean = float(self._window[0] / self._window[1])
        self._window.zero_()
        lr = self.optim.param_groups[0]["lr"]
        self.run.scalars({"retrain/loss": mean, "retrain/lr": lr}, self.step)
        log.info("| retrain epoch %3d | step %7d | lr %.3g | loss %.4f", self.epoch, self.step, lr, mean)

    # ---------------------------------------------------------------------------- the loop
    def train_epoch(self, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def after_validation(self, score: float) -> dict[str, Any]:
        """Hook after each validation, before ``score`` joins the history; returns extra metrics."""
        return {}

    def train(self) -> None:
        while self.epoch < self.cfg.epochs:
            self.run_epoch()

    def run_epoch(self) -> dict[str, Any]:
        epoch, t0 = self.epoch, time.time()
        record: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch)}
        result = self.evaluate("valid")
        score = result[self.key]
        record.update(result)
        if self.improves(score):
            self.best = {"epoch": epoch, "score": score}
            self.save_best()
        record.update(self.after_validation(score))
        self.history.append(score)
        self.epoch += 1
        best = self.best or {"epoch": None, "score": None}
        record.update({f"best_{self.key}": best["score"], "best_epoch": best["epoch"],
                       "nonfinite_losses": self.nonfinite_total, "epoch_s": time.time() - t0,
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
    def best_state(self) -> dict[str, Any]:
        """What ``--mode=test`` needs: the validated weights, the architecture and the configuration."""
        assert self.best is not None
        return {"format": 1, "kind": "retrain", "epoch": self.best["epoch"], "score": self.best["score"],
                "metric": self.key, "model": self.eval_model().state_dict(), "arch": self.arch.to_dict(),
                "config": self.config_dict}

    def save_best(self) -> None:
        state = self.best_state()
        atomic_write_bytes(self.best_path, lambda f: torch.save(state, f))

    @property
    def best_path(self) -> Path:
        return self.run.checkpoints / "best.pt"

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "kind": "retrain",
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "averaged": self.averaged.state_dict() if self.averaged is not None else None,
            "history": self.history,
            "best": self.best,
            "space": self.space.state_dict(),
            "rng": rng_state(),
            "nonfinite_total": self.nonfinite_total,
            "elapsed_s": self.elapsed_before + time.time() - self.started,
            "arch": self.arch.to_dict(),
            "config": self.config_dict,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        if state["averaged"] is not None:
            self.start_averaging()
            self.averaged.load_state_dict(state["averaged"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.best = list(state["history"]), state["best"]
        self.space.load_state_dict(state["space"])
        self.nonfinite_total = state["nonfinite_total"]
        self.elapsed_before = state["elapsed_s"]
        self.started = time.time()
        set_rng_state(state["rng"])


class RNNRetrainer(Retrainer):
    """AWD-LSTM's training loop on the pruned recurrent cell."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        model, data, bptt = self.model, self.space.train_data, self.cfg.bptt
        model.train()
        lr = scheduled_lr(self.spec, epoch, self.cfg.epochs)
        hidden = model.init_hidden(data.size(1))
        sums = torch.zeros(2, device=data.device)  # summed token cross-entropy, tokens
        pos = 0
        with tqdm(total=data.size(0) - 1, desc=f"retrain epoch {epoch}", leave=False, disable=None) as bar:
            while pos < data.size(0) - 2:
                seq_len = sample_seq_len(bptt)
                self.set_lr(lr * seq_len / bptt)  # a longer slice is a larger step's worth of tokens
                x, y = get_batch(data, pos, seq_len)
                out = model(x, hidden, self.arch)
                hidden = out.hidden.detach()
                ce = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
                if self.update(ce + self.space.regularizers(out)):  # the search's AR/TAR options
                    sums += torch.stack([ce.detach() * y.numel(), ce.new_tensor(y.numel())])
                pos += seq_len
                bar.update(x.size(0))
        self.set_lr(lr)
        loss = float(sums[0] / sums[1].clamp_min(1))
        return {"train_loss": loss, "train_ppl": math.exp(min(loss, 50.0)), "lr": lr}

    def after_validation(self, score: float) -> dict[str, Any]:
        if self.averaged is None and nonmono_trigger(self.history, score, self.cfg.nonmono):
            log.info("validation stopped improving (%.4g after best %.4g): averaging the weights from now on (NT-ASGD)",
                     score, min(self.history[: -self.cfg.nonmono]))
            self.start_averaging()
        return {"averaging": self.averaged is not None}


class CNNRetrainer(Retrainer):
    """DARTS's training loop: cosine lr per epoch, cutout, auxiliary loss."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        space, model = self.space, self.model
        lr = scheduled_lr(self.spec, epoch, self.cfg.epochs)
        self.set_lr(lr)
        model.train()
        stream = space.streams["train"]
        steps = len(space.data.train) // space.cfg.batch_size  # one pass, as the stream's own epoch
        sums = torch.zeros(3, device=space.preprocess.device)  # summed cross-entropy, correct, images
        for _ in tqdm(range(steps), desc=f"retrain epoch {epoch}", leave=False, disable=None):
            images, labels = stream.next()
            if self.cfg.cutout > 0:
                generator = torch.Generator().manual_seed(mixed_seed(self.cfg.seed, CUTOUT_SALT, self.step))
                images = cutout(images, self.cfg.cutout, generator)
            logits, aux = model.forward_train(images, self.arch)
            ce = F.cross_entropy(logits, labels)
            loss = ce + self.cfg.aux_weight * F.cross_entropy(aux, labels) if aux is not None else ce
            if self.update(loss):
                n = labels.numel()
                sums += torch.stack([ce.detach() * n, (logits.detach().argmax(1) == labels).sum().float(), ce.new_tensor(n)])
        total = sums.tolist()
        images = max(total[2], 1.0)
        return {"train_loss": total[0] / images, "train_acc": 100.0 * total[1] / images, "lr": lr}


# ---------------------------------------------------------------------------------- reporting
def report_test(space: SearchSpace, arch: Any, best: dict[str, Any], best_path: Path, run: RunDir) -> dict[str, Any]:
    """Test the best weights; write and print test_results.json."""
    space.model.load_state_dict(best["model"])
    result = space.evaluate(arch, "test")
    epochs = max((r["epoch"] for r in run.read_metrics()), default=-1) + 1
    result = {**result, "params": count_parameters(space.model, arch), "epochs": epochs, "best_epoch": best["epoch"],
              best["metric"]: best["score"], "arch": arch.to_dict(), "checkpoint": str(best_path), "weights": "retrained"}
    save_json(run.path / "test_results.json", result)
    shown = {k: v for k, v in result.items() if k.startswith(("test_", "valid_")) or k in ("params", "epochs", "best_epoch")}
    print(f"{arch}\n" + "\n".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    return result


# -------------------------------------------------------------------------------------- modes
def build_retrainer(args: argparse.Namespace, arch_dict: dict[str, Any] | None, device: torch.device, run: RunDir) -> Retrainer:
    space, arch = build_fixed(args, arch_dict, device)
    cls = RNNRetrainer if isinstance(arch, RNNArch) else CNNRetrainer
    return cls(space, arch, optim_spec(args), retrain_config(args), run, vars(args))


def mode_retrain(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    """``--mode=retrain``: train the architecture in a new run directory, then test its best weights."""

    args = with_search_config(args, explicit)
    run = RunDir(Path(args.log_dir) / builders.run_name(args), args.use_tensorboard)
    checkpoint = run.latest_checkpoint()
    state = None
    run.remove_stale_temps()
    if args.resume and checkpoint is not None:
        path, state = resolve_checkpoint(str(run.path), device)
        if state.get("kind") != "retrain":
            raise UserError(f"{path} is a search checkpoint: resume it with --mode=train")
        if not args.resume_with_new_params:
            args = builders.merge_config(state["config"], args, explicit, RESUME_KEYS)
        arch_dict, source = state["arch"], str(run.path / "arch.json")
        log.info("resuming %s from %s (epoch %d)", run.path, path, state["epoch"])
    else:
        if args.resume:
            log.info("--resume: no checkpoint in %s yet, starting a fresh run", run.path)
        elif checkpoint is not None or run.metrics_path.exists():
            raise UserError(f"{run.path} already holds a run: pass --resume=True to continue it, or another --comment")
        args, arch_dict, source = choose_arch(args, explicit)
    setup_logging(args.log_level, run.path / "train.log")
    seed_everything(args.random_seed, args.deterministic)
    retrainer = build_retrainer(args, arch_dict, device, run)
    if state is None:
        save_json(run.path / "arch.json", {"arch": retrainer.arch.to_dict(), "source": source})
        run.image("networks/arch", retrainer.space.draw(retrainer.arch, run.networks / "arch.png"), 0)
    else:
        try:
            retrainer.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(f"checkpoint does not fit this configuration: {str(err).splitlines()[0]}") from err
    if run.metrics_path.exists():
        run.truncate_metrics(retrainer.epoch, state.get("metrics_lines") if state is not None else 0)
    save_json(run.path / "params.json", vars(args))  # only once the checkpoint is known to fit
    log.info("retraining %s (%s) in %s on %s for %d epochs", retrainer.arch, source, run.path, device, retrainer.cfg.epochs)
    try:
        retrainer.train()
    except Stopped as stop:
        latest = run.latest_checkpoint()
        stop.comment = run.path.name[len(args.dataset) + 1:]
        stop.saved = f"{latest} holds epochs 0-{retrainer.epoch - 1}" if latest and retrainer.epoch else "nothing saved yet"
        raise
    finally:
        run.close()
    if retrainer.best is None:
        raise UserError(f"no epoch reached a finite validation score: nothing to test (see {run.metrics_path})")
    best = load_checkpoint(retrainer.best_path, device)
    report_test(retrainer.space, retrainer.arch, best, retrainer.best_path, run)


def is_retrain_run(load_path: str) -> bool:
    """Whether ``--load_path`` names a retrain run (its folder holds arch.json) rather than a search run."""
    return bool(load_path) and (_run_dir_of(Path(load_path)) / "arch.json").is_file()


def mode_test_retrained(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    """``--mode=test`` on a retrain run: rebuild the architecture from its best checkpoint and test it."""

    path = Path(args.load_path)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    state = load_checkpoint(path, device)
    if state.get("kind") != "retrain" or "score" not in state:
        raise UserError(f"{path} is not the best checkpoint of a retrain run (checkpoints/best.pt)")
    args = builders.merge_config(state["config"], args, explicit, TEST_KEYS)
    seed_everything(args.random_seed, args.deterministic)
    space, arch = build_fixed(args, state["arch"], device)
    report_test(space, arch, state, path, RunDir(_run_dir_of(path), use_tensorboard=False))
