"""Building the pieces of a run from the argparse namespace: search space, trainer, configuration.

Shared by main.py (search modes) and retrain.py, so both read options the same way.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

import config
from models.space import SearchSpace, pick
from regularizers.wpl_search import SearchWPL, WPLSearchConfig
from runlog import RunDir
from samplers import SAMPLERS
from trainer import Trainer, TrainerConfig
from utils import UserError, load_json

log = logging.getLogger("wpl")


def build_space(args: argparse.Namespace, device: torch.device) -> SearchSpace:
    if args.network_type == "rnn":
        from data.text import check_split_sizes, load_corpus
        from models.rnn_space import RNNSpace, RNNSpaceConfig

        start = time.time()
        corpus = load_corpus(args.data_dir, args.dataset)
        check_split_sizes(corpus, Path(args.data_dir) / args.dataset,
                          {"train": args.batch_size, "valid": args.batch_size, "test": args.test_batch_size},
                          args.shared_rnn_max_length)
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
    """The search: its space, the ``--sampler`` (built first: the controller's initial weights draw from
    the seeded global generator), WPL when ``--alpha_fisher > 0``, and the loop."""
    space = build_space(args, device)
    sampler_cls = SAMPLERS[args.sampler]
    sampler = sampler_cls.build(space, pick(sampler_cls.Config, args), device, run)
    wpl = SearchWPL(space.wpl_groups(), pick(WPLSearchConfig, args)) if args.alpha_fisher > 0 else None
    return Trainer(space, sampler, wpl, pick(TrainerConfig, args), run, vars(args))


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
    merged.update({k: v for k, v in config.LEGACY_VALUES.items() if k not in saved})  # what older runs did
    merged.update(saved)
    for key in explicit & set(keys):
        merged[key] = getattr(cli, key)
    return argparse.Namespace(**merged)


def run_name(args: argparse.Namespace) -> str:
    return f"{args.dataset}_{args.comment or time.strftime('%Y-%m-%d_%H-%M-%S')}"
