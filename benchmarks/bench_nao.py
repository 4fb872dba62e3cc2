"""Cost of NAO's controller round (samplers/nao.py) and of drawing from its pool, on the RNN cell's layout.

    python -m benchmarks.bench_nao [--size paper|small] [--reps N] [--threads N] [--epochs N] [--json FILE]

``--size`` picks the pool schedule: ``paper`` = NAO-WS's (pool 1000, top 100, 300 new, 1000 controller
epochs of batch 100), ``small`` = ``--nao_size=small`` (pool 40, top 4, 12 new, 100 epochs); the
controller is NAO-WS's (embed 48, LSTM 96, MLP 4 x 200) and the cell the search's (12 nodes, 4
activations: 24 tokens). Printed as median [min, max] over ``--reps`` after one warm-up, wall-clock
and process CPU time:

* ``controller_epoch_s``: one controller epoch over the pool (shuffled batches of ``0.8 MSE + 0.2 NLL``,
  Adam, clip); ``round_train_s`` = that times the size's controller epochs (an estimate);
* ``generation_pass_s``: one generation pass (``NAOController.move`` of the top-k: gradient, move,
  greedy constrained decoding); a round takes 1 to 30 of them;
* ``pool_eval_s``: not timed here, it is ``pool x`` the space's held-out error (``SearchSpace.error``:
  ``--forgetting_eval_batches`` forward passes of the shared model per member);
* ``nao_sample_us`` / ``reinforce_sample_us``: one architecture for the shared phase, drawn from the
  pool (NAO) or sampled from the ENAS controller (REINFORCE, ``controller_hid`` 100). The shared step
  that follows is the same code for both samplers, so this difference is NAO's whole per-minibatch cost.

No test asserts a figure; compare runs taken under similar loads (the load average is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

import config
from benchmarks.bench_util import loadavg, summary, timed2
from models import rnn_arch
from models.nao_codec import rnn_codec
from models.nao_controller import NAOController
from options.presets import NAO_SIZES
from samplers.nao import NAOConfig, NAOSampler
from samplers.reinforce import ReinforceConfig, ReinforceSampler

BLOCKS, ACTS = 12, list(rnn_arch.ACTIVATIONS)


class CellSpace:
    """The RNN cell's decisions without a shared model: what the samplers read of a space."""

    decision_sizes = rnn_arch.decision_sizes(BLOCKS, len(ACTS))
    model = torch.nn.Linear(1, 1)

    def decode(self, tokens: Any) -> rnn_arch.RNNArch:
        return rnn_arch.decode(tokens, ACTS)


def nao_sampler(size: str) -> NAOSampler:
    cfg = dataclasses.replace(config.defaults(NAOConfig), **NAO_SIZES[size])
    codec = rnn_codec(BLOCKS, len(ACTS))
    controller = NAOController(codec.vocab_size, codec.length, codec.valid_mask(), cfg.nao_embed, cfg.nao_hid,
                               cfg.nao_mlp_layers, cfg.nao_mlp_hid)
    return NAOSampler(CellSpace(), controller, codec, cfg, None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=tuple(NAO_SIZES), default="small")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1, help="controller epochs per timed repetition")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = loadavg()
    sampler = nao_sampler(args.size)
    c = sampler.cfg
    seqs = sampler._sequences(sampler.pool)
    target = torch.rand(len(seqs), generator=torch.Generator().manual_seed(1))
    top = sampler.pool[:c.nao_top_k]
    one_epoch = dataclasses.replace(c, nao_controller_epochs=args.epochs)
    reinforce = ReinforceSampler.build(CellSpace(), config.defaults(ReinforceConfig), torch.device("cpu"), None)  # type: ignore[arg-type]

    def train() -> None:
        sampler.cfg = one_epoch
        sampler.train_controller(seqs, target)

    def generation_pass() -> None:
        sampler.controller.eval()
        sampler.controller.move(sampler._sequences(top), 1.0)

    figures: dict[str, list[tuple[float, float]]] = {"controller_epoch_s": [], "generation_pass_s": [],
                                                     "nao_sample_us": [], "reinforce_sample_us": []}
    for rep in range(args.reps + 1):
        runs = {"controller_epoch_s": timed2(train), "generation_pass_s": timed2(generation_pass)}
        wall, cpu = timed2(lambda: [sampler.sample(1) for _ in range(1000)])
        runs["nao_sample_us"] = (wall * 1e3, cpu * 1e3)  # per call: / 1000 calls, in microseconds
        wall, cpu = timed2(lambda: [reinforce.sample(1) for _ in range(200)])
        runs["reinforce_sample_us"] = (wall * 5e3, cpu * 5e3)
        if rep:  # the first repetition is the warm-up
            for key, (w, cp) in runs.items():
                figures[key].append((w / (args.epochs if key == "controller_epoch_s" else 1),
                                     cp / (args.epochs if key == "controller_epoch_s" else 1)))
    out: dict[str, Any] = {"size": args.size, "pool": c.nao_pool, "top_k": c.nao_top_k, "controller_epochs": c.nao_controller_epochs,
                           "controller_params": sum(q.numel() for q in sampler.controller.parameters()),
                           "threads": args.threads, "torch": torch.__version__, "load_start": load_start}
    for key, values in figures.items():
        out[key] = summary([w for w, _ in values])
        out[key + "_cpu"] = summary([cp for _, cp in values])
    out["round_train_s_cpu"] = out["controller_epoch_s_cpu"]["median"] * c.nao_controller_epochs
    out["load_end"] = loadavg()
    print(f"NAO controller ({out['controller_params'] / 1e6:.3f}M parameters), size {args.size}: pool {c.nao_pool}, "
          f"top {c.nao_top_k}, {c.nao_controller_epochs} controller epochs of batch {c.nao_controller_batch}")
    for key in figures:
        s, cp = out[key], out[key + "_cpu"]
        print(f"  {key:22s} {s['median']:10.4g} [{s['min']:.4g}, {s['max']:.4g}]   cpu {cp['median']:.4g}")
    print(f"  round training (estimate, cpu): {out['round_train_s_cpu']:.1f} s; load {load_start} -> {out['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
