"""A paired measurement of multi-model forgetting from one search checkpoint (``--mode=forgetting``).

The in-search metric compares a WPL run with a no-WPL run that differ in everything (sampled
architectures, batches, dropout masks). Here every variant starts from the *same* weights,
optimiser, data cursors and random state, trains the *same* architectures in the same order on the
same batches exactly as the shared phase does (``Trainer.train_arch``, handed each variant's own
regulariser), and differs only in the WPL arithmetic or importance measure. For each
architecture ``err1`` is measured right after its own training and ``err2`` after the last one, so
``diff = err2 - err1`` is what the later architectures cost it. The noise floor (``err2 - err1``
with no training in between) is zero in eval mode, which makes every non-zero diff real.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from analysis.stats import bootstrap_ci
from regularizers.search_importance import SEARCH_IMPORTANCES, build_search_regularizer
from regularizers.wpl import MODES
from regularizers.wpl_search import SearchWPL, WPLSearchConfig, scheduled_alpha
from trainer import Trainer
from utils import UserError, save_json

log = logging.getLogger("wpl")
VARIANTS = ("none", *MODES, *SEARCH_IMPORTANCES)


def variant_regularizer(trainer: Trainer, variant: str, wpl: WPLSearchConfig, epoch: int) -> SearchWPL | None:
    """A fresh WPL (zero importance, anchored at the current weights) at ``epoch``'s strength, on from
    the first architecture and never reset: of arithmetic ``variant`` ("compound", "loss") with
    ``wpl``'s importance, or of importance ``variant`` ("fisher", "mas", "si") with ``wpl``'s
    arithmetic; ``None`` for ``"none"``."""
    if variant == "none":
        return None
    which = {"wpl_alpha_mode": variant} if variant in MODES else {"wpl_importance": variant}
    cfg = dataclasses.replace(wpl, **which, start_using_fisher=0, set_fisher_zero_per_iter=0)
    reg = build_search_regularizer(trainer.space.wpl_groups(), cfg)
    reg.begin_epoch(epoch)
    return reg


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cursor_fingerprint(state: Any) -> str:
    """Hash of the non-tensor parts of a training-data cursor, so equal hashes mean the same
    batches were read; carried hidden states legitimately differ between variants."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        return None if isinstance(x, torch.Tensor) else x

    return hashlib.sha1(repr(strip(state)).encode()).hexdigest()


def run_variant(trainer: Trainer, start: dict[str, Any], archs: list[Any], variant: str, wpl: WPLSearchConfig,
                epoch: int) -> dict[str, Any]:
    """Train ``archs`` in turn from ``start`` with one WPL variant; err1/err2 for each."""
    space = trainer.space
    trainer.load_state_dict(start)
    reg = variant_regularizer(trainer, variant, wpl, epoch)
    fingerprint = weights_fingerprint(space.model)
    cursors = [cursor_fingerprint(space.state_dict()["train"])]
    began = time.time()
    err1, ce, penalty = [], [], []
    for arch in archs:
        stats = trainer.train_arch(arch, reg)
        cursors.append(cursor_fingerprint(space.state_dict()["train"]))
        err1.append(space.error(arch))
        ce.append(stats["ce"])
        penalty.append(stats["penalty"])
    err2 = [space.error(arch) for arch in archs]
    diff = [b - a for a, b in zip(err1, err2)]
    return {
        "err1": err1, "err2": err2, "diff": diff,
        "mean_diff": float(np.mean(diff)), "mean_diff_ci95": bootstrap_ci(diff),
        "final_mean_error": float(np.mean(err2)),
        "wpl_ce_ratio": float(np.mean(penalty) / np.mean(ce)) if np.mean(ce) else 0.0,
        "start_weights_sha1": fingerprint,
        "batches_sha1": hashlib.sha1("".join(cursors).encode()).hexdigest(),
        "seconds": time.time() - began,
    }


