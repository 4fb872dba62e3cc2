"""The paper's two-model MNIST example (multi-model forgetting and WPL): the command line.

    python toy_mnist.py --shared_layers 1 2 3 --alpha 0 100 --seeds 3

The protocol lives in :mod:`experiments.two_model.protocol`, its outputs in :mod:`experiments.two_model.report`:
``toy_results.json`` and ``toy_forgetting.png`` in ``--output_dir``, the table on stdout.

MNIST is read by :mod:`data.mnist` (four idx files, gzipped or not, in ``<data_dir>/mnist/``,
``<data_dir>/MNIST/raw/`` or ``<data_dir>``), e.g. ``python toy_mnist.py --data_dir ../shared/data``; it is
downloaded only into the default ``--data_dir`` (``datasets``).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path
from dataclasses import replace
from typing import Any, Sequence

import torch

from data import DEFAULT_DATA_DIR
from engine.stopping import Stopped, stop_on_signals
from experiments.two_model.protocol import MAX_SHARED, PROTOCOLS, STRATEGIES, ToyConfig
from experiments.two_model.report import run
from options.safe_io import one_line_errors
from utils import UserError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options; ``--protocol`` first sets the defaults of the options it presets (given ones win)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol", choices=PROTOCOLS, default=ToyConfig.protocol)
    protocol = pre.parse_known_args(argv)[0].protocol
    defaults = replace(ToyConfig(), **PROTOCOLS[protocol])
    parser = argparse.ArgumentParser(
        description="Two-model MNIST example of multi-model forgetting and WPL (ICML 2019). Model A "
                    "(4 layers) is trained briefly; B (6 layers) shares A's first k layers and is trained "
                    "with CE_B + (alpha/2) sum F (theta - theta*)^2, F the per-sample empirical Fisher "
                    "diagonal of A's loss at A's weights theta*.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared_layers", type=int, nargs="+", default=list(defaults.shared_layers),
                        choices=range(1, MAX_SHARED + 1), metavar="K", help="values of k (1..3) to run")
    parser.add_argument("--alpha", type=float, nargs="+", default=list(defaults.alphas),
                        help="WPL strengths; 0 is plain training. Scaled for the per-sample empirical "
                             "Fisher, which is ~60x the squared mean mini-batch gradient")
    parser.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy,
                        help="importance of A's shared weights: wpl (per-sample empirical Fisher), ewc (true "
                             "Fisher, labels drawn from A), mas (output-norm sensitivity), si (path integral over "
                             "A's training), l2 (uniform); --alpha scales differ between them")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=protocol,
                        help="long: B trained 1500 steps (the example's first protocol); paper: the paper's figure "
                             "(B 100 steps at batch 128, early evaluations, 10 seeds): forgetting grows with k. "
                             "Sets the defaults of --iterations, --batch_size, --eval_every, --seeds")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="hidden width h")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate for A and B")
    parser.add_argument("--a_iterations", type=int, default=defaults.a_iterations,
                        help="A's training steps (short on purpose: the paper's A is at about 89%%)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="B's training steps")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval_every", type=int, default=defaults.eval_every,
                        help="evaluate A and B on the test set every this many B steps")
    parser.add_argument("--fisher_samples", type=int, default=defaults.fisher_samples,
                        help="training images in the per-sample empirical Fisher")
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="number of seeds (0, 1, ...)")
    parser.add_argument("--data_dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                        help="MNIST's four idx files (gzipped or not) in DATA_DIR/mnist, DATA_DIR/MNIST/raw or DATA_DIR; "
                             "downloaded only into the default")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/toy_mnist"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for name in ("hidden", "iterations", "a_iterations", "batch_size", "eval_every", "fisher_samples", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr={args.lr}: expected a finite number > 0")
    bad = [a for a in args.alpha if not (math.isfinite(a) and a >= 0)]
    if bad:
        parser.error(f"--alpha {bad[0]}: every strength must be a finite number >= 0")
    if args.hidden > MAX_HIDDEN or args.seeds > MAX_SEEDS:
        parser.error(f"--hidden (at most {MAX_HIDDEN}) or --seeds (at most {MAX_SEEDS}) is out of range")
    if problem := device_problem(args.device):
        parser.error(f"--device={args.device}: {problem}")
    if problem := output_problem(args.output_dir):
        parser.error(f"--output_dir={args.output_dir}: {problem}")
    return args


MAX_HIDDEN = 1 << 16  # a width past this is a typo that would ask for gigabytes
MAX_SEEDS = 10_000


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a usable device (a typo, or CUDA on a machine without it), or None."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        return f"not a device name ({str(err).splitlines()[0][:100]})"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (use --device=cpu)"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} GPU(s)"
    if device.type not in ("cpu", "cuda"):
        return "use cpu or cuda[:N]"
    return None


def output_problem(folder: Path) -> str | None:
    """Why the results cannot go to ``folder`` (a file in the way, an unwritable parent), or None."""
    probe = folder
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    except OSError as err:  # a name too long, a loop of links
        return f"unusable ({err.strerror or err})"
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = ToyConfig(shared_layers=tuple(args.shared_layers), alphas=tuple(args.alpha), hidden=args.hidden,
                    lr=args.lr, a_iterations=args.a_iterations, iterations=args.iterations,
                    batch_size=args.batch_size, eval_every=args.eval_every,
                    fisher_samples=args.fisher_samples, seeds=args.seeds, device=args.device,
                    strategy=args.strategy, protocol=args.protocol)
    try:
        with stop_on_signals(), one_line_errors():  # an unwritable folder, a name too long, a full disk: one line
            results = run(cfg, args.data_dir, args.output_dir)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    except Stopped as stop:  # before the first seed finished: nothing to keep
        print(f"stopped by {stop.name} before the first seed finished: nothing written", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    if "stopped" in results:  # the seeds finished are written; the rest was never run
        print(f"stopped by {results['stopped']}: {results['seeds_finished']} of {cfg.seeds} seeds kept in "
              f"{args.output_dir}; rerun with the same options for all of them", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[results["stopped"]].value)
    return results


if __name__ == "__main__":
    main()
