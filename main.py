"""Entry point: parse the command line, dispatch to the ``--mode``, turn every failure into one line.

    python main.py --network_type=rnn --dataset=ptb ...            # search (--mode=train)
    python main.py --mode=derive --load_path=logs/ptb_run          # best of N cells: derived_arch.json
    python main.py --mode=test --load_path=logs/ptb_run            # test split, shared weights
    python main.py --num_gpu=4 ...      # or torchrun --nproc_per_node=4 main.py ...: data-parallel (docs/distributed.md)

The modes live in ``modes/`` (one module per family); only they and this file see the argparse namespace,
everything else receives plain values or small dataclasses built from it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import config
import modes
from distributed import context, launch
from engine.stopping import Stopped, stop_on_signals
from options import domains as options_domains
from options.safe_io import one_line_errors
from utils import UserError, choose_device, keep_freed_memory, log_to_files, setup_logging

log = logging.getLogger("wpl")



# What each --mode runs (the registry --mode takes its choices from).
MODES = modes.MODES


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = config.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.mode not in MODES:
            raise UserError(f"--mode={args.mode} is not available yet")
        explicit = config.explicit_options(argv)
        if problem := options_domains.unread_options(args.mode, explicit):
            raise UserError(problem)
        if launch.wanted(args.num_gpu):
            return start_workers(args, argv)
        world = context.from_env()
        if world.active and (problem := single_process_only(args)):
            raise UserError(f"{problem} (drop torchrun or --num_gpu > 1)")
        device = choose_device(args.num_gpu, world.local_rank if world.active else 0)
        context.start(world, context.backend_for(args.dist_backend, device), args.dist_timeout, device)
        setup_logging(args.log_level)
        if device.type == "cpu" and keep_freed_memory():
            log.debug("glibc malloc: freed memory kept in the heap (no page faults per step)")
        with stop_on_signals(args.save_on_signal), one_line_errors():
            MODES[args.mode](args, explicit, device)
        context.finish()
    except UserError as err:
        if args.log_level == "DEBUG":
            raise
        rank = context.world()
        line = f"error: {f'rank {rank.rank}: ' if rank.active else ''}{err}"
        print(line, file=sys.stderr)
        log_to_files(line)
        return 2
    except RuntimeError as err:  # gloo and NCCL report a lost or silent peer as a RuntimeError (DistError)
        rank = context.world()
        if not rank.active or args.log_level == "DEBUG" or not context.peer_failure(err):
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        line = (f"error: rank {rank.rank}: a collective failed ({reason}): another rank died or waited longer than "
                f"--dist_timeout={args.dist_timeout:g} s; resume with --resume=True")
        print(line, file=sys.stderr)
        log_to_files(line)
        return 1
    except Stopped as stop:
        if context.world().is_main:
            print(stop_message(stop, argv), file=sys.stderr)
            log_to_files(stop_message(stop, argv))
        return stop.exit_code
    finally:
        context.stop()
    return 0


DATA_PARALLEL_MODES = ("train", "retrain")


def single_process_only(args: argparse.Namespace) -> str | None:
    """Why these options cannot run data-parallel, if they cannot."""
    if args.mode not in DATA_PARALLEL_MODES:
        return f"--mode={args.mode} runs in one process"
    if args.save_on_signal:  # the ranks would reach their step boundaries at different steps
        return "--save_on_signal=True runs in one process (data-parallel runs stop at the end of the epoch under way)"
    return None


def start_workers(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``--num_gpu=N > 1`` in a plain process: one worker per GPU, or N gloo CPU workers without CUDA."""
    if problem := single_process_only(args):
        raise UserError(f"--num_gpu={args.num_gpu}: {problem} (pass --num_gpu=1)")
    if torch.cuda.is_available() and torch.cuda.device_count() < args.num_gpu:
        raise UserError(f"--num_gpu={args.num_gpu} but this node has {torch.cuda.device_count()} GPU(s)")
    if not torch.cuda.is_available():
        log.warning("--num_gpu=%d without CUDA: starting %d data-parallel CPU workers (gloo)", args.num_gpu, args.num_gpu)
    return launch.launch(argv, args.num_gpu, Path(__file__).resolve())


def stop_message(stop: Stopped, argv: Sequence[str]) -> str:
    """One line: the signal, what was kept and the exact command that continues the run."""
    if not stop.comment:
        return f"stopped by {stop.name}"
    kept = [a for a in argv if not a.startswith(("--resume=", "--comment="))]
    command = shlex.join(["python", "main.py", *kept, f"--comment={stop.comment}", "--resume=True"])
    return f"stopped by {stop.name}: {stop.saved}; resume with: {command}"


if __name__ == "__main__":
    sys.exit(main())