def run_forgetting(trainer: Trainer, start: dict[str, Any], archs: list[Any], variants: Sequence[str],
                   wpl: WPLSearchConfig, epoch: int) -> dict[str, Any]:
    """Every variant from ``start`` with WPL's options ``wpl`` at the strength of search epoch ``epoch``."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise UserError(f"unknown forgetting variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    trainer.load_state_dict(start)
    space = trainer.space
    first = [space.error(a) for a in archs]
    floor = [space.error(a) - e for a, e in zip(archs, first)]
    results: dict[str, Any] = {
        "num_models": len(archs), "alpha": scheduled_alpha(wpl, epoch), "error_unit": space.error_unit,
        "archs": [a.to_dict() for a in archs],
        "noise_floor": {"diff": floor, "mean": float(np.mean(floor)), "max_abs": float(np.max(np.abs(floor)))},
        "variants": {},
    }
    for variant in variants:
        log.info("forgetting: variant %s (%d architectures)", variant, len(archs))
        results["variants"][variant] = run_variant(trainer, start, archs, variant, wpl, epoch)
    if "none" in results["variants"]:
        base = results["variants"]["none"]["diff"]
        for res in results["variants"].values():
            paired = [d - b for d, b in zip(res["diff"], base)]
            res["paired_vs_none"] = {"mean": float(np.mean(paired)), "ci95": bootstrap_ci(paired)}
    return results
def format_table(results: dict[str, Any]) -> str:
    unit = results["error_unit"]
    lines = [f"forgetting over {results['num_models']} architectures (alpha {results['alpha']:g}; diff in {unit})",
             f"noise floor: mean {results['noise_floor']['mean']:.3g}, max |diff| {results['noise_floor']['max_abs']:.3g}",
             "| variant | mean diff | 95% CI | paired vs none | 95% CI | final mean error | wpl/ce |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        paired = r.get("paired_vs_none", {"mean": math.nan, "ci95": (math.nan, math.nan)})
        lines.append(f"| {name} | {r['mean_diff']:.4f} | [{r['mean_diff_ci95'][0]:.4f}, {r['mean_diff_ci95'][1]:.4f}] | "
                     f"{paired['mean']:.4f} | [{paired['ci95'][0]:.4f}, {paired['ci95'][1]:.4f}] | "
                     f"{r['final_mean_error']:.4f} | {r['wpl_ce_ratio']:.3g} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: diff against training position (earlier-trained should forget more); right: mean diff with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results["variants"])
    for name in names:
        diff = results["variants"][name]["diff"]
        pos = np.arange(len(diff))
        ax1.plot(pos, diff, "o-", ms=3, label=name, alpha=0.8)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set(xlabel="position in the training order", ylabel=f"err2 - err1 ({results['error_unit'].split(' (')[0]})",
            title="forgetting per architecture")
    ax1.legend()
    means = [results["variants"][n]["mean_diff"] for n in names]
    ci = np.array([results["variants"][n]["mean_diff_ci95"] for n in names])
    ax2.bar(names, means, yerr=[np.array(means) - ci[:, 0], ci[:, 1] - np.array(means)], capsize=6, color="tab:blue", alpha=0.7)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set(title="mean diff (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mode_forgetting(trainer: Trainer, state: dict[str, Any], run_dir: Path, num_models: int, use_random: bool,
                    variants: Sequence[str], wpl: WPLSearchConfig, seed: int, source: str = "controller") -> dict[str, Any]:
    """Sample the architectures (from the run's sampler, named ``source``, or uniformly with ``seed``),
    run every variant from the checkpoint's state, write the results."""
    if scheduled_alpha(wpl, state["epoch"]) <= 0:
        raise UserError("--mode=forgetting needs a WPL strength: pass --alpha_fisher > 0")
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"the checkpoint does not fit this configuration ({' '.join(str(err).split())[:200]}); "
                        "keep the run's --wpl_importance and compare importances with --forgetting_variants") from err
    if use_random:
        generator = torch.Generator().manual_seed(seed)
        archs = [trainer.space.random_arch(generator) for _ in range(num_models)]
    else:
        archs = trainer.sampler.sample(num_models)
    start = copy.deepcopy(trainer.state_dict())
    results = run_forgetting(trainer, start, archs, variants, wpl, state["epoch"])
    results["checkpoint_epoch"] = state["epoch"]
    results["arch_source"] = "random" if use_random else source
    save_json(run_dir / "forgetting_results.json", results)
    plot(results, run_dir / "forgetting.png")
    print(format_table(results))
    print(f"written: {run_dir / 'forgetting_results.json'}, {run_dir / 'forgetting.png'}")
    return results
