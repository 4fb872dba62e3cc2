"""Entry point: ENAS search with Weight Plasticity Loss, and the modes that use its results.

    python main.py --network_type=rnn --dataset=ptb ...            # search (--mode=train)
    python main.py --mode=derive --load_path=logs/ptb_run          # best of N cells: derived_arch.json
    python main.py --mode=test --load_path=logs/ptb_run            # test split, shared weights
    python main.py --num_gpu=4 ...      # or torchrun --nproc_per_node=4 main.py ...: data-parallel (docs/distributed.md)

Only this file sees the argparse namespace; everything else receives plain values or small
dataclasses built from it.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import config
from options import domains as options_domains
from modes.builders import build_trainer, load_arch, merge_config, run_name
from distributed import comm, context, launch
from engine import improves, require_kind
from models.space import pick
from regularizers.wpl_search import WPLSearchConfig
from engine.runlog import (
    RunDir,
    discard_on_failure,
    note_mid_epoch,
    resolve_checkpoint,
    warn_on_thread_change,
)
from options.safe_io import one_line_errors
from engine.stopping import Stopped, stop_on_signals
from trainer import Trainer
from utils import (
    UserError,
    choose_device,
    keep_freed_memory,
    load_json,
    log_to_files,
    save_json,
    seed_everything,
    setup_logging,
)

log = logging.getLogger("wpl")
MAX_WIDTH = 1 << 16  # a hidden width past this is a typo that would ask for gigabytes
MAX_PERMUTED_TASKS = 50


# -------------------------------------------------------------------------------------- modes
def mode_train(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    run = RunDir(Path(args.log_dir) / run_name(args), args.use_tensorboard)
    with discard_on_failure(run):  # a failure before trainer.train() leaves no run directory behind
        run.refuse_unless_resuming(args.resume, kind="search")
        setup_logging(args.log_level, run.path / "train.log")
        run.remove_stale_temps()
        found = run.load_latest(device) if args.resume else None
        state, path, run_id = None, None, uuid.uuid4().hex
        if found is not None:
            path, state = found
            require_kind(state, path, "search", "resume it with --mode=retrain")  # before anything is rewritten
            run_id = check_resumable(state, path, run, args, explicit)
            if not args.resume_with_new_params:
                args = merge_config(state["config"], args, explicit, config.RUNTIME_KEYS)
            log.info("resuming %s from %s (epoch %d)", run.path, path, state["epoch"])
            warn_on_thread_change(state, device)
            note_mid_epoch(state, path)
        elif args.resume:
            log.info("--resume: no checkpoint in %s yet, starting a fresh run", run.path)
        seed_everything(args.random_seed, args.deterministic)
        trainer = build_trainer(args, device, run)
        trainer.run_id = run_id = comm.from_rank0(run_id)  # one run id for the job (rank 0's is the one written)
        if state is not None:
            load_into(trainer, state, path)
        # Only now, with the checkpoint known to fit, is anything of the run rewritten.
        if run.metrics_path.exists():
            run.truncate_metrics(trainer.epoch, state.get("metrics_lines") if state is not None else 0)
        if run.writes:
            save_json(run.path / "params.json", {**vars(args), "run_id": run_id, "world_size": context.world().size})
        log.info("run directory %s on %s", run.path, device)
    try:
        trainer.train()
    except Stopped as stop:
        latest = run.latest_checkpoint()
        stop.comment = run.path.name[len(args.dataset) + 1:]
        stop.saved = stop.saved or (f"{latest} holds epochs 0-{trainer.epoch - 1}" if latest and trainer.epoch
                                    else "nothing saved yet (no epoch finished)")
        raise
    except UserError as err:  # a failed write elsewhere in the run dir (best_arch.json, a drawing): what is kept
        if isinstance(err.__cause__, OSError) and "--resume=True" not in str(err):
            raise UserError(f"{err}; {run.resume_hint()}") from err.__cause__
        raise
    finally:
        run.close()
    log.info("done: %d epochs in %s", trainer.epoch, run.path)


def note_world_size(trained_on: Any, path: Path) -> None:
    """One line when a run continues on another number of ranks than it ran on (params.json's
    ``world_size``): allowed, the same run with its sums in another order (docs/distributed.md)."""
    now = context.world().size
    if isinstance(trained_on, int) and trained_on != now:
        log.warning("%s was written by a job of %d rank(s); continuing on %d: the same run, its figures equal up to "
                    "float rounding (docs/distributed.md)", path, trained_on, now)


def check_resumable(state: dict[str, Any], path: Path, run: RunDir, args: argparse.Namespace, explicit: set[str]) -> str:
    """The run id to keep; refuses a checkpoint of another run, or of another shape than the command line asks."""
    params = run.path / "params.json"
    recorded = load_json(params) if params.is_file() else {}
    own_id = recorded.get("run_id")
    note_world_size(recorded.get("world_size"), path)
    ckpt_id = state.get("run_id") or own_id
    if own_id and ckpt_id != own_id and not args.resume_with_new_params:
        raise UserError(f"{path} belongs to run {ckpt_id[:8]}, not to {run.path} (run {own_id[:8]}): "
                        f"refusing to resume from it (--resume_with_new_params=True forces it)")
    saved = state["config"]
    differ = [k for k in sorted(config.SHAPE_KEYS & explicit) if k in saved and saved[k] != getattr(args, k)]
    if differ and not args.resume_with_new_params:
        shown = ", ".join(f"--{k}={getattr(args, k)} (checkpoint: {saved[k]})" for k in differ)
        raise UserError(f"{path} was trained with another shape: {shown}; pass the checkpoint's values, "
                        f"or --resume_with_new_params=True to try this command line's")
    return ckpt_id or uuid.uuid4().hex


def load_into(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """``trainer.load_state_dict`` with one line when the checkpoint does not fit the model."""
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"checkpoint {path} does not fit this configuration: {' '.join(str(err).split())[:300]}") from err


def load_for_eval(args: argparse.Namespace, explicit: set[str], device: torch.device) -> tuple[argparse.Namespace, Trainer, RunDir, dict[str, Any]]:
    """Rebuild a search run from ``--load_path`` (model shape from the checkpoint, the rest from the CLI)."""
    path, state = resolve_checkpoint(args.load_path, device)
    require_kind(state, path, "search", f"--mode={args.mode} reads a search run")  # before its config is merged
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    keys = set(vars(args)) - config.SHAPE_KEYS
    args = merge_config(state["config"], args, explicit, keys)
    seed_everything(args.random_seed, args.deterministic)
    run = RunDir(run_dir, use_tensorboard=False)
    trainer = build_trainer(args, device, None)
    try:
        trainer.load_weights(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path} does not fit this model: {' '.join(str(err).split())[:300]}") from err
    log.info("loaded %s (epoch %d)", path, state["epoch"])
    return args, trainer, run, state


def mode_derive(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    """The best of ``--derive_num_sample`` cells, scored on the whole validation split: ``derived_arch.json``.

    It replaces ``best_arch.json`` (what ``--mode=test`` and retraining read) only when it scores better there
    (or there is none); a better cell found by the search is kept. The log and the output say which."""
    args, trainer, run, _ = load_for_eval(args, explicit, device)
    arch, _ = trainer.derive(args.derive_num_sample)
    result = trainer.space.evaluate(arch, "valid")
    metric = f"valid_{trainer.space.metric}"
    derived = {"arch": arch.to_dict(), "score": result[metric], "metric": metric}
    save_json(run.path / "derived_arch.json", derived)
    drawing = trainer.space.draw(arch, run.networks / "derived_arch.png")
    replace, verdict = better_than_best(run.path / "best_arch.json", derived, trainer.space.metric)
    if replace:
        save_json(run.path / "best_arch.json", derived)
        trainer.space.draw(arch, run.networks / "best_arch.png")
    log.info("derive: %s", verdict)
    print(f"best of {args.derive_num_sample} samples: {arch}\n{metric} {result[metric]:.4f}\n"
          f"written: {run.path / 'derived_arch.json'}, {drawing}\n{verdict}")


def better_than_best(path: Path, derived: dict[str, Any], metric: str) -> tuple[bool, str]:
    """Whether the ``derived`` cell should replace the one in ``path``, and one line saying what happens."""
    key = derived["metric"]
    if not path.is_file():
        return True, f"best_arch.json written ({key} {derived['score']:.4f}): there was none"
    saved = load_json(path)
    score = saved.get("score")
    if saved.get("metric", key) != key or not isinstance(score, (int, float)) or not math.isfinite(score):
        return False, f"best_arch.json kept: it holds no {key} to compare with; the derived cell is in derived_arch.json"
    if improves(metric, derived["score"], score):
        return True, f"best_arch.json replaced: {key} {score:.4f} -> {derived['score']:.4f} (the derived cell is better)"
    return False, (f"best_arch.json kept: its {key} {score:.4f} is at least as good as the derived cell's "
                   f"{derived['score']:.4f} (in derived_arch.json)")


def mode_test(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from modes import retrain
    from recipes.arch import arch_from_option

    if retrain.is_retrain_run(args.load_path):
        retrain.mode_test_retrained(args, explicit, device)
        return
    args, trainer, run, _ = load_for_eval(args, explicit, device)
    if args.arch:  # a file, or "random" (seeded by --random_seed)
        arch = arch_from_option(trainer.space, args.arch, args.random_seed)
    else:
        arch_path = run.path / "best_arch.json"
        if not arch_path.is_file():
            raise UserError(f"no architecture to test: {arch_path} is missing (run --mode=derive first or pass --arch=FILE)")
        arch = load_arch(trainer.space, arch_path)
    result = trainer.space.evaluate(arch, "test")
    result = {**result, "arch": arch.to_dict(), "checkpoint": str(args.load_path), "weights": "shared"}
    save_json(run.path / "test_results.json", result)
    shown = {k: v for k, v in result.items() if k.startswith("test_")}
    print(f"{arch}\n" + "\n".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


def mode_retrain(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from modes import retrain

    retrain.mode_retrain(args, explicit, device)


def mode_forgetting(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.forgetting import mode_forgetting as run

    args, trainer, run_dir, state = load_for_eval(args, explicit, device)
    source = "controller" if args.sampler == "reinforce" else f"{args.sampler} sampler"
    run(trainer, state, run_dir.path, args.forgetting_models, args.arch == "random", args.forgetting_variants,
        pick(WPLSearchConfig, args), args.random_seed, source)


def mode_continual(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.continual import ContinualConfig
    from experiments.continual_main import run_continual

    options = {"ewc": {"fisher": args.ewc_fisher, "per_task": args.ewc_per_task},
               "online_ewc": {"gamma": args.online_ewc_gamma, "fisher": args.ewc_fisher},
               "si": {"xi": args.si_xi},
               "wpl": {"mode": args.wpl_mode, "lambda_fisher": args.lambda_fisher, "momentum": args.momentum,
                       "clip_by_norm": args.fisher_clip_by_norm, "consolidate": "task"}}
    strengths = {"ewc": args.ewc_lambda, "online_ewc": args.online_ewc_lambda, "si": args.si_c, "mas": args.mas_lambda,
                 "l2": args.l2_lambda, "wpl": args.wpl_alpha}
    try:
        hidden = [int(w) for w in args.cl_hidden.split(",")]
    except ValueError as err:
        raise UserError(f"--cl_hidden={args.cl_hidden}: expected comma-separated widths such as 400,400") from err
    if not all(1 <= w <= MAX_WIDTH for w in hidden):
        raise UserError(f"--cl_hidden={args.cl_hidden}: every width must be between 1 and {MAX_WIDTH}")
    unknown = sorted(set(args.strategies) - {"none", "joint", *strengths})
    if unknown:
        raise UserError(f"--strategies: unknown {', '.join(unknown)} (none, joint, {', '.join(strengths)})")
    if len(set(args.strategies)) != len(args.strategies):
        raise UserError(f"--strategies={','.join(args.strategies)}: a strategy is repeated")
    if "num_tasks" in explicit and args.benchmark != "permuted_mnist":
        raise UserError(f"--num_tasks is read only with --benchmark=permuted_mnist (--benchmark={args.benchmark} "
                        f"has its own tasks)")
    if args.num_tasks > MAX_PERMUTED_TASKS:  # each task holds its own permuted copy of MNIST, about 190 MB
        raise UserError(f"--num_tasks={args.num_tasks}: at most {MAX_PERMUTED_TASKS} (each task holds a permuted copy "
                        f"of MNIST, about 190 MB)")
    if args.task_split and args.benchmark != "folder":
        raise UserError(f"--task_split is read only with --benchmark=folder (got --benchmark={args.benchmark})")
    if args.seeds < 1 or args.cl_iters < 1 or args.num_tasks < 2:
        raise UserError("--seeds and --cl_iters must be >= 1 and --num_tasks >= 2")
    cfg = ContinualConfig(args.strategies, args.seeds, args.random_seed, args.cl_iters, args.cl_batch_size, args.cl_lr,
                          (0.9, 0.999), hidden, args.cl_eval_every, args.importance_samples, strengths, options)
    name = f"{args.benchmark}_{args.comment or time.strftime('%Y-%m-%d_%H-%M-%S')}"
    with resume_command(name[len(args.benchmark) + 1:]):
        run_continual(Path(args.log_dir) / name, args.benchmark, args.scenario, args.data_dir, cfg,
                      num_tasks=args.num_tasks, task_split=args.task_split, resume=args.resume,
                      use_tensorboard=args.use_tensorboard)


def mode_pathnet(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.pathnet import EvolutionConfig
    from experiments.pathnet_main import run_pathnet
    from experiments.pathnet_transfer import NetConfig

    net = NetConfig(args.pathnet_layers, args.pathnet_modules, args.pathnet_units, args.pathnet_active,
                    args.pathnet_aggregate, args.pathnet_wpl_alpha, args.pathnet_fisher_batches)
    evolution = EvolutionConfig(args.pathnet_population, args.pathnet_batches, args.pathnet_batch_size, args.pathnet_lr,
                                args.pathnet_converge, args.pathnet_max_generations, args.noise,
                                args.pathnet_mutation_bound)
    name = f"pathnet_{args.comment or time.strftime('%Y-%m-%d_%H-%M-%S')}"
    seeds = list(range(args.random_seed, args.random_seed + args.seeds))
    with resume_command(name[len("pathnet_"):]):
        run_pathnet(Path(args.log_dir) / name, args.data_dir, args.tasks, args.pathnet_variants, seeds, net, evolution,
                    args.resume, args.use_tensorboard)


@contextmanager
def resume_command(comment: str) -> Iterator[None]:
    """A stop signal in an experiment names its run's ``--comment``, so the stop line gives the resume command."""
    try:
        yield
    except Stopped as stop:
        stop.comment = comment
        stop.saved = stop.saved or "nothing saved yet"
        raise


# What each --mode runs; config.MODES (the choices and their --help lines) names the same modes (tested).
MODES = {"train": mode_train, "derive": mode_derive, "test": mode_test, "forgetting": mode_forgetting,
         "retrain": mode_retrain, "continual": mode_continual,
         "pathnet": mode_pathnet}


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
