"""The micro-CNN search space as a trainer plug-in: image streams, losses, rewards, drawings.

Errors, rewards, Fisher batches and evaluations run the shared model in eval mode, as the protocol
asks; its batch norms nevertheless normalise with the batch's own statistics (``models.cnn`` explains
why), so an evaluation depends on the weights and on the images batched together: the forgetting
metric's batches are fixed, and validation/test splits are read in one fixed, shuffled order.

Data-parallel: each rank reads its share of every batch (``data.image_stream``) and counts are summed
over the ranks. Batch norms normalise with the statistics of a rank's share (no synchronised batch
norm), so a run on N ranks is not the same computation as one process with the same global batch,
as with any data-parallel CNN; the recurrent space has no such term and matches exactly.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from data.image import ImageData
from data.image_stream import BatchStream, Preprocess, iterate_split, mixed_seed
from distributed import comm
from distributed.context import world
from models import cnn
from models.cnn import CNNArch, CNNStyle, SharedCNN
from spaces.base import Loss, OptimSpec, Retraining, SpacePlugin, pick
from utils import UserError, render_dot

log = logging.getLogger("wpl")

PAPER_OPS = ("identity", "avg3x3", "max3x3", "depthwise_3x3", "depthwise_5x5")
MIN_EVAL_BATCH = 16  # test batches smaller than this (the paper command's size) give noisy batch statistics
AUTO_EVAL_IMAGES = {"cuda": 1024}  # --cnn_eval_images=-1 per device type (others: 0, one batch per forward)
STREAM_SALT = {"train": 1, "fisher": 2, "reward": 3, "fixed": 4, "evaluate": 6}  # separates the streams' seeds


@dataclass(frozen=True)
class CNNSpaceConfig:
    """The options a micro-CNN search space is built from (``builders`` fills it; tests use ``config.defaults``).

    The options' defaults are the paper code's model (``models.cnn``'s table names each choice and its
    ENAS value) and ENAS's micro search optimiser (Nesterov SGD, cosine lr 0.05 -> 0.0005).
    """

    num_blocks: int
    cnn_final_filter_size: int
    cnn_num_modules: int
    cnn_num_repeat_normal: int
    shared_cnn_normal_types: tuple[str, ...]
    shared_cnn_reduce_types: tuple[str, ...]
    cnn_stem: bool
    cnn_cell_inputs: str
    cnn_depthwise: str
    cnn_node_combine: str
    cnn_cell_output: str
    cnn_classifier: str
    cnn_channels_last: bool
    cnn_eval_images: int
    cnn_cudnn_benchmark: bool
    batch_size: int
    test_batch_size: int
    forgetting_eval_batches: int
    num_workers: int
    random_seed: int
    shared_cnn_lr: float
    shared_cnn_lr_min: float
    shared_cnn_momentum: float
    shared_cnn_l2_reg: float
    shared_cnn_grad_clip: float


def cnn_style(cfg: CNNSpaceConfig) -> CNNStyle:
    return CNNStyle(stem=cfg.cnn_stem, cell_inputs=cfg.cnn_cell_inputs, depthwise=cfg.cnn_depthwise,
                    node_combine=cfg.cnn_node_combine, cell_output=cfg.cnn_cell_output, classifier=cfg.cnn_classifier)


class CNNSpace:
    """ENAS micro cells on an image dataset; the metric is accuracy in percent, the error 100 - it."""

    metric = "acc"
    error_unit = "error-rate points (100 - accuracy %)"

    def __init__(self, data: ImageData, cfg: CNNSpaceConfig, device: torch.device) -> None:
        self._cfg, self.data = cfg, data
        self.normal_ops, self.reduce_ops = list(cfg.shared_cnn_normal_types), list(cfg.shared_cnn_reduce_types)
        self.model = SharedCNN(data.channels, len(data.classes), cfg.num_blocks, cfg.cnn_final_filter_size,
                               cfg.cnn_num_modules, cfg.cnn_num_repeat_normal, self.normal_ops, self.reduce_ops,
                               cnn_style(cfg), image_size=data.size, channels_last=cfg.cnn_channels_last).to(device)
        self._preprocess = Preprocess(data, device)
        self._eval_images = eval_images(cfg.cnn_eval_images, device)
        if device.type == "cuda" and cfg.cnn_cudnn_benchmark and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True  # process-wide; only convolutions on CUDA read it
        seed, workers = cfg.random_seed, cfg.num_workers
        self._streams = {
            "train": BatchStream(data.train, cfg.batch_size, self._preprocess, seed=seed, salt=STREAM_SALT["train"],
                                 augment=True, num_workers=workers),
            "fisher": BatchStream(data.valid, cfg.batch_size, self._preprocess, seed=seed, salt=STREAM_SALT["fisher"],
                                  augment=False, num_workers=workers),
            "reward": BatchStream(data.valid, cfg.batch_size, self._preprocess, seed=seed, salt=STREAM_SALT["reward"],
                                  augment=False, num_workers=workers),
        }
        self.fixed_batches = self._fixed_batches()

    def _fixed_batches(self) -> list[tuple[Tensor, Tensor]]:
        """The forgetting metric's validation batches: a seeded choice, decoded once and kept on the device."""
        valid, bs = self.data.valid, self._cfg.batch_size
        n = max(1, min(self._cfg.forgetting_eval_batches, len(valid) // bs))
        generator = torch.Generator().manual_seed(mixed_seed(self._cfg.random_seed, STREAM_SALT["fixed"]))
        picked = torch.randperm(len(valid), generator=generator)[: n * bs].view(n, bs)[:, world().part(bs)]
        batches = []
        for indices in picked:
            images, labels = valid.__getitems__(indices.tolist())
            batches.append((self._preprocess(images), labels.to(self._preprocess.device)))
        return batches

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    def train_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch's worth of augmented training batches (images on the device, labels), drawn from the
        resumable training stream the search reads too (its position is in ``state_dict``)."""
        stream = self._streams["train"]
        for _ in range(len(self.data.train) // self._cfg.batch_size):
            yield stream.next()

    # ------------------------------------------------------------------------ architectures
    @property
    def decision_sizes(self) -> list[int]:
        return cnn.decision_sizes(self._cfg.num_blocks, len(self.normal_ops), len(self.reduce_ops))

    def decode(self, tokens: Sequence[int]) -> CNNArch:
        return cnn.decode(tokens, self.normal_ops, self.reduce_ops)

    def encode(self, arch: CNNArch) -> list[int]:
        return cnn.encode(arch, self.normal_ops, self.reduce_ops)

    def arch_from_dict(self, d: dict[str, Any]) -> CNNArch:
        arch = CNNArch.from_dict(d)
        if arch.num_blocks != self._cfg.num_blocks:
            raise ValueError(f"architecture has {arch.num_blocks} nodes per cell but --num_blocks={self._cfg.num_blocks}")
        for kind, ops in (("normal", self.normal_ops), ("reduce", self.reduce_ops)):
            unused = sorted({op for node in arch.cells()[kind] for _, op in node} - set(ops))
            if unused:
                raise ValueError(f"{kind} cell uses {unused}, not among this search's {kind} ops {ops}")
        return arch

    def random_arch(self, generator: torch.Generator) -> CNNArch:
        tokens = [int(torch.randint(n, (1,), generator=generator)) for n in self.decision_sizes]
        return self.decode(tokens)

    def wpl_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.model.op_groups()

    def groups_for(self, arch: CNNArch) -> list[str]:
        return self.model.groups_for(arch)

    def optim_spec(self) -> OptimSpec:
        c = self._cfg
        return OptimSpec(lr=c.shared_cnn_lr, lr_min=c.shared_cnn_lr_min, weight_decay=c.shared_cnn_l2_reg,
                         grad_clip=c.shared_cnn_grad_clip, momentum=c.shared_cnn_momentum,
                         nesterov=c.shared_cnn_momentum > 0, schedule="cosine")

    # ------------------------------------------------------------------------------ losses
    def _stream_loss(self, stream: str, arch: CNNArch) -> Loss:
        images, labels = self._streams[stream].next()
        logits = self.model(images, arch)
        ce = F.cross_entropy(logits, labels)
        return Loss(ce, ce, (logits.detach().argmax(1) == labels).float().mean(), logits)

    def train_loss(self, arch: CNNArch) -> Loss:
        """The next augmented training batch, batch norms in training mode."""
        self.model.train()
        return self._stream_loss("train", arch)

    def fisher_loss(self, arch: CNNArch) -> Loss:
        """The next validation batch, eval mode, with gradients."""
        self.model.eval()
        return self._stream_loss("fisher", arch)

    def _count_correct(self, arch: CNNArch, batches: Any, model: nn.Module | None = None) -> tuple[int, int]:
        return self._start_count(arch, batches, model)()

    @torch.inference_mode()
    def _start_count(self, arch: CNNArch, batches: Any, model: nn.Module | None = None) -> Callable[[], tuple[int, int]]:
        """The forwards queued on the device; the call it returns waits for them: (correct, total)."""
        correct, total = queue_count(self.model if model is None else model, arch, batches, self._eval_images,
                                     self._preprocess.device)

        def finish() -> tuple[int, int]:
            correct_all, total_all = comm.sum_values([int(correct), total])  # one host synchronisation per call
            return int(correct_all), int(total_all)

        return finish

    def error(self, arch: CNNArch) -> float:
        """Error rate in percent on the fixed forgetting batches (eval mode)."""
        correct, total = self._count_correct(arch, self.fixed_batches)
        return 100.0 - 100.0 * correct / total

    def reward(self, arch: CNNArch, num_batches: int, reward_c: float, square: bool) -> tuple[float, float]:
        """``reward_c * acc`` (or ``* acc**2``) with acc the fraction correct on the next validation
        batches; the returned metric is that accuracy in percent, the unit of every other ``acc`` logged."""
        return self.start_reward(arch, num_batches, reward_c, square)()

    def start_reward(self, arch: CNNArch, num_batches: int, reward_c: float, square: bool
                     ) -> Callable[[], tuple[float, float]]:
        """``reward``'s forwards queued on the device; the call it returns waits for them (as the RNN's)."""
        stream = self._streams["reward"]
        counting = self._start_count(arch, [stream.next() for _ in range(num_batches)])

        def finish() -> tuple[float, float]:
            correct, total = counting()
            acc = correct / total
            return reward_c * (acc**2 if square else acc), 100.0 * acc

        return finish

    def evaluate(self, arch: CNNArch, split: str, model: nn.Module | None = None) -> dict[str, float]:
        """Accuracy in percent over the whole split, un-augmented, eval mode, class-mixed batches
        (``model``: another model of ``arch``, default the shared one)."""
        if split == "valid":
            images, batch_size = self.data.valid, self._cfg.batch_size
        else:
            if self.data.test is None:
                raise UserError(f"dataset {self.data.name!r} has no test split: add test/<class>/ images beside train/")
            images, batch_size = self.data.test, self._cfg.test_batch_size
        seed = mixed_seed(self._cfg.random_seed, STREAM_SALT["evaluate"])
        batches = iterate_split(images, batch_size, self._preprocess, self._cfg.num_workers, seed)
        correct, total = self._count_correct(arch, batches, model)
        return {f"{split}_acc": 100.0 * correct / total, f"{split}_images": total}

    # ----------------------------------------------------------------------------- drawing
    def draw(self, arch: CNNArch, path: Path) -> Path:
        return render_dot(cnn_dot(arch, self._cfg.cnn_cell_output), path)

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {name: s.state_dict() for name, s in self._streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, s in self._streams.items():
            s.load_state_dict(state[name])


def eval_images(option: int, device: torch.device) -> int:
    """``--cnn_eval_images`` resolved: ``-1`` is the device type's default (``AUTO_EVAL_IMAGES``)."""
    return option if option >= 0 else AUTO_EVAL_IMAGES.get(device.type, 0)


def queue_count(model: nn.Module, arch: CNNArch, batches: Iterable[tuple[Tensor, Tensor]], max_images: int,
                device: torch.device) -> tuple[Tensor, int]:
    """Eval-mode forwards of ``batches`` (run together up to ``max_images``) queued on ``device``: the count of
    correct predictions, still on the device (reading it waits for them), and the number of images."""
    model.eval()
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    for images, labels, groups in run_together(batches, max_images):
        with cnn.batched(model, groups):
            correct += (model(images, arch).argmax(1) == labels).sum()
        total += len(labels)
    return correct, total


def run_together(batches: Iterable[tuple[Tensor, Tensor]], max_images: int) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Consecutive batches of one size concatenated, up to ``max_images`` per group (at least one batch):
    ``(images, labels, number of batches)``, for ``SharedCNN.batched``. Why: on a GPU the micro-CNN's
    inference is launch-bound, and the reward's 20 batches then cost about what one does."""
    pending: list[tuple[Tensor, Tensor]] = []
    for images, labels in batches:
        if pending and (len(images) != len(pending[0][0]) or (len(pending) + 1) * len(images) > max_images):
            yield _joined(pending)
            pending = []
        pending.append((images, labels))
    if pending:
        yield _joined(pending)


def _joined(batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, int]:
    if len(batches) == 1:
        return batches[0][0], batches[0][1], 1
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), len(batches)


