"""Strength sweeps and ablations with statistics: many runs of a project command over a parameter.

    python sweep.py --strategy=grid --grid ewc_lambda=0,1,10,100 --seeds=5 \\
        --measure=summary.ewc.integrated_loss --minimize -- \\
        --mode=continual --benchmark=seq_mnist_0-2_3-5 --strategies=ewc --seeds=1 --data_dir=../shared/data
    python sweep.py --strategy=narrowing --param=ewc_lambda --low_range 1 100 --high_range 1000 100000 \\
        --spacing=log --num_steps=5 --termination_threshold=0.5 --trials=3 --measure=... --minimize -- ...
    python sweep.py --recipe=paper_ablation --seeds=3 -- <search options>

Everything after ``--`` is passed to the program (``main.py`` or ``toy_mnist.py``) unchanged. The
study (every evaluation) lives in ``<log_dir>/sweep_<comment>/study.db`` unless ``--storage`` names
a shared database (``postgresql://user@host/db``): then workers on many machines run the same
command and share the evaluations. Rerunning a command continues its study. See docs/sweeps.md.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from config import StrictParser
from experiments.sweep.protocol import SweepConfig, grid_settings
from experiments.sweep.evaluate import PROGRAMS, Program, known_direction
from experiments.sweep.run import run_sweep
from experiments.workers import default_workers
from options.safe_io import as_user_error
from utils import UserError, setup_logging

log = logging.getLogger("wpl")

READY_SWEEPS = {  # --recipe: named sweeps (not the retraining recipes of recipes/)
    # The paper's ablation: no WPL vs WPL's two arithmetics vs random search, then the forgetting probe.
    "paper_ablation": {
        "settings": ["alpha_fisher=0", "alpha_fisher=60 wpl_alpha_mode=compound", "alpha_fisher=60 wpl_alpha_mode=loss",
                     "alpha_fisher=0 sampler=random"],
        # the probe trains each model without WPL (variant none); the mode asks for a strength all the same
        "then": "--mode=forgetting --forgetting_models=4 --forgetting_variants=none --alpha_fisher=60",
        "measure": "metrics.last.forgetting_mean_diff",
        "report": ["metrics.last.forgetting_max_diff", "metrics.last.valid_ppl", "metrics.last.controller_reward",
                   "variants.none.mean_diff"],
        "minimize": True,
    },
}


def build_parser() -> StrictParser:
    p = StrictParser(description=__doc__.split("\n\n")[0], formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=("grid", "narrowing", "tpe"), default="grid")
    p.add_argument("--recipe", choices=tuple(READY_SWEEPS), default=None, help="a ready-made sweep (its options can be overridden)")
    p.add_argument("--program", default="main.py", help=f"the command every evaluation runs: {', '.join(PROGRAMS)} (or a script file)")
    p.add_argument("--measure", default=None, help="dotted path into the run's results JSON, e.g. summary.ewc.integrated_loss")
    p.add_argument("--report", nargs="*", default=None, help="more measures (dotted paths) shown in the table")
    better = p.add_mutually_exclusive_group()
    better.add_argument("--minimize", action="store_true", default=None,
                           help="lower is better (known without it for the project's own measures: forgetting, drops, "
                                "losses, perplexities are minimised; accuracies, rewards maximised)")
    better.add_argument("--maximize", action="store_false", dest="minimize", help="higher is better")
    p.add_argument("--grid", nargs="*", default=[], help="name=v1,v2,... (several: their product)")
    p.add_argument("--setting", action="append", default=[], help="one setting 'name=value [name=value ...]' (repeatable)")
    p.add_argument("--reference", default=None, help="the setting differences are paired against (default: the first)")
    p.add_argument("--param", default="", help="narrowing/tpe: the option swept")
    p.add_argument("--low_range", type=float, nargs=2, default=(1.0, 10.0), help="narrowing: range the lower bound is drawn from")
    p.add_argument("--high_range", type=float, nargs=2, default=(100.0, 1000.0), help="narrowing: range the upper bound is drawn from")
    p.add_argument("--num_steps", type=int, default=5, help="narrowing: values per step (>= 4)")
    p.add_argument("--termination_threshold", type=float, default=1.0,
                   help="narrowing: stop when the range is narrower (parameter units; decades with --spacing=log)")
    p.add_argument("--spacing", choices=("linear", "log"), default="linear")
    p.add_argument("--trials", type=int, default=3, help="narrowing trials / TPE proposals")
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (paired: same seed, same base model and batches)")
    p.add_argument("--first_seed", type=int, default=0)
    p.add_argument("--seed_option", default="random_seed",
                   help="option the seed is passed with; '' when the program runs its seeds itself (toy_mnist.py --seeds)")
    p.add_argument("--then", default="", help="a main.py command run on each evaluation's run directory afterwards")
    p.add_argument("--workers", type=int, default=-1,
                   help="evaluations run at once as single-threaded worker processes (-1: one per core; 0: in this process)")
    p.add_argument("--storage", default="", help="Optuna storage URL (default: sqlite in the sweep directory)")
    p.add_argument("--log_dir", default="logs")
    p.add_argument("--comment", default="", help="the sweep's name: <log_dir>/sweep_<comment>/")
    p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return p


def direction(measure: str, given: bool | None, recipe: bool | None) -> bool:
    """Whether lower is better: as given (--minimize/--maximize), else the recipe's, else the known direction
    of the project's own measure; an unknown measure must be told, so "best" never silently means "forgets more"."""
    known = known_direction(measure)
    chosen = given if given is not None else recipe if recipe is not None else known
    if chosen is None:
        raise UserError(f"--measure={measure}: pass --minimize or --maximize (which way is better is not known "
                        f"for this measure)")
    if known is not None and chosen != known:
        log.warning("--measure=%s is one this project %s; the sweep %s it as asked", measure,
                    "minimises" if known else "maximises", "minimises" if chosen else "maximises")
    how = "given" if given is not None else "the recipe's" if recipe is not None else "known for this measure"
    log.info("measure %s: %s is better (%s)", measure, "lower" if chosen else "higher", how)
    return chosen


