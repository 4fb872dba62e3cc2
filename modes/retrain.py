"""Final training: one architecture trained from scratch, with no controller and no WPL (``--mode=retrain``).

    python main.py --mode=retrain --load_path=logs/ptb_search --comment=final     # the search's best_arch.json
    python main.py --mode=retrain --arch=path/to/best_arch.json --comment=final
    python main.py --mode=retrain --arch=random --random_seed=3 --comment=random3  # random-search baseline
    python main.py --mode=test --load_path=logs/ptb_final                          # re-evaluate the best weights

The two modes' skeleton on top of ``recipes`` (the training loops), ``recipes.arch`` (which architecture)
and ``builders`` (options into typed configs). The model is the search space's shared model, built at
the retrain's sizes with fresh weights and pruned to the architecture (``prune_to``), so the equations
stay those of models/rnn.py and models/cnn.py and shared weights transfer by name.

Run directory ``<log_dir>/<dataset>_<comment>/``: params.json, arch.json, train.log, metrics.jsonl,
TensorBoard events, networks/arch.png, checkpoints/{latest,epoch_XXXX,best}.pt and test_results.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modes import builders
import config
from distributed.comm import barrier
from engine import kind_of
from spaces.base import SearchSpace
from recipes.arch import (
    arch_shape,
    find_arch,
    inherited_options,
    run_dir_of,
    search_run_of,
)
from engine.lifecycle import open_run, run_path
from engine.runlog import RunDir, load_checkpoint
from utils import UserError, save_json, seed_everything

log = logging.getLogger("wpl")

RESUME_KEYS = config.RUNTIME_KEYS | {"retrain_epochs"}  # a resumed retrain may be given more epochs
TEST_KEYS = (config.RUNTIME_KEYS - {"dataset"}) | {"test_batch_size"}


def with_search_config(args: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """``args`` with the search run's space and regularisation options where the command line gave none."""
    run = search_run_of(args.load_path, args.arch)
    return args if run is None else argparse.Namespace(**{**vars(args), **inherited_options(run, explicit)})


def choose_arch(args: argparse.Namespace, explicit: set[str]) -> tuple[argparse.Namespace, dict[str, Any] | None, str]:
    """The architecture to retrain (None: draw a random one) and where it came from; ``args`` gains its shape."""
    d, source = find_arch(args.arch, args.load_path, args.random_seed)
    if d is None:
        return args, None, source
    shape = {k: v for k, v in arch_shape(d, source).items() if k not in explicit}
    return argparse.Namespace(**{**vars(args), **shape}), d, source


def report_test(space: SearchSpace, model: nn.Module, arch: Any, best: dict[str, Any], best_path: Path,
                run: RunDir) -> dict[str, Any]:
    """Test the best weights; write and print test_results.json."""
    model.load_state_dict(best["model"])
    result = space.evaluate(arch, "test", model=model)
    if not run.writes:
        return result
    epochs = max((r["epoch"] for r in run.read_metrics()), default=-1) + 1
    result = {**result, "params": model.count_parameters(arch), "epochs": epochs,  # type: ignore[operator]
              "best_epoch": best["epoch"], best["metric"]: best["score"], "arch": arch.to_dict(),
              "checkpoint": str(best_path), "weights": "retrained"}
    save_json(run.path / "test_results.json", result)
    shown = {k: v for k, v in result.items() if k.startswith(("test_", "valid_")) or k in ("params", "epochs", "best_epoch")}
    print(f"{arch}\n" + "\n".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    return result


def mode_retrain(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    """``--mode=retrain``: train the architecture in a new run directory, then test its best weights."""
    args = with_search_config(args, explicit)
    with open_run(run_path(args.log_dir, args.dataset, args.comment), "retrain", args.resume, device,
                  prefix=args.dataset, use_tensorboard=args.use_tensorboard, log_level=args.log_level) as opening:
        run, state = opening.run, opening.state
        if state is not None:
            if not args.resume_with_new_params:
                args = builders.merge_config(state["config"], args, explicit, RESUME_KEYS)
            arch_dict, source = state["arch"], str(run.path / "arch.json")
        else:
            args, arch_dict, source = choose_arch(args, explicit)
        seed_everything(args.random_seed, args.deterministic)
        retrainer = builders.build_retrainer(args, arch_dict, device, run)
        if state is None:
            if run.writes:
                save_json(run.path / "arch.json", {"arch": retrainer.arch.to_dict(), "source": source})
                run.image("networks/arch", retrainer.space.draw(retrainer.arch, run.networks / "arch.png"), 0)
        else:
            try:
                retrainer.load_state_dict(state)
            except (RuntimeError, ValueError, KeyError) as err:
                raise UserError(f"checkpoint does not fit this configuration: {str(err).splitlines()[0]}") from err
        opening.commit(retrainer.epoch, vars(args))  # only once the checkpoint is known to fit
        log.info("retraining %s (%s) in %s on %s for %d epochs", retrainer.arch, source, run.path, device, retrainer.cfg.epochs)
    opening.run_loop(retrainer.train, lambda: f"epochs 0-{retrainer.epoch - 1}" if retrainer.epoch else "",
                     nothing="no epoch finished")
    if retrainer.best is None:
        raise UserError(f"no epoch reached a finite validation score: nothing to test (see {run.metrics_path})")
    barrier()  # rank 0 has written best.pt
    best = load_checkpoint(retrainer.best_path, device)
    report_test(retrainer.space, retrainer.model, retrainer.arch, best, retrainer.best_path, run)


def is_retrain_run(load_path: str) -> bool:
    """Whether ``--load_path`` names a retrain run (its folder holds arch.json) rather than a search run."""
    return bool(load_path) and (run_dir_of(Path(load_path)) / "arch.json").is_file()


def mode_test_retrained(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    """``--mode=test`` on a retrain run: rebuild the architecture from its best checkpoint and test it."""
    path = Path(args.load_path)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    state = load_checkpoint(path, device)
    if kind_of(state) != "retrain" or "score" not in state:
        raise UserError(f"{path} is not the best checkpoint of a retrain run (checkpoints/best.pt)")
    args = builders.merge_config(state["config"], args, explicit, TEST_KEYS)
    seed_everything(args.random_seed, args.deterministic)
    space, model, arch = builders.build_fixed(args, state["arch"], device)
    report_test(space, model, arch, state, path, RunDir(run_dir_of(path), use_tensorboard=False))
