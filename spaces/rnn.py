"""The recurrent-cell search space as a trainer plug-in: data streams, losses, rewards, drawings.

Data-parallel (``distributed``): a split is batchified into its ``batch_size`` columns as in one
process, and each rank keeps a contiguous block of ``batch_size / world`` of them, so the hidden state
a rank carries is its own columns' state and the ranks together see exactly the one-process batch.
Losses are means over a rank's columns (equal shares: their mean over ranks is the global mean);
rewards, errors and evaluations sum what each rank saw and reduce it.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from data.text import Corpus, batchify, get_batch
from distributed import comm
from distributed.context import world
from models import rnn_arch
from models.rnn import RNNOutput, SharedRNN
from models.rnn_arch import RNNArch
from models.token_loss import token_cross_entropy
from spaces.base import Loss, OptimSpec, Retraining, SpacePlugin, pick
from utils import UserError, render_dot

log = logging.getLogger("wpl")


@dataclass(frozen=True)
class RNNSpaceConfig:
    """The options an RNN search space is built from (``builders`` fills it; tests use ``config.defaults``)."""

    num_blocks: int
    shared_embed: int
    shared_hid: int
    shared_rnn_activations: tuple[str, ...]
    shared_dropout: float
    shared_dropoute: float
    shared_dropouti: float
    shared_wdrop: float
    tie_weights: bool
    rnn_next_state: str
    shared_wdrop_scope: str
    rnn_output_norm: str
    rnn_input_bias: bool
    batch_size: int
    test_batch_size: int
    shared_rnn_max_length: int
    forgetting_eval_batches: int
    activation_regularization: bool
    activation_regularization_amount: float
    temporal_activation_regularization: bool
    temporal_activation_regularization_amount: float
    norm_stabilizer_regularization: bool
    norm_stabilizer_regularization_amount: float
    norm_stabilizer_fixed_point: float
    shared_lr: float
    shared_l2_reg: float
    shared_grad_clip: float
    shared_decay: float
    shared_decay_after: float
    shared_lr_anneal: float


class TextStream:
    """A cursor over a batchified split that carries the hidden state from slice to slice.

    At the end of the split it wraps around to the start with a fresh (zero) state.
    """

    def __init__(self, data: Tensor, bptt: int) -> None:
        self.data = data
        self.bptt = bptt
        self.pos = 0
        self.hidden: Tensor | None = None

    def next(self, model: SharedRNN) -> tuple[Tensor, Tensor, Tensor]:
        if self.pos >= self.data.size(0) - 1:
            self.pos, self.hidden = 0, None
        x, y = get_batch(self.data, self.pos, self.bptt)
        self.pos += x.size(0)
        hidden = self.hidden if self.hidden is not None else model.init_hidden(self.data.size(1))
        return x, y, hidden

    def carry(self, hidden: Tensor) -> None:
        self.hidden = hidden.detach()

    def state_dict(self) -> dict[str, Any]:
        """The position and the hidden state of every column (gathered from all ranks: a collective)."""
        return {"pos": self.pos, "hidden": comm.gather_rows(self.hidden) if self.hidden is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Saved by any number of ranks: this rank takes its own columns' rows of the hidden state."""
        self.pos = int(state["pos"])
        hidden = state["hidden"]
        if hidden is not None and world().active:
            hidden = hidden[world().part(hidden.size(0))]
        self.hidden = hidden.to(self.data.device) if hidden is not None else None


