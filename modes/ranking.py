"""``--mode=ranking``: the 32-cell ground-truth ranking benchmark (docs/ranking.md).

The protocol, its units, run folder and report live in ``experiments/ranking/``.
"""

from __future__ import annotations

import argparse

import torch


def mode_ranking(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.ranking.main import run_ranking

    run_ranking(args)
