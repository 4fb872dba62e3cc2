"""The ranking benchmark's command-line options, declared beside it (config.py collects them through ``modes.MODES``).

Kept free of heavy imports: ``--help`` builds the option table without importing torch.
"""

from __future__ import annotations


from options.domains import COUNT, NATURAL, NON_NEGATIVE
from options.parsing import StrictParser, choice, str_list
from options.plugin import ModeOptions

SIZES = ("small", "tiny")  # experiments.ranking.protocol.SIZES (a test keeps them equal)
STAGES = ("all", "truth", "search", "report")
GROUP = "ranking"
DEFAULT_VARIANTS = ["random:none", "random:fisher", "reinforce:none", "reinforce:fisher"]


def add(p: StrictParser) -> None:
    g = p.group(GROUP, "--mode=ranking: the 32-cell ground-truth ranking benchmark (docs/ranking.md)", tier=1)
    g.add_argument("--ranking_stage", type=choice(*STAGES), default="all",
                   help="truth (each cell trained alone), search (the variants' searches), report, or all in order")
    g.add_argument("--ranking_size", type=choice(*SIZES), default="small",
                   help="budget shared by the ground truth and the searches: small (width 64, 800 batches) or tiny (tests)")
    g.add_argument("--ranking_variants", type=str_list, default=DEFAULT_VARIANTS,
                   help="sampler:importance pairs searched (importance: none, fisher, mas, si, l2 = Fisher-matched L2)")
    g.add_argument("--ranking_seeds", type=int, default=10, help="paired seeds of every search variant (--random_seed, +1, ...)")
    g.add_argument("--truth_seeds", type=int, default=3, help="seeds of every cell trained alone")
    g.add_argument("--ranking_truth", type=str, default="", metavar="FILE",
                   help="a ground_truth.json to score against (default: this run's own)")
    g.add_argument("--ranking_fisher_clip", type=float, default=0.0,
                   help="the searches' WPL Fisher clip (0: the size's, the paper command's 10); the saturated Fisher's "
                        "norm is clip x alpha, which sets the penalty's stiffness (docs/results.md)")
    g.add_argument("--workers", type=int, default=0,
                   help="parallel single-threaded worker processes (0: one per available core)")


OPTIONS = ModeOptions(add, {"ranking_seeds": COUNT, "truth_seeds": COUNT, "workers": NATURAL,
                             "ranking_fisher_clip": NON_NEGATIVE}, group=GROUP)