class RNNSpace:
    """ENAS recurrent cells on a word-level corpus; the metric is perplexity."""

    metric = "ppl"
    error_unit = "nats (mean cross-entropy)"

    def __init__(self, corpus: Corpus, cfg: RNNSpaceConfig, device: torch.device) -> None:
        self._cfg = cfg
        self.activations = list(cfg.shared_rnn_activations)
        self.model = SharedRNN(
            corpus.ntokens, cfg.shared_embed, cfg.shared_hid, cfg.num_blocks,
            dropout=cfg.shared_dropout, dropoute=cfg.shared_dropoute, dropouti=cfg.shared_dropouti,
            wdrop=cfg.shared_wdrop, tie_weights=cfg.tie_weights, next_state=cfg.rnn_next_state,
            wdrop_scope=cfg.shared_wdrop_scope, output_norm=cfg.rnn_output_norm, input_bias=cfg.rnn_input_bias,
        ).to(device)
        bptt = cfg.shared_rnn_max_length
        # The batchified splits, (time, batch): public for loops that slice them their own way (variable BPTT).
        self.train_data = shard_columns(batchify(corpus.train, cfg.batch_size)).to(device)
        self.valid_data = shard_columns(batchify(corpus.valid, cfg.batch_size)).to(device)
        # Test columns are shared out when they divide evenly (the default test batch of 1 does not).
        self.test_sharded = cfg.test_batch_size % world().size == 0
        test = batchify(corpus.test, cfg.test_batch_size)
        self.test_data = (shard_columns(test) if self.test_sharded else test).to(device)
        self._streams = {
            "train": TextStream(self.train_data, bptt),
            "fisher": TextStream(self.valid_data, bptt),
            "reward": TextStream(self.valid_data, bptt),
        }
        # Fixed, evenly spread validation slices for the forgetting metric, each read from a zero state.
        last = self.valid_data.size(0) - 1
        n = max(1, min(cfg.forgetting_eval_batches, last // bptt))
        starts = torch.linspace(0, last - min(bptt, last), n).long().tolist()
        self.fixed_batches = [get_batch(self.valid_data, s, bptt) for s in starts]
        # On a GPU the forgetting metric reads its slices side by side, as one batch of their columns
        # (each column's tokens and state are independent of the others: the same sums, rounded in
        # another order): one forward, one synchronisation, instead of one each per slice.
        self.join_fixed_batches = device.type == "cuda"
        self._joined: list[tuple[Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------------ architectures
    @property
    def decision_sizes(self) -> list[int]:
        return rnn_arch.decision_sizes(self._cfg.num_blocks, len(self.activations))

    def decode(self, tokens: Sequence[int]) -> RNNArch:
        return rnn_arch.decode(tokens, self.activations)

    def encode(self, arch: RNNArch) -> list[int]:
        return rnn_arch.encode(arch, self.activations)

    def arch_from_dict(self, d: dict[str, Any]) -> RNNArch:
        arch = RNNArch.from_dict(d)
        if arch.num_nodes != self._cfg.num_blocks:
            raise ValueError(f"architecture has {arch.num_nodes} nodes but --num_blocks={self._cfg.num_blocks}")
        return arch

    def random_arch(self, generator: torch.Generator) -> RNNArch:
        tokens = [int(torch.randint(n, (1,), generator=generator)) for n in self.decision_sizes]
        return self.decode(tokens)

    def wpl_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.model.edge_groups()

    def groups_for(self, arch: RNNArch) -> list[str]:
        return [SharedRNN.edge_name(i, j) for i, j in arch.edges]

    def optim_spec(self) -> OptimSpec:
        c = self._cfg
        return OptimSpec(lr=c.shared_lr, weight_decay=c.shared_l2_reg, grad_clip=c.shared_grad_clip,
                         schedule="decay", decay=c.shared_decay, decay_after=c.shared_decay_after,
                         anneal=c.shared_lr_anneal)

    # ------------------------------------------------------------------------------ losses
    def regularizers(self, out: RNNOutput) -> Tensor:
        """The optional AR / TAR / norm-stabiliser terms; retraining adds the same ones."""
        c = self._cfg
        extra = out.raw.new_zeros(())
        if c.activation_regularization:
            extra = extra + c.activation_regularization_amount * out.dropped.pow(2).mean()
        if c.temporal_activation_regularization:
            extra = extra + c.temporal_activation_regularization_amount * (out.raw[1:] - out.raw[:-1]).pow(2).mean()
        if c.norm_stabilizer_regularization:
            norms = out.raw.norm(dim=-1)
            extra = extra + c.norm_stabilizer_regularization_amount * (norms - c.norm_stabilizer_fixed_point).pow(2).mean()
        return extra

    def _stream_loss(self, stream: TextStream, arch: RNNArch) -> Loss:
        x, y, hidden = stream.next(self.model)
        out = self.model(x, hidden, arch)
        stream.carry(out.hidden)
        ce = token_cross_entropy(out.logits.flatten(0, 1), y.flatten())
        return Loss(ce + self.regularizers(out), ce, None, out.logits)

    def train_loss(self, arch: RNNArch) -> Loss:
        self.model.train()
        return self._stream_loss(self._streams["train"], arch)

    def fisher_loss(self, arch: RNNArch) -> Loss:
        self.model.eval()
        return self._stream_loss(self._streams["fisher"], arch)

    @torch.inference_mode()
    def error(self, arch: RNNArch) -> float:
        self.model.eval()
        total, count = 0.0, 0.0
        for x, y in self._error_batches():
            out = self.model(x, self.model.init_hidden(x.size(1)), arch)
            total += float(F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
        total, count = comm.sum_values([total, count])
        return total / count

    def _error_batches(self) -> list[tuple[Tensor, Tensor]]:
        batches = self.fixed_batches
        if not self.join_fixed_batches or len({x.shape for x, _ in batches}) != 1:
            return batches
        if self._joined is None:
            self._joined = [(torch.cat([x for x, _ in batches], 1), torch.cat([y for _, y in batches], 1))]
        return self._joined

    def reward(self, arch: RNNArch, num_batches: int, reward_c: float, square: bool) -> tuple[float, float]:
        return self.start_reward(arch, num_batches, reward_c, square)()

    @torch.inference_mode()
    def start_reward(self, arch: RNNArch, num_batches: int, reward_c: float, square: bool
                     ) -> Callable[[], tuple[float, float]]:
        """``reward``'s forward passes, queued on the device; the call it returns waits for them and
        gives ``reward``'s result, leaving the host free meanwhile (``samplers.reinforce``)."""
        self.model.eval()
        losses = [self._stream_loss(self._streams["reward"], arch).ce for _ in range(num_batches)]

        def finish() -> tuple[float, float]:
            ces = [float(ce) for ce in losses]
            if world().active:  # each rank's mean over its columns; equal shares, so their mean is the global one
                ces = [c / world().size for c in comm.sum_values(ces)]
            ppl = perplexity(sum(ces) / len(ces))
            return reward_c / (ppl**2 if square else ppl), ppl

        return finish

    @torch.inference_mode()
    def evaluate(self, arch: RNNArch, split: str, model: nn.Module | None = None) -> dict[str, float]:
        """Perplexity ``exp(total NLL / total tokens)`` over the whole split, state carried (``model``:
        another model of ``arch``, default the shared one)."""
        model = self.model if model is None else model
        model.eval()
        data = self.valid_data if split == "valid" else self.test_data
        hidden = model.init_hidden(data.size(1))  # type: ignore[operator]  # nn.Module's __getattr__
        nll, count = 0.0, 0.0
        for i in range(0, data.size(0) - 1, self._cfg.shared_rnn_max_length):
            x, y = get_batch(data, i, self._cfg.shared_rnn_max_length)
            out = model(x, hidden, arch)
            hidden = out.hidden
            nll += float(F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
        nll, count = comm.sum_values([nll, count], sharded=split == "valid" or self.test_sharded)
        count = int(count)
        return {f"{split}_ppl": perplexity(nll / count), f"{split}_nll": nll / count, f"{split}_tokens": count}

    # ----------------------------------------------------------------------------- drawing
    def draw(self, arch: RNNArch, path: Path) -> Path:
        return render_dot(rnn_dot(arch), path)

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {name: s.state_dict() for name, s in self._streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, s in self._streams.items():
            s.load_state_dict(state[name])


def shard_columns(data: Tensor) -> Tensor:
    """This rank's contiguous block of a batchified split's columns (the whole split in one process)."""
    return data[:, world().part(data.size(1))].contiguous() if world().active else data


def perplexity(mean_ce: float) -> float:
    """``exp(mean_ce)``; infinite, not an OverflowError, for a diverged model's huge cross-entropy
    (its reward ``reward_c / ppl`` is then 0, and metrics.jsonl records the perplexity as null)."""
    try:
        return math.exp(mean_ce)
    except OverflowError:
        return math.inf


def rnn_dot(arch: RNNArch) -> str:
    """Graphviz source of a recurrent cell: inputs, nodes with their activations, averaged loose ends."""
    lines = ["digraph cell {", '  rankdir=LR; node [fontname="Helvetica", style=filled];',
             '  x [label="x[t]", shape=box, fillcolor=lightskyblue];',
             '  h_prev [label="h[t-1]", shape=box, fillcolor=lightskyblue];',
             '  avg [label="avg", shape=ellipse, fillcolor=palegoldenrod];',
             '  h [label="h[t]", shape=box, fillcolor=lightgreen];']
    for j, act in enumerate(arch.activations):
        lines.append(f'  n{j} [label="{j}: {act}", shape=ellipse, fillcolor=white];')
    lines += ["  x -> n0;", "  h_prev -> n0;"]
    lines += [f"  n{i} -> n{j};" for i, j in arch.edges]
    lines += [f"  n{j} -> avg;" for j in arch.loose_ends]
    lines += ["  avg -> h;", "}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ from the options
def from_options(args: argparse.Namespace, device: torch.device, space_class: type[RNNSpace] | None = None) -> RNNSpace:
    """The RNN space the options describe (``spaces.SPACES``' entry): corpus loaded and checked, model built
    (``space_class``: this space, or a restriction of it such as spaces/rnn32.py's)."""
    from data.text import check_split_sizes, load_corpus

    start = time.time()
    corpus = load_corpus(args.data_dir, args.dataset)
    check_split_sizes(corpus, Path(args.data_dir) / args.dataset,
                      {"train": args.batch_size, "valid": args.batch_size, "test": args.test_batch_size},
                      args.shared_rnn_max_length)
    log.info("corpus %s: vocabulary %d, tokens train %d / valid %d / test %d (%.1fs)", args.dataset,
             corpus.ntokens, len(corpus.train), len(corpus.valid), len(corpus.test), time.time() - start)
    cfg = pick(RNNSpaceConfig, args, shared_rnn_activations=tuple(args.shared_rnn_activations))
    return (space_class or RNNSpace)(corpus, cfg, device)


def retrain_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """A retrain's model: ``--retrain_embed/hid``, batch and BPTT in place of the search's sizes."""
    if args.tie_weights and args.retrain_embed != args.retrain_hid:
        raise UserError(f"--tie_weights needs --retrain_embed == --retrain_hid "
                        f"(got {args.retrain_embed} and {args.retrain_hid})")
    return {"shared_embed": args.retrain_embed, "shared_hid": args.retrain_hid,
            "batch_size": args.retrain_batch_size, "shared_rnn_max_length": args.retrain_bptt}


def retrain_optim(args: argparse.Namespace) -> OptimSpec:
    """Constant lr (the "decay" schedule with factor 1); the recipe's NT-ASGD switch does the rest."""
    return OptimSpec(lr=args.retrain_lr, weight_decay=args.retrain_l2_reg, grad_clip=args.retrain_grad_clip)


RETRAINING = Retraining(recipe="rnn", sizes=retrain_sizes, optim=retrain_optim)
PLUGIN = SpacePlugin(build=from_options, retraining=RETRAINING)
