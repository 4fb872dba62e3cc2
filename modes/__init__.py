"""What ``--mode`` runs: one module per family (search, retrain, continual, PathNet, ranking, NAO +- WPL; convert).

``builders`` turns the options into a search space, sampler, regulariser and trainer; the mode modules
open their run directory, run their loop and write their results. ``main.py`` only parses, dispatches
through :data:`MODES` and turns errors into one line.
"""

from __future__ import annotations

from typing import Any

from options.registry import Registry

# name -> the function that runs it, ``fn(args, explicit_options, device)``; config.py takes --mode's choices
# and help lines from here. A new mode is its module plus one entry (and its line) here; a mode with options of its
# own also names their declaration (``options.plugin.ModeOptions``, its experiment's light ``options`` module).
MODES: Registry[Any] = Registry("mode", {
    "train": "modes.search:mode_train",
    "derive": "modes.search:mode_derive",
    "test": "modes.search:mode_test",
    "forgetting": "modes.search:mode_forgetting",
    "retrain": "modes.retrain:mode_retrain",
    "continual": "modes.continual:mode_continual",
    "pathnet": "modes.pathnet:mode_pathnet",
    "ranking": "modes.ranking:mode_ranking",
    "nao_wpl": "modes.nao_wpl:mode_nao_wpl",
    "convert": "modes.convert:mode_convert",
}, about={
    "train": "the search (ENAS with WPL)",
    "derive": "the best of N sampled cells of --load_path",
    "test": "test split of --load_path's best_arch.json",
    "forgetting": "paired forgetting experiment (docs/wpl.md)",
    "retrain": "one architecture trained from scratch",
    "continual": "task sequences: EWC, SI, MAS, L2, WPL",
    "pathnet": "PathNet transfer on binary MNIST tasks",
    "ranking": "32-cell ground-truth ranking benchmark",
    "nao_wpl": "NAO vs NAO + WPL, paired seeds per dropout",
    "convert": "old (format-1) checkpoints to format 2",
}, options={
    "train": "modes.search_options:TRAIN",
    "forgetting": "modes.search_options:FORGETTING",
    "continual": "experiments.continual.options:OPTIONS",
    "pathnet": "experiments.pathnet.options:OPTIONS",
    "ranking": "experiments.ranking.options:OPTIONS",
    "nao_wpl": "experiments.nao_wpl.options:OPTIONS",
})
