"""Entry point: ENAS search with Weight Plasticity Loss, and the modes that use its results.

    python main.py --network_type=rnn --dataset=ptb ...            # search (--mode=train)
    python main.py --mode=derive --load_path=logs/ptb_run          # best of N sampled cells
    python main.py --mode=test --load_path=logs/ptb_run            # test split, shared weights

Only this file sees the argparse namespace; everything else receives plain values or small
dataclasses built from it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import config
from models.controller import Controller
from models.space import SearchSpace, pick
from models.wpl import WPL
from runlog import RunDir, resolve_checkpoint
from trainer import Trainer, TrainerConfig
from utils import UserError, choose_device, load_json, save_json, seed_everything, setup_logging

log = logging.getLogger("wpl")


# ---------------------------------------------------------------------------------- building
def build_space(args: argparse.Namespace, device: torch.device) -> SearchSpace:
    if args.network_type == "rnn":
        from data.text import load_corpus
        from models.rnn_space import RNNSpace, RNNSpaceConfig

        start = time.time()
        corpus = load_corpus(args.data_dir, args.dataset)
        log.info("corpus %s: vocabulary %d, tokens train %d / valid %d / test %d (%.1fs)", args.dataset,
                 corpus.ntokens, len(corpus.train), len(corpus.valid), len(corpus.test), time.time() - start)
        space: SearchSpace = RNNSpace(corpus, pick(RNNSpaceConfig, args, shared_rnn_activations=tuple(args.shared_rnn_activations)), device)
    else:
        from models.cnn_space import build_cnn_space

        space = build_cnn_space(args, device)
    params = sum(p.numel() for p in space.model.parameters())
    log.info("shared %s model: %.2fM parameters", args.network_type, params / 1e6)
    return space


def build_trainer(args: argparse.Namespace, device: torch.device, run: RunDir | None) -> Trainer:
    space = build_space(args, device)
    controller = Controller(space.decision_sizes, args.controller_hid, args.softmax_temperature, args.tanh_c).to(device)
    wpl = None
    if args.alpha_fisher > 0:
        wpl = WPL(space.wpl_groups(), lambda_fisher=args.lambda_fisher, clip_by_norm=args.fisher_clip_by_norm,
                  momentum=args.momentum, mode=args.wpl_alpha_mode)
    return Trainer(space, controller, wpl, pick(TrainerConfig, args), run, vars(args))


def load_arch(space: SearchSpace, path: Path) -> Any:
    data = load_json(path)
    try:
        return space.arch_from_dict(data["arch"] if "arch" in data else data)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a valid architecture for this search space: {err}") from err


# ------------------------------------------------------------------------------------- config
def merge_config(saved: dict[str, Any], cli: argparse.Namespace, explicit: set[str], keys: set[str] | frozenset[str]) -> argparse.Namespace:
    """The saved configuration, with the command line's value for each of ``keys`` it gave explicitly."""
    merged = dict(vars(config.build_parser().parse_args([])))  # today's defaults for options newer than the run
    merged.update(saved)
    for key in explicit & set(keys):
        merged[key] = getattr(cli, key)
    return argparse.Namespace(**merged)


def run_name(args: argparse.Namespace) -> str:
    return f"{args.dataset}_{args.comment or time.strftime('%Y-%m-%d_%H-%M-%S')}"


