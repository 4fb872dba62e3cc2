"""``--mode=pathnet``'s options, declared beside the experiment (config.py collects them through ``modes.MODES``).

Defaults are the paper's binary MNIST setting, except the stopping rule (docs/fidelity.md);
``--pathnet_style=tf`` sets every choice of the public TF code at once (``options.presets.PATHNET_STYLES``,
docs/pathnet.md), and an option given explicitly still wins. Free of heavy imports (``--help``).
"""

from __future__ import annotations

import argparse

from options import presets
from options.domains import COUNT, NON_NEGATIVE, POSITIVE, UNIT, Domain
from options.parsing import StrictParser, choice, str2bool, str_list
from options.plugin import ModeOptions

GROUP = "pathnet"


def add(p: StrictParser) -> None:
    g = p.group(GROUP, "--mode=pathnet: PathNet (Fernando et al. 2017), binary MNIST transfer", tier=1)
    g.add_argument("--tasks", type=str, default="1v3,1v2",
                   help="task pair A,B as digit pairs (several pairs joined by +, e.g. 1v3,1v2+4v5,6v7)")
    g.add_argument("--pathnet_variants", type=str_list, default=["scratch", "pathnet", "finetune", "wpl"],
                   help="how B is learned: scratch (fresh network), pathnet (A's path frozen, the rest re-initialised), "
                        "finetune (A's network, nothing frozen), wpl (A's path protected by WPL instead of frozen); ablation "
                        "arms: keep (as pathnet, the rest keeps A's weights), pathnet_active (as pathnet, A's path "
                        "runs beside every path of B)")
    g.add_argument("--pathnet_style", type=choice(*presets.PATHNET_STYLES), default="paper",
                   help="paper: the paper's network and tournament; tf: the public TF code's (jaesik817/pathnet: "
                        "population 20, skip/ReLU/residual modules averaged over M, fixed noise, 99%% threshold, ...); "
                        "options given explicitly win (docs/pathnet.md)")
    g.add_argument("--pathnet_layers", type=int, default=3, help="L: layers of modules (paper: 3)")
    g.add_argument("--pathnet_modules", type=int, default=10, help="M: modules per layer (paper: 10)")
    g.add_argument("--pathnet_units", type=int, default=20, help="ReLU units per module (paper: 20)")
    g.add_argument("--pathnet_active", type=int, default=3, help="N: at most this many modules of a layer in a path (paper: 3)")
    g.add_argument("--pathnet_module_kinds", type=choice("relu", "tf"), default="relu",
                   help="relu: every module a ReLU layer (paper); tf: after the first layer module m is an identity "
                        "(m %% 3 = 0), a ReLU layer (1) or a residual ReLU layer (2), the TF code's")
    g.add_argument("--pathnet_aggregate", type=choice("sum", "mean", "mean_all"), default="sum",
                   help="how a layer joins its active modules' outputs: sum (paper), mean over the active ones, or "
                        "mean_all: the sum divided by M (the TF code)")
    g.add_argument("--pathnet_init", type=choice("torch", "tf"), default="torch",
                   help="module and head initialisation: torch (uniform +-1/sqrt(fan-in)) or tf (truncated normal 0.1, "
                        "biases 0.1, the TF code's)")
    g.add_argument("--pathnet_population", type=int, default=64, help="P: paths in the population (paper: 64; TF code: 20)")
    g.add_argument("--pathnet_batches", type=int, default=50, help="T: minibatches each tournament path trains for (paper: 50)")
    g.add_argument("--pathnet_batch_size", type=int, default=16, help="minibatch size (paper: 16)")
    g.add_argument("--pathnet_batch_draw", type=choice("replace", "shuffle"), default="replace",
                   help="a path's batches: drawn with replacement, or the head of a fresh shuffle of the task (TF code)")
    g.add_argument("--pathnet_lr", type=float, default=0.05,
                   help="SGD learning rate (the public TF code's 0.05; we could not confirm the paper's own value)")
    g.add_argument("--pathnet_converge", type=float, default=0.97,
                   help="threshold on the mean fitness of the last --pathnet_converge_window winners that ends an "
                        "evolution (paper: one winner at 99.8%%; TF code: one at 99%%; docs/fidelity.md)")
    g.add_argument("--pathnet_converge_window", type=int, default=5,
                   help="winners (one per tournament) whose mean fitness meets the threshold (paper and TF code: 1)")
    g.add_argument("--pathnet_max_generations", type=int, default=500, help="tournaments before giving up on a task")
    g.add_argument("--pathnet_count_from", type=int, default=1,
                   help="the number of the converging tournament: 1 counts tournaments; 0 is the TF code's loop index")
    g.add_argument("--pathnet_mutation", type=choice("paper", "tf"), default="paper",
                   help="paper: N draws per layer (repeats count once), each moves by [-2, 2] with probability 1/(NL); "
                        "tf: N distinct, each moves down by 1-4 with probability 2/(NL) (the TF code)")
    g.add_argument("--pathnet_mutation_bound", type=choice("wrap", "clip"), default="wrap",
                   help="--pathnet_mutation=paper: an index leaving 0..M-1 wraps around (default) or is clipped")
    g.add_argument("--pathnet_data", type=choice("paper", "tf"), default="paper",
                   help="paper: normalised pixels, fresh salt and pepper per batch; tf: pixels in [0, 1], where "
                        "u >= 1 - noise (u uniform) a pixel becomes min(pixel + u, 1), drawn once per task (TF code)")
    g.add_argument("--noise", type=float, default=0.5, help="noise probability per pixel (paper and TF code: 0.5)")
    g.add_argument("--pathnet_frozen_active", type=str2bool, default=False,
                   help="task A's frozen path runs beside every path of task B (the TF code) instead of only where B's "
                        "path picks its modules (paper)")
    g.add_argument("--pathnet_wpl_alpha", type=float, default=100.0, help="wpl variant: strength of the penalty on A's path")
    g.add_argument("--pathnet_fisher_batches", type=int, default=50, help="wpl variant: minibatches of A's Fisher")


def check(args: argparse.Namespace) -> str | None:
    if args.pathnet_active > args.pathnet_modules:
        return (f"--pathnet_active={args.pathnet_active} is above --pathnet_modules={args.pathnet_modules}: a path "
                f"picks at most that many of a layer's modules")
    return None


OPTIONS = ModeOptions(add, {
    "pathnet_layers": COUNT, "pathnet_modules": COUNT, "pathnet_units": COUNT, "pathnet_active": COUNT,
    "pathnet_population": Domain(lo=2, integer=True), "pathnet_batches": COUNT, "pathnet_batch_size": COUNT,
    "pathnet_lr": POSITIVE, "pathnet_converge": Domain(lo=0, hi=1, lo_open=True), "pathnet_max_generations": COUNT,
    "noise": UNIT, "pathnet_wpl_alpha": NON_NEGATIVE, "pathnet_fisher_batches": COUNT, "pathnet_converge_window": COUNT,
    "pathnet_count_from": Domain(lo=0, hi=1, integer=True),
}, presets={"pathnet_style": presets.PATHNET_STYLES}, check=check, group=GROUP, reads=("seeds",))  # --seeds: the continual group's, paired seeds here too
