"""The files every ledger protocol keeps in its run folder (the ranking benchmark, NAO vs NAO + WPL).

* the **plan** (``<name>.json``: the options, variants, seeds a run folder is bound to), written when the
  folder opens: a resume must ask for the same protocol, except that the ``growable`` lists (seeds, variants,
  dropouts) may gain members, since every unit stands alone in the ledger;
* the **report**: a results JSON (strict: no NaN), its markdown table and its picture, side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.runlog import RunDir
from options.safe_io import read_json
from utils import UserError, atomic_write_bytes, save_json


def bind_plan(run: RunDir, name: str, plan: dict[str, Any], growable: Sequence[str], more: str,
              ledgers: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``plan`` to ``run``'s ``name``, or check it against the one there (one line if it differs other than
    by members added to ``growable`` lists; ``more`` names them in that line). Returns the plan with the saved
    members first. A folder with files but neither the plan nor a ledger belongs to another kind of run."""
    path = run.path / name
    if not any((run.path / f).is_file() for f in (name, *ledgers)) and any(run.path.iterdir()):
        raise UserError(f"{run.path} holds files of another kind of run: nothing is rewritten; pass another --comment")
    if path.is_file():
        saved = read_json(path, f"{name} (the protocol of this run)")
        if not isinstance(saved, dict):
            changed = [name]
        else:
            changed = [k for k in plan if not (k in growable and isinstance(saved.get(k), list)
                                               and isinstance(plan[k], list)) and saved.get(k) != plan[k]]
        if changed:
            raise UserError(f"{run.path} was started with other {', '.join(changed)}: a resume continues the same "
                            f"protocol (more {more} may be added); pass its options again, or another --comment")
        plan = {**plan, **{k: saved[k] + [v for v in plan[k] if v not in saved[k]] for k in growable}}
    save_json(path, plan)
    return plan


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float as ``None`` (strict JSON: NaN is not a JSON value)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_report(folder: Path, stem: str, results: dict[str, Any], text: str,
                 plot: Callable[[dict[str, Any], Path], Any]) -> dict[str, Any]:
    """``<stem>_results.json``, ``<stem>.md`` (``text``) and ``<stem>.png`` (drawn by ``plot``) in ``folder``."""
    save_json(folder / f"{stem}_results.json", strict(results))
    atomic_write_bytes(folder / f"{stem}.md", lambda f: f.write(text.encode()))
    plot(results, folder / f"{stem}.png")
    print(text)
    print(f"written: {folder / f'{stem}_results.json'}, {folder / f'{stem}.md'}, {folder / f'{stem}.png'}")
    return results