def cnn_dot(arch: CNNArch, output: str) -> str:
    """Graphviz source of both cells, one cluster each: inputs, nodes, op-labelled edges, output."""
    lines = ["digraph arch {", '  rankdir=LR; node [fontname="Helvetica", style=filled]; edge [fontname="Helvetica", fontsize=10];']
    titles = {"normal": "normal cell", "reduce": "reduction cell (inputs read with stride 2)"}
    for kind, cell in arch.cells().items():
        lines += [f"  subgraph cluster_{kind} {{", f'    label="{titles[kind]}";',
                  f'    {kind}_in0 [label="c[k-2]", shape=box, fillcolor=lightskyblue];',
                  f'    {kind}_in1 [label="c[k-1]", shape=box, fillcolor=lightskyblue];',
                  f'    {kind}_out [label="c[k] ({output})", shape=box, fillcolor=lightgreen];']
        names = [f"{kind}_in0", f"{kind}_in1"] + [f"{kind}_n{j}" for j in range(len(cell))]
        for j, node in enumerate(cell):
            lines.append(f'    {kind}_n{j} [label="{j}", shape=ellipse, fillcolor=white];')
            lines += [f'    {names[i]} -> {kind}_n{j} [label="{op}"];' for i, op in node]
        outputs = [len(cell) - 1] if output == "last" else cnn.loose_ends(cell)
        lines += [f"    {kind}_n{j} -> {kind}_out;" for j in outputs]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ from the options
