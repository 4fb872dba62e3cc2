"""The ranking benchmark's costs at its chosen width, beside a minimal hand-written loop of the same model.

    python -m benchmarks.bench_ranking [--size small] [--pairs 3] [--data_dir DIR]

Prints, for the ``--ranking_size`` budget: one training batch of a cell with the project's shared step
(trainer.train_arch, the one the ground truth and the searches use) and with a hand loop of the same
computation (embedding, the 3-node cell unrolled over the BPTT window, tied decoder, cross-entropy,
clip, SGD; no dropout, which the project's model adds), alternated in pairs; scoring one cell on a
whole validation split both ways; and the projected cost of a ground-truth unit, of a search unit and
the share of the 32-cell scoring in a search epoch. Data: PTB from ``--data_dir`` when present, else a
synthetic corpus of PTB's size and vocabulary (the costs depend on the sizes, not the words).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.bench_util import loadavg
from data.text import Corpus, batchify, load_corpus
from experiments.ranking.protocol import SIZES
from experiments.ranking.run import FixedSampler, unit_args
from spaces.rnn32 import RNN32Space, all_cells
from spaces.rnn import RNNSpaceConfig
from spaces.base import pick
from trainer import Trainer, TrainerConfig

CPU = torch.device("cpu")


class HandCell(nn.Module):
    """The cell c14 (node 1: ReLU of node 0, node 2: sigmoid of node 1) written out, highway gates included."""

    def __init__(self, ntokens: int, hid: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(ntokens, hid)
        self.w0 = nn.Linear(2 * hid, 2 * hid)
        self.w1 = nn.Linear(hid, 2 * hid, bias=False)
        self.w2 = nn.Linear(hid, 2 * hid, bias=False)
        self.decoder = nn.Linear(hid, ntokens)
        self.decoder.weight = self.embed.weight

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = []
        for xt in self.embed(x):
            c, v = self.w0(torch.cat([xt, h], 1)).chunk(2, 1)
            c = torch.sigmoid(c)
            n0 = c * torch.tanh(v) + (1 - c) * h
            c, v = self.w1(n0).chunk(2, 1)
            c = torch.sigmoid(c)
            n1 = c * torch.relu(v) + (1 - c) * n0
            c, v = self.w2(n1).chunk(2, 1)
            c = torch.sigmoid(c)
            h = c * torch.sigmoid(v) + (1 - c) * n1
            outputs.append(h)
        return self.decoder(torch.stack(outputs)), h


def corpus(data_dir: str) -> Corpus:
    if os.path.isdir(os.path.join(data_dir, "ptb")):
        return load_corpus(data_dir, "ptb")
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(10_000)]
    return Corpus(words, torch.randint(10_000, (929_589,), generator=g), torch.randint(10_000, (73_760,), generator=g),
                  torch.randint(10_000, (82_430,), generator=g))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--data_dir", default="../shared/data")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    args = unit_args(SIZES[a.size], 0)
    data = corpus(a.data_dir)
    cfg = pick(RNNSpaceConfig, args, shared_rnn_activations=tuple(args.shared_rnn_activations))
    space = RNN32Space(data, cfg, CPU)
    arch = all_cells()[14]
    trainer = Trainer(space, FixedSampler(arch), None, pick(TrainerConfig, args), None, vars(args))  # type: ignore[arg-type]
    hand = HandCell(data.ntokens, args.shared_hid)
    optim = torch.optim.SGD(hand.parameters(), lr=args.shared_lr)
    train = batchify(data.train, args.batch_size)
    bptt, n = args.shared_rnn_max_length, args.num_batch_per_iter

    def hand_batches() -> None:
        h = torch.zeros(args.batch_size, args.shared_hid)
        for b in range(n):
            x, y = train[b * bptt:(b + 1) * bptt], train[b * bptt + 1:(b + 1) * bptt + 1]
            logits, h = hand(x, h.detach())
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optim.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(hand.parameters(), args.shared_grad_clip)
            optim.step()

    @torch.inference_mode()
    def hand_eval() -> None:
        valid = batchify(data.valid, args.batch_size)
        h = torch.zeros(args.batch_size, args.shared_hid)
        for i in range(0, valid.size(0) - 1, bptt):
            x, y = valid[i:i + bptt], valid[i + 1:i + 1 + bptt]
            logits, h = hand(x[: len(y)], h)
            F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def timed(fn: Any, repeat: int = 1) -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat

    trainer.train_arch(arch)
    hand_batches()  # warm-up
    project, manual, project_eval, manual_eval = [], [], [], []
    for _ in range(a.pairs):
        project.append(timed(lambda: trainer.train_arch(arch)) / n)
        manual.append(timed(hand_batches) / n)
        project_eval.append(timed(lambda: space.evaluate(arch, "valid")))
        manual_eval.append(timed(hand_eval))
    batch, hand_batch = statistics.median(project), statistics.median(manual)
    score, hand_score = statistics.median(project_eval), statistics.median(manual_eval)
    batches = args.shared_max_step * args.num_batch_per_iter
    epoch_train, epoch_score = batches * batch, 32 * score
    out = {"size": a.size, "batch_s": batch, "hand_batch_s": hand_batch, "batch_ratio": batch / hand_batch,
           "score_s": score, "hand_score_s": hand_score, "score_ratio": score / hand_score,
           "truth_unit_s": args.max_epoch * epoch_train + 2 * score,
           "search_epoch_train_s": epoch_train, "search_epoch_score_s": epoch_score,
           "score_share": epoch_score / (epoch_train + epoch_score), "load": loadavg()}
    print(f"ranking size {a.size}: width {args.shared_hid}, batch {args.batch_size} x {bptt}, "
          f"{batches} batches per epoch x {args.max_epoch} epochs; 1 thread; load {out['load']}")
    print(f"training batch: project {batch * 1e3:.1f} ms, hand loop {hand_batch * 1e3:.1f} ms, ratio {out['batch_ratio']:.2f}")
    print(f"one cell scored on the whole validation split: project {score:.2f} s, hand {hand_score:.2f} s, "
          f"ratio {out['score_ratio']:.2f}")
    print(f"ground-truth unit: {out['truth_unit_s'] / 60:.1f} min; search epoch: training {epoch_train:.0f} s + scoring "
          f"32 cells {epoch_score:.0f} s (scoring {100 * out['score_share']:.0f} % of the epoch)")
    return out


if __name__ == "__main__":
    main()
