"""NAO vs NAO + WPL's command-line options, declared beside the experiment (config.py collects them through
``modes.MODES``).

Kept free of heavy imports: ``--help`` builds the option table without importing torch. The number of
worker processes is the ranking benchmark's ``--workers`` (both modes read it).
"""

from __future__ import annotations


from options.domains import COUNT
from options.parsing import StrictParser, choice, str_list
from options.plugin import ModeOptions

SIZES = ("small", "paper", "tiny")  # experiments.nao_wpl.protocol.SIZES (a test keeps them equal)
DEFAULT_DROPOUTS = ["0", "0.5"]
GROUP = "nao_wpl"


def add(p: StrictParser) -> None:
    g = p.group(GROUP, "--mode=nao_wpl: NAO vs NAO + WPL, paired seeds, per output dropout (docs/nao.md)", tier=1)
    g.add_argument("--nao_wpl_size", type=choice(*SIZES), default="small",
                   help="budget of every search: small (CPU scale, width 64, a round every epoch), paper (GPU: width 1000, "
                        "300 epochs, NAO-WS's pool) or tiny (tests)")
    g.add_argument("--nao_wpl_dropouts", type=str_list, default=DEFAULT_DROPOUTS,
                   help="output dropouts (--shared_dropout) compared, each in [0, 1) (the paper: 0,0.25,0.5,0.75)")
    g.add_argument("--nao_wpl_seeds", type=int, default=5, help="paired seeds per dropout (--random_seed, +1, ...)")


OPTIONS = ModeOptions(add, {"nao_wpl_seeds": COUNT}, group=GROUP, reads=("workers",))  # --workers: the ranking group's
