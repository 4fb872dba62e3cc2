"""The search family of modes: ``train`` (the search), ``derive``, ``test`` and ``forgetting``.

    python main.py --network_type=rnn --dataset=ptb ...            # search (--mode=train)
    python main.py --mode=derive --load_path=logs/ptb_run          # best of N cells: derived_arch.json
    python main.py --mode=test --load_path=logs/ptb_run            # test split, shared weights

Each mode opens its run directory (a fresh one, a resumed one, or a refusal), rebuilds the trainer from the
options (merged with a checkpoint's saved configuration on a resume) and runs one loop of ``trainer.py``.
"""

from __future__ import annotations

import argparse
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import torch

import config
from distributed import comm, context
from engine import improves, require_kind
from engine.lifecycle import open_run, run_path, resolve_checkpoint
from engine.runlog import RunDir
from spaces.base import pick
from modes.builders import build_trainer, load_arch, merge_config
from regularizers.wpl_search import WPLSearchConfig
from trainer import Trainer
from utils import UserError, load_json, save_json, seed_everything

log = logging.getLogger("wpl")


def mode_train(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    with open_run(run_path(args.log_dir, args.dataset, args.comment), "search", args.resume, device,
                  prefix=args.dataset, use_tensorboard=args.use_tensorboard, log_level=args.log_level) as opening:
        run, state, path, run_id = opening.run, opening.state, opening.checkpoint, uuid.uuid4().hex
        if state is not None and path is not None:
            run_id = check_resumable(state, path, run, args, explicit)
            if not args.resume_with_new_params:
                args = merge_config(state["config"], args, explicit, config.RUNTIME_KEYS)
        seed_everything(args.random_seed, args.deterministic)
        trainer = build_trainer(args, device, run)
        trainer.run_id = run_id = comm.from_rank0(run_id)  # one run id for the job (rank 0's is the one written)
        if state is not None and path is not None:
            load_into(trainer, state, path)
        opening.commit(trainer.epoch, {**vars(args), "run_id": run_id})  # only now, the checkpoint known to fit
        log.info("run directory %s on %s", run.path, device)
    opening.run_loop(trainer.train, lambda: f"epochs 0-{trainer.epoch - 1}" if trainer.epoch else "",
                     nothing="no epoch finished")
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
    require_kind(state, path, "search")  # before its config is merged
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


def mode_forgetting(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.forgetting.protocol import mode_forgetting as run

    args, trainer, run_dir, state = load_for_eval(args, explicit, device)
    source = "controller" if args.sampler == "reinforce" else f"{args.sampler} sampler"
    run(trainer, state, run_dir.path, args.forgetting_models, args.arch == "random", args.forgetting_variants,
        pick(WPLSearchConfig, args), args.random_seed, source)
