"""``--mode=nao_wpl``: NAO vs NAO + WPL, paired seeds per output dropout (docs/nao.md).

The protocol, its units, run folder and report live in ``experiments/nao_wpl/``.
"""

from __future__ import annotations

import argparse

import torch


def mode_nao_wpl(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from experiments.nao_wpl.main import run_nao_wpl

    run_nao_wpl(args)
