"""The checkpoint schema every loop writes: ``{"format", "kind", "run_id", ...}``.

``format`` is the layout's version (bumped when a key changes meaning); ``kind`` says which loop
wrote it (``search``, ``retrain``, ``continual``, ...), so a mode given another loop's checkpoint
refuses it in one line instead of failing on a missing key. Search checkpoints of format 1 were
written before ``kind`` existed and read as ``search``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils import UserError

FORMAT = 1
REQUIRED_KEYS = ("epoch", "model", "config")


def stamp(kind: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the schema's header in front."""
    return {"format": FORMAT, "kind": kind, **state}


def kind_of(state: dict[str, Any]) -> str:
    return state.get("kind", "search")


def validate(state: Any, path: Path) -> dict[str, Any]:
    """``state`` if it is a complete checkpoint of this project's format, else one clear error."""
    if not isinstance(state, dict) or "format" not in state:
        raise UserError(f"{path} is not a checkpoint of this project")
    if state["format"] != FORMAT:
        raise UserError(f"{path} is a checkpoint of format {state['format']!r}; this version reads format {FORMAT} "
                        f"(use the version of the project that wrote it)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict) or not isinstance(state["model"], dict):
        raise UserError(f"checkpoint {path} is incomplete (lacks or mangles {', '.join(missing) or 'config/model'})")
    return state


def require_kind(state: dict[str, Any], path: Path, kind: str, hint: str = "") -> None:
    """Refuse a checkpoint written by another loop."""
    found = kind_of(state)
    if found != kind:
        raise UserError(f"{path} is a {found} checkpoint, not a {kind} one{'; ' + hint if hint else ''}")
