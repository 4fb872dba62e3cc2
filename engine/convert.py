"""The one-time converter of format-1 checkpoints to format 2 (``python main.py --mode=convert``).

Format 2 moved keys, never values (:mod:`engine.checkpoint`), so a converted run resumes, derives and
tests exactly as it would have before: the loops read one layout and sniff for none. Each file is
loaded with ``weights_only=True``, converted, checked against the schema and written atomically in
place; files already of format 2 are left alone, and anything else is one line naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import FORMAT, require_kind, validate
from engine.runlog import save_state
from utils import UserError

# Where format-1 search checkpoints (some written before ``kind`` existed) kept the REINFORCE sampler's
# parts and WPL's tables: at their top level.
SAMPLER_KEYS = ("controller", "controller_optim", "baseline", "controller_step")
REGULARIZER_KEY = "wpl"


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint's content in format 2: the same values, some under other keys."""
    kind = state.get("kind", "search")  # format-1 search checkpoints written before "kind" existed
    rest = {k: v for k, v in state.items() if k not in ("format", "kind")}
    if kind == "search":
        if "sampler" not in rest:
            rest["sampler"] = {k: rest.pop(k) for k in SAMPLER_KEYS if k in state}
        if "regularizer" not in rest:
            rest["regularizer"] = rest.pop(REGULARIZER_KEY, {})
    elif kind == "continual":  # the network of the run under way: under ``current`` in format 1
        current = rest.get("current")
        if isinstance(current, dict) and isinstance(current.get("model"), dict):
            rest["model"] = current["model"]
            rest["current"] = {k: v for k, v in current.items() if k != "model"}
    elif kind == "pathnet":  # format 1 stamped an empty model: there is no network between units
        rest.pop("model", None)
    return {"format": FORMAT, "kind": kind, **rest}


def convert_file(path: Path) -> str:
    """Convert ``path`` in place if it is of format 1; one line saying what happened."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise UserError(f"{path} is unreadable or corrupt ({type(err).__name__}): nothing converted") from err
    if not isinstance(state, dict) or "format" not in state:
        raise UserError(f"{path} is not a checkpoint of this project: nothing converted")
    if state["format"] == FORMAT:
        return f"{path}: already format {FORMAT}"
    if state["format"] != 1:
        raise UserError(f"{path} is a checkpoint of format {state['format']!r}; the converter reads format 1")
    new = validate(upgrade(state), path)
    require_kind(new, path, new["kind"])  # the converted file is whole before it replaces the old one
    save_state(path, new)
    return f"{path}: format 1 -> {FORMAT} ({new['kind']})"


def convert(target: Path) -> list[str]:
    """Convert a checkpoint file, or every ``*.pt`` of a run directory's ``checkpoints/``; a line per file."""
    if target.is_file():
        return [convert_file(target)]
    folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    if not files:
        raise UserError(f"{target} holds no checkpoint to convert (a run directory or a .pt file)")
    return [convert_file(path) for path in files]
