"""``--mode=convert``: a run's checkpoints of format 1 rewritten once in format 2 (docs/reliability.md, Checkpoint format 2).

    python main.py --mode=convert --load_path=logs/ptb_run               # every checkpoint of the run
    python main.py --mode=convert --load_path=logs/ptb_run/checkpoints/best.pt

A resume, derive or test given a format-1 checkpoint stops with one line naming this command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from utils import UserError


def mode_convert(args: argparse.Namespace, explicit: set[str], device: torch.device) -> None:
    from engine.convert import convert

    if not args.load_path:
        raise UserError("--mode=convert needs --load_path=<run directory or checkpoint file>")
    for line in convert(Path(args.load_path)):
        print(line)