# -------------------------------------------------------------------------------------- modes
def mode_train(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    run = RunDir(Path(args.log_dir) / run_name(args), args.use_tensorboard)
    setup_logging(args.log_level, run.path / "train.log")
    checkpoint = run.latest_checkpoint()
    state = None
    if args.resume and checkpoint is not None:
        path, state = resolve_checkpoint(str(checkpoint), device)
        if not args.resume_with_new_params:
            args = merge_config(state["config"], args, explicit, config.RUNTIME_KEYS)
        log.info("resuming %s from %s (epoch %d)", run.path, path, state["epoch"])
    elif args.resume:
        log.info("--resume: no checkpoint in %s yet, starting a fresh run", run.path)
    elif checkpoint is not None or run.metrics_path.exists():
        raise UserError(f"{run.path} already holds a run: pass --resume=True to continue it, or another --comment")
    seed_everything(args.random_seed, args.deterministic)
    save_json(run.path / "params.json", vars(args))
    trainer = build_trainer(args, device, run)
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(f"checkpoint does not fit this configuration: {str(err).splitlines()[0]}") from err
        run.truncate_metrics(trainer.epoch)
    log.info("run directory %s on %s", run.path, device)
    try:
        trainer.train()
    except KeyboardInterrupt:
        latest = run.latest_checkpoint()
        raise UserError(f"interrupted during epoch {trainer.epoch}; the last complete epoch is saved in "
                        f"{latest or 'no checkpoint yet'}: continue with --resume=True --comment={args.comment}")
    finally:
        run.close()
    log.info("done: %d epochs in %s", trainer.epoch, run.path)


def load_for_eval(args: argparse.Namespace, explicit: set[str], device: torch.device) -> tuple[argparse.Namespace, Trainer, RunDir, dict[str, Any]]:
    """Rebuild a search run from ``--load_path`` (model shape from the checkpoint, the rest from the CLI)."""
    path, state = resolve_checkpoint(args.load_path, device)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    keys = set(vars(args)) - config.SHAPE_KEYS
    args = merge_config(state["config"], args, explicit, keys)
    seed_everything(args.random_seed, args.deterministic)
    run = RunDir(run_dir, use_tensorboard=False)
    trainer = build_trainer(args, device, None)
    trainer.space.model.load_state_dict(state["model"])
    trainer.controller.load_state_dict(state["controller"])
    log.info("loaded %s (epoch %d)", path, state["epoch"])
    return args, trainer, run, state


def mode_derive(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    args, trainer, run, _ = load_for_eval(args, explicit, device)
    arch, error = trainer.derive(args.derive_num_sample)
    result = trainer.space.evaluate(arch, "valid")
    metric = f"valid_{trainer.space.metric}"
    save_json(run.path / "best_arch.json", {"arch": arch.to_dict(), "score": result[metric], "metric": metric})
    drawing = trainer.space.draw(arch, run.networks / "best_arch.png")
    print(f"best of {args.derive_num_sample} samples: {arch}\n{metric} {result[metric]:.4f}\n"
          f"written: {run.path / 'best_arch.json'}, {drawing}")


def mode_test(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    args, trainer, run, _ = load_for_eval(args, explicit, device)
    arch_path = Path(args.arch) if args.arch else run.path / "best_arch.json"
    if not arch_path.is_file():
        raise UserError(f"no architecture to test: {arch_path} is missing (run --mode=derive first or pass --arch=FILE)")
    arch = load_arch(trainer.space, arch_path)
    result = trainer.space.evaluate(arch, "test")
    result = {**result, "arch": arch.to_dict(), "checkpoint": str(args.load_path), "weights": "shared"}
    save_json(run.path / "test_results.json", result)
    shown = {k: v for k, v in result.items() if k.startswith("test_")}
    print(f"{arch}\n" + "\n".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


def mode_forgetting(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    import forgetting

    args, trainer, run, state = load_for_eval(args, explicit, device)
    wpl_options = {"lambda_fisher": args.lambda_fisher, "clip_by_norm": args.fisher_clip_by_norm, "momentum": args.momentum}
    forgetting.mode_forgetting(trainer, state, run.path, args.forgetting_models, args.arch == "random",
                               args.forgetting_variants, trainer.alpha(state["epoch"]), wpl_options, args.random_seed)


MODES = {"train": mode_train, "derive": mode_derive, "test": mode_test, "forgetting": mode_forgetting}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = config.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.mode not in MODES:
            raise UserError(f"--mode={args.mode} is not available yet")
        explicit = config.explicit_options(argv)
        MODES[args.mode](args, explicit, choose_device(args.num_gpu))
    except UserError as err:
        if args.log_level == "DEBUG":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