def check_comment(comment: str) -> None:
    """``--comment`` names one folder inside ``--log_dir`` (no separator, no ``..``, nothing absolute, not too
    long), with the rule main.py's ``--comment`` follows: a sweep never writes outside ``--log_dir``."""
    from options.domains import path_component_problem

    if comment and (problem := path_component_problem("comment", comment)):
        raise UserError(problem)


def split_settings(text: str | None) -> dict[str, str] | None:
    return None if not text else {k.lstrip("-"): v for k, _, v in (p.partition("=") for p in text.split())}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, program_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    setup_logging(args.log_level)
    try:
        check_comment(args.comment)  # first: nothing is written under a name that escapes --log_dir
        recipe = READY_SWEEPS.get(args.recipe or "", {})
        measure = args.measure or recipe.get("measure")
        if not measure:
            raise UserError("--measure is required (a dotted path into the run's results JSON)")
        recipe_minimize = recipe.get("minimize")
        minimize = direction(str(measure), args.minimize, None if recipe_minimize is None else bool(recipe_minimize))
        if args.seeds < 1 or args.trials < 1 or args.workers < -1:
            raise UserError("--seeds and --trials must be >= 1 and --workers >= -1 (-1: one per core, 0: in this process)")
        if args.workers == -1:
            args.workers = default_workers()
        for name, (lo, hi) in (("--low_range", args.low_range), ("--high_range", args.high_range)):
            if not lo <= hi or (args.spacing == "log" and lo <= 0):
                raise UserError(f"{name} {lo:g} {hi:g}: expected low <= high{' and both > 0 with --spacing=log' if args.spacing == 'log' else ''}")
        settings = tuple(grid_settings(args.grid, [*recipe.get("settings", []), *args.setting])) if args.strategy == "grid" else ()
        if args.strategy != "grid" and not args.param:
            raise UserError(f"--strategy={args.strategy} needs --param=<option name>")
        seeds = tuple(range(args.first_seed, args.first_seed + args.seeds)) if args.seed_option else (None,)
        cfg = SweepConfig(args.strategy, settings, args.param.lstrip("-"), tuple(args.low_range), tuple(args.high_range),
                          args.num_steps, args.termination_threshold, args.spacing, args.trials, seeds, minimize, args.workers)
        program = Program(args.program, tuple(program_argv), args.seed_option,
                          tuple(shlex.split(args.then or recipe.get("then", ""))), in_process=args.workers == 0)
        name = args.comment or args.recipe or time.strftime("%Y-%m-%d_%H-%M-%S")
        run_sweep(Path(args.log_dir) / f"sweep_{name}", program, cfg, measure, args.storage, name,
                  split_settings(args.reference), args.first_seed,
                  extras=tuple(args.report if args.report is not None else recipe.get("report", [])))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, RecursionError) as err:  # an unwritable --log_dir, a name too long: one line
        print(f"error: {as_user_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: rerun the same command to continue the sweep", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
