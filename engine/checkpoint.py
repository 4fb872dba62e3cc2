"""The checkpoint schema every loop writes: ``{"format", "kind", "epoch", "config", ...}``.

``format`` is the layout's version, bumped when a key moves or changes meaning; ``kind`` says which
loop wrote it, so a mode given another loop's checkpoint refuses it in one line instead of failing on
a missing key. Each kind has its own keys besides (``KIND_KEYS``); ``epoch`` counts what is finished
(epochs, or an experiment's tasks or units).

Format 2 (this one) differs from format 1 only in where things live: a search's sampler and regulariser
under ``sampler`` and ``regularizer`` (format 1 also had the controller's parts and WPL's tables at the
top level, and no ``kind``), continual learning's network under ``model`` (format 1: an empty
``model`` and the weights under ``current``), and no empty ``model`` for PathNet, whose checkpoint lies
between units and holds no network. A format-1 run is converted once with ``--mode=convert``
(:mod:`engine.convert`); reading one otherwise is a line that names that command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils import UserError

FORMAT = 2
REQUIRED_KEYS = ("kind", "epoch", "config")
# What each loop's checkpoint holds besides REQUIRED_KEYS (what its resume reads first).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "search": ("model", "sampler", "regularizer"),
    "retrain": ("model", "arch"),
    "continual": ("model", "records", "runs", "current"),
    "pathnet": ("runs",),
}
CONVERT = "python main.py --mode=convert --load_path=<run directory or checkpoint>"


class OldFormat(UserError):
    """A checkpoint of format 1: the converter turns it into this format once."""


def stamp(kind: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the schema's header in front."""
    return {"format": FORMAT, "kind": kind, **state}


def kind_of(state: dict[str, Any]) -> str:
    return str(state["kind"])


def validate(state: Any, path: Path) -> dict[str, Any]:
    """``state`` if it is a complete checkpoint of this project's format, else one clear error."""
    if not isinstance(state, dict) or "format" not in state:
        raise UserError(f"{path} is not a checkpoint of this project")
    if state["format"] == 1:
        raise OldFormat(f"{path} is a checkpoint of format 1; this version reads format {FORMAT}: convert its run once "
                        f"with {CONVERT} (docs/reliability.md)")
    if state["format"] != FORMAT:
        raise UserError(f"{path} is a checkpoint of format {state['format']!r}; this version reads format {FORMAT} "
                        f"(use the version of the project that wrote it)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict):
        raise UserError(f"checkpoint {path} is incomplete (lacks or mangles {', '.join(missing) or 'config'})")
    return state


def require_kind(state: dict[str, Any], path: Path, kind: str) -> None:
    """Refuse a checkpoint written by another loop, or one that lacks its loop's keys."""
    found = kind_of(state)
    if found != kind:
        other = "train" if found == "search" else found
        raise UserError(f"{path} is a {found} checkpoint, not a {kind} one; read it with --mode={other}, or pass "
                        f"another --comment")
    missing = [k for k in KIND_KEYS.get(kind, ()) if k not in state]
    if missing or not isinstance(state.get("model", {}), dict):
        raise UserError(f"checkpoint {path} is incomplete (lacks or mangles {', '.join(missing) or 'model'})")
