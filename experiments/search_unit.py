"""What a protocol's search unit needs from the search loop, shared by the ranking benchmark and NAO +- WPL.

A unit is a plain function run in a worker process (experiments/workers.py) with a JSON dict of options,
not a command line: :func:`unit_args` turns that dict into the full option namespace the builders read,
and :func:`search_epoch` runs one epoch of the search loop (shared phase, then the sampler's) without the
derive step and the checkpoint of ``Trainer.run_epoch``, which a protocol does its own way.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import config
from engine import scheduled_lr
from trainer import Trainer


def unit_args(options: dict[str, Any], seed: int, network_type: str = "rnn32") -> argparse.Namespace:
    """The search's full option set: today's defaults, then the unit's ``options``, then its seed and space
    (on the CPU unless the worker was given a device, which the unit asks for itself)."""
    args = config.build_parser().parse_args([])
    values = {**vars(args), **options, "random_seed": seed, "network_type": network_type, "num_gpu": 0}
    values["shared_rnn_activations"] = list(values["shared_rnn_activations"])
    return argparse.Namespace(**values)


def search_epoch(trainer: Trainer, epoch: int, max_epoch: int, measure_forgetting: bool) -> dict[str, Any]:
    """One epoch of the search loop without its derive step: shared phase, then the sampler's; finite numbers only."""
    if trainer.reg is not None:
        trainer.reg.begin_epoch(epoch)
    trainer.step.set_lr(scheduled_lr(trainer.spec, epoch, max_epoch))
    record = trainer.shared_phase(epoch, trainer.cfg.shared_max_step, measure_forgetting)
    if trainer.sampler.active(epoch):
        record.update(trainer.sampler.learn(epoch))
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def build_trainer(args: argparse.Namespace, regularised: bool, importance: str = "fisher") -> Trainer:
    """The search of ``args`` as a protocol's unit builds it: seeded, the space first (so every variant of a seed
    starts from the same weights and reads the same batches: the paired design), then the sampler, then the
    search's WPL with ``importance`` when ``regularised``; no run directory (the unit's record is its result)."""
    from experiments.workers import unit_device
    from modes import builders
    from regularizers.search_importance import build_search_regularizer
    from regularizers.wpl_search import WPLSearchConfig
    from samplers import SAMPLERS
    from spaces.base import pick
    from trainer import TrainerConfig
    from utils import seed_everything

    if regularised:
        args.wpl_importance = importance
    seed_everything(args.random_seed)
    device = unit_device()
    space = builders.build_space(args, device)
    sampler_cls = SAMPLERS[args.sampler]
    search = sampler_cls.build(space, pick(sampler_cls.Config, args), device, None)
    reg = build_search_regularizer(space.wpl_groups(), pick(WPLSearchConfig, args), args) if regularised else None
    return Trainer(space, search, reg, pick(TrainerConfig, args), None, vars(args))
