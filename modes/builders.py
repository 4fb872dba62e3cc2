"""Building the pieces of a run from the argparse namespace: search space, trainer, retraining, configuration.

The one place (besides main.py and the thin mode modules) that reads the namespace: everything it builds
receives typed configs. Shared by the search modes and modes/retrain.py, so both read options the same way.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

import config
from distributed.context import world
from spaces import SPACES
from spaces.base import OptimSpec, Retraining, SearchSpace, pick
from recipes import RECIPES, RetrainConfig, Retrainer
from recipes.arch import make_arch
from regularizers.search_importance import build_search_regularizer
from regularizers.wpl_search import WPLSearchConfig
from engine.runlog import RunDir
from samplers import SAMPLERS
from trainer import Trainer, TrainerConfig
from utils import UserError, load_json

log = logging.getLogger("wpl")


def build_space(args: argparse.Namespace, device: torch.device) -> SearchSpace:
    """The search space the options describe, its data loaded and its shared model built on ``device``.

    Data-parallel, ``--batch_size`` is the global batch: each of the N ranks reads ``batch_size / N``
    of it, so the same command on 1 or N ranks takes the same steps on the same data."""
    ranks = world().size
    if args.batch_size % ranks:
        raise UserError(f"--batch_size={args.batch_size} is the global batch and must divide evenly among the "
                        f"{ranks} ranks (each reads batch_size / {ranks}); pass a multiple of {ranks}")
    if args.network_type not in SPACES:
        raise UserError(f"--network_type={args.network_type}: unknown; known: {', '.join(SPACES)}")
    space = SPACES[args.network_type].build(args, device)
    params = sum(p.numel() for p in space.model.parameters())
    log.info("shared %s model: %.2fM parameters", args.network_type, params / 1e6)
    return space


def build_trainer(args: argparse.Namespace, device: torch.device, run: RunDir | None) -> Trainer:
    """The search: its space, the ``--sampler`` (built first: the controller's initial weights draw from
    the seeded global generator), WPL (its ``--wpl_importance``) when ``--alpha_fisher > 0``, and the loop."""
    space = build_space(args, device)
    sampler_cls = SAMPLERS[args.sampler]
    sampler = sampler_cls.build(space, pick(sampler_cls.Config, args), device, run)
    wpl = build_search_regularizer(space.wpl_groups(), pick(WPLSearchConfig, args), args) if args.alpha_fisher > 0 else None
    return Trainer(space, sampler, wpl, pick(TrainerConfig, args), run, vars(args))


def load_arch(space: SearchSpace, path: Path) -> Any:
    data = load_json(path)
    try:
        return space.arch_from_dict(data.get("arch", data))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a valid architecture for this search space: {err}") from err


# ------------------------------------------------------------------------------------ retrain
def retraining(args: argparse.Namespace) -> Retraining:
    """The space's retraining plan (its recipe, sizes and optimiser), or one line when it has none."""
    plan = SPACES[args.network_type].retraining
    if plan is None:
        raise UserError(f"--network_type={args.network_type} has no retraining recipe: it can be searched, "
                        "not retrained")
    return plan


def retrain_sizes(args: argparse.Namespace) -> argparse.Namespace:
    """The options a retrain's space is built from: the retrain's sizes in place of the search's."""
    return argparse.Namespace(**{**vars(args), **retraining(args).sizes(args)})


def retrain_config(args: argparse.Namespace) -> RetrainConfig:
    return RetrainConfig(epochs=args.retrain_epochs or RECIPES[retraining(args).recipe].default_epochs,
                         save_epoch=args.save_epoch, max_save_num=args.max_save_num, log_step=args.log_step,
                         bptt=args.retrain_bptt, nonmono=args.retrain_nonmono, cutout=args.retrain_cutout,
                         aux_weight=args.retrain_aux_weight, seed=args.random_seed)


def retrain_optim_spec(args: argparse.Namespace) -> OptimSpec:
    return retraining(args).optim(args)


def build_fixed(args: argparse.Namespace, arch_dict: dict[str, Any] | None,
                device: torch.device) -> tuple[SearchSpace, nn.Module, Any]:
    """The space (data, evaluation) at the retrain's sizes, the architecture (``arch_dict``, or a random
    one seeded by ``--random_seed``) and the model a recipe trains: the space's shared model with fresh
    weights pruned to the architecture (plus what the recipe adds, e.g. an auxiliary head)."""
    try:
        space = build_space(retrain_sizes(args), device)
    except ValueError as err:
        raise UserError(f"cannot build the model: {err}") from err
    arch = make_arch(space, arch_dict, args.random_seed)
    pruned = space.model.prune_to(arch)  # type: ignore[operator]
    model = RECIPES[retraining(args).recipe].model_for(pruned, space, retrain_config(args)).to(device)
    log.info("architecture %s: %.3fM parameters", arch, model.count_parameters(arch) / 1e6)
    return space, model, arch


def build_retrainer(args: argparse.Namespace, arch_dict: dict[str, Any] | None, device: torch.device,
                    run: RunDir) -> Retrainer:
    space, model, arch = build_fixed(args, arch_dict, device)
    recipe = RECIPES[retraining(args).recipe]
    return recipe(space, model, arch, retrain_optim_spec(args), retrain_config(args), run, vars(args))


# ------------------------------------------------------------------------------------- config
def merge_config(saved: dict[str, Any], cli: argparse.Namespace, explicit: set[str], keys: set[str] | frozenset[str]) -> argparse.Namespace:
    """The saved configuration, with the command line's value for each of ``keys`` it gave explicitly."""
    merged = dict(vars(config.build_parser().parse_args([])))  # today's defaults for options newer than the run
    merged.update({k: v for k, v in config.LEGACY_VALUES.items() if k not in saved})  # what older runs did
    merged.update(saved)
    for key in explicit & set(keys):
        merged[key] = getattr(cli, key)
    return argparse.Namespace(**merged)

