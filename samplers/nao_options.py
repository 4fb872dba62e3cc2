"""``--sampler=nao``'s options, declared beside the sampler (config.py collects them through ``samplers.SAMPLERS``).

Free of heavy imports: ``--help`` builds the option table without importing torch.
"""

from __future__ import annotations

import argparse

from options import presets
from options.domains import COUNT, NATURAL, NON_NEGATIVE, POSITIVE, UNIT, Domain
from options.parsing import StrictParser, choice
from options.plugin import PluginOptions


def add(p: StrictParser) -> None:
    g = p.group("NAO (--sampler=nao)", "NAO with weight sharing (Luo et al. 2018); defaults: NAO-WS's public code "
                "(renqianluo/NAO); --nao_size=small: a CPU-sized pool with the same ratios (docs/nao.md)")
    g.add_argument("--nao_size", type=choice(*presets.NAO_SIZES), default="paper", help="paper: NAO-WS's pool and controller "
                   "schedule; small: pool 40, top 4, new 12, random 2, 100 controller epochs, a round every 2 epochs")
    g.add_argument("--nao_pool", type=int, default=1000, help="architectures in the pool (NAO-WS: 1000)")
    g.add_argument("--nao_top_k", type=int, default=100, help="best pool members moved to generate (NAO-WS: 100)")
    g.add_argument("--nao_new", type=int, default=300, help="new unseen architectures sought per round (NAO-WS: 300)")
    g.add_argument("--nao_random", type=int, default=50, help="random unseen architectures added per round (NAO-WS: 50)")
    g.add_argument("--nao_round_every", type=int, default=200, help="epochs between controller rounds (NAO-WS: 200)")
    g.add_argument("--nao_controller_epochs", type=int, default=1000, help="controller epochs per round (NAO-WS: 1000)")
    g.add_argument("--nao_controller_batch", type=int, default=100, help="controller batch size (NAO-WS: 100)")
    g.add_argument("--nao_controller_lr", type=float, default=1e-3, help="controller Adam learning rate (NAO-WS)")
    g.add_argument("--nao_controller_l2", type=float, default=1e-4, help="controller Adam weight decay (NAO-WS)")
    g.add_argument("--nao_controller_clip", type=float, default=5.0, help="controller gradient norm clip (NAO-WS; 0: none)")
    g.add_argument("--nao_mse_weight", type=float, default=0.8, help="weight of the predictor's MSE; the decoder's NLL gets the rest")
    g.add_argument("--nao_lambda", type=float, default=1.0, help="generation step on pass k: k * this (NAO-WS: 1, 2, 3, ...)")
    g.add_argument("--nao_max_passes", type=int, default=30, help="cap on generation passes per round (NAO-WS: 30)")
    g.add_argument("--nao_embed", type=int, default=48, help="controller token embedding (NAO-WS: 48)", role="shape")
    g.add_argument("--nao_hid", type=int, default=96, help="controller LSTM hidden size (NAO-WS: 96)", role="shape")
    g.add_argument("--nao_mlp_layers", type=int, default=4, help="predictor hidden layers (NAO-WS: 4)", role="shape")
    g.add_argument("--nao_mlp_hid", type=int, default=200, help="predictor hidden width (NAO-WS: 200)", role="shape")
    g.add_argument("--nao_weights", type=choice("edge", "activation"), default="edge", role=("shape", "search"),
                   help="shared weights per edge, shared by the activations (ENAS, the WPL paper's code), or per "
                        "(edge, activation) as NAO-WS (not built yet); docs/fidelity.md")


def check(args: argparse.Namespace) -> str | None:
    """The pool's sizes, which only NAO reads."""
    if args.sampler == "nao" and args.nao_top_k > args.nao_pool:
        return f"--nao_top_k={args.nao_top_k} is above --nao_pool={args.nao_pool}: generation starts from pool members"
    if args.sampler == "nao" and args.nao_new + args.nao_random >= args.nao_pool:
        return (f"--nao_new={args.nao_new} + --nao_random={args.nao_random} must stay below --nao_pool={args.nao_pool}: "
                "the new pool keeps at least one measured member")
    return None


def warnings(args: argparse.Namespace) -> list[str]:
    if args.sampler == "nao" and args.nao_round_every > args.max_epoch:
        return [f"--nao_round_every={args.nao_round_every} is above --max_epoch={args.max_epoch}: NAO never "
                "runs a controller round and searches its random initial pool (--nao_size=small: every 2)"]
    return []


OPTIONS = PluginOptions(add, {
    "nao_pool": Domain(lo=2, integer=True), "nao_top_k": COUNT, "nao_new": COUNT, "nao_random": NATURAL,
    "nao_round_every": COUNT, "nao_controller_epochs": COUNT, "nao_controller_batch": COUNT,
    "nao_controller_lr": POSITIVE, "nao_controller_l2": NON_NEGATIVE, "nao_controller_clip": NON_NEGATIVE,
    "nao_mse_weight": UNIT, "nao_lambda": POSITIVE, "nao_max_passes": COUNT, "nao_embed": COUNT, "nao_hid": COUNT,
    "nao_mlp_layers": NATURAL, "nao_mlp_hid": COUNT,
}, presets={"nao_size": presets.NAO_SIZES}, check=check, warnings=warnings)