def cnn_ops(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The normal and reduction cells' op lists, checked (``--shared_cnn_types`` unless overridden per cell)."""
    if args.search_mode != "micro":
        raise UserError(f"--search_mode={args.search_mode} is not implemented: only the micro search space is")
    ops = {kind: tuple(getattr(args, f"shared_cnn_{kind}_types") or args.shared_cnn_types) for kind in ("normal", "reduce")}
    for kind, names in ops.items():
        unknown = sorted(set(names) - set(cnn.OPS))
        if unknown or len(set(names)) != len(names):
            raise UserError(f"{kind} cell ops {list(names)}: " + (f"unknown {unknown}; known: {', '.join(cnn.OPS)}"
                                                                    if unknown else "each op may appear once"))
    return ops


def from_options(args: argparse.Namespace, device: torch.device) -> CNNSpace:
    """The micro-CNN space the options describe (``spaces.SPACES``' entry): op lists checked, dataset loaded,
    model built."""
    from data.image import load_images

    ops = cnn_ops(args)
    start = time.time()
    data = load_images(args.data_dir, args.dataset, args.valid_size, args.random_seed)
    test = len(data.test) if data.test is not None else "none"
    log.info("images %s: %d classes, %dx%dx%d, train %d / valid %d (%s) / test %s (%.1fs)", data.name,
             len(data.classes), data.channels, *data.size, len(data.train), len(data.valid),
             "held out of train" if data.valid_held_out else "its own split", test, time.time() - start)
    cfg = pick(CNNSpaceConfig, args, shared_cnn_normal_types=ops["normal"], shared_cnn_reduce_types=ops["reduce"])
    if cfg.test_batch_size < MIN_EVAL_BATCH:
        log.warning("--test_batch_size=%d: the shared CNN normalises with batch statistics, so test batches "
                    "under %d images lower its test accuracy", cfg.test_batch_size, MIN_EVAL_BATCH)
    try:
        return CNNSpace(data, cfg, device)
    except ValueError as err:
        raise UserError(f"cannot build the micro CNN: {err}") from err


def retrain_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """A retrain's network: ``--retrain_filters`` initial filters doubled per module, ``--retrain_layers``."""
    return {"cnn_final_filter_size": args.retrain_filters * 2 ** (args.cnn_num_modules - 1),
            "cnn_num_repeat_normal": args.retrain_layers, "batch_size": args.retrain_cnn_batch_size,
            "test_batch_size": args.retrain_cnn_batch_size}


def retrain_optim(args: argparse.Namespace) -> OptimSpec:
    """DARTS's: SGD with Nesterov momentum, cosine lr to ``--retrain_cnn_lr_min``."""
    return OptimSpec(lr=args.retrain_cnn_lr, lr_min=args.retrain_cnn_lr_min, weight_decay=args.retrain_cnn_l2_reg,
                     grad_clip=args.retrain_cnn_grad_clip, momentum=args.retrain_cnn_momentum,
                     nesterov=args.retrain_cnn_momentum > 0, schedule="cosine")


PLUGIN = SpacePlugin(build=from_options, retraining=Retraining(recipe="cnn", sizes=retrain_sizes, optim=retrain_optim))
