"""Running one evaluation of a sweep: a project command at one setting and seed, and its measure.

Each evaluation gets its own directory ``<sweep>/runs/<label>/`` and passes it to the program
(``main.py``: ``--log_dir=<dir> --comment=run``; ``toy_mnist.py``: ``--output_dir=<dir>``), so runs
never collide and a finished one is found again. The measure is a dotted path (list indices allowed)
into the run's results files, searched in :data:`RESULT_FILES` order; ``metrics.jsonl`` is read as
``{"last": <last record>, "epochs": [...]}``. A path that ends on ``{"mean": ...}`` gives the mean;
one that ends on a list gives per-seed values (a program that ran every seed itself). A path may
start with a file's stem to pick that file.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from options.safe_io import parse_json, read_bytes, read_json
from utils import UserError

RESULT_FILES = ("continual_results.json", "toy_results.json", "forgetting_results.json", "test_results.json",
                "metrics.jsonl")
PROGRAMS = {"main.py": "main", "toy_mnist.py": "toy_mnist"}
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Program:
    """What to run: ``script`` with ``argv`` (the sweep's options appended), optionally ``then`` afterwards.

    ``seed_option`` names the option a seed is passed with (empty: the program runs every seed itself
    and the measure is a per-seed list); ``then`` is a second ``main.py`` command run on the first
    one's run directory (``--load_path``, after the program's own ``argv``: the same data and device),
    e.g. the forgetting probe after a search.
    """

    script: str
    argv: tuple[str, ...]
    seed_option: str = "random_seed"
    then: tuple[str, ...] = ()
    in_process: bool = False


def label(setting: dict[str, str], seed: int | None) -> str:
    """A file-name-safe, readable name of an evaluation."""
    text = ",".join(f"{k}={v}" for k, v in sorted(setting.items())) or "default"
    text = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
    return text + ("" if seed is None else f",seed={seed}")


def resolve(results: dict[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in the first results file where it exists.

    A path may start with a file's stem (``metrics.last.valid_ppl``, ``forgetting_results.variants``)
    to look in that file only. When no file has it, the error names, for each file, how far the path got
    and the keys that exist there.
    """
    stems = {name.split(".")[0]: name for name in RESULT_FILES}
    head, _, rest = path.partition(".")
    names = [stems[head]] if head in stems and rest else list(RESULT_FILES)
    path = rest if head in stems and rest else path
    misses = []
    for name in names:
        node: Any = results.get(name)
        if node is None:
            continue
        reached: list[str] = []
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
                node = node[int(part)]
            else:
                misses.append(f"{name} has no {part!r} under {'.'.join(reached) or 'the top'} "
                              f"(there: {keys_of(node)})")
                node = None
                break
            reached.append(part)
        if node is not None:
            return node["mean"] if isinstance(node, dict) and "mean" in node else node
    found = "; ".join(misses) if misses else f"no results file holds it (found: {', '.join(sorted(results)) or 'none'})"
    raise UserError(f"--measure={path}: not found: {found}")


def keys_of(node: Any, shown: int = 12) -> str:
    """What a path can continue with at ``node``: its keys, the index range of a list, or the value."""
    if isinstance(node, dict):
        keys = list(node)
        return ", ".join(keys[:shown]) + (f", ... ({len(keys)} keys)" if len(keys) > shown else "") if keys else "no keys"
    if isinstance(node, list):
        return f"a list, indices 0..{len(node) - 1}" if node else "an empty list"
    return f"the value {str(node)[:40]}"


# Which way is better for the project's own measures, by the words of a measure's last name
# (``results.0.per_seed.a_drop`` -> ``a_drop`` -> ``a``, ``drop``). Forgetting figures are minimised.
LOWER_IS_BETTER = frozenset({"forgetting", "drop", "diff", "loss", "ppl", "nll", "error", "generations"})
HIGHER_IS_BETTER = frozenset({"accuracy", "acc", "reward", "transfer", "speedup", "final", "baseline"})


def known_direction(path: str) -> bool | None:
    """``True`` (minimise) or ``False`` (maximise) for a measure whose name says which; ``None`` if unknown."""
    parts = [p for p in path.split(".") if p not in ("mean", "per_seed", "last", "epochs") and not re.fullmatch(r"-?\d+", p)]
    words = set(parts[-1].lower().split("_")) if parts else set()
    lower, higher = bool(words & LOWER_IS_BETTER), bool(words & HIGHER_IS_BETTER)
    return None if lower == higher else lower


def as_result(value: Any, path: str) -> float | list[float]:
    """A measure as a finite number or a list of them (one per seed)."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"--measure={path}: expected a number or a list of numbers, got {str(value)[:80]}")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"--measure={path}: the run reported a non-finite value ({values})")
    return [float(v) for v in values] if isinstance(value, list) else float(value)


def read_results(folder: Path) -> dict[str, Any]:
    """Every results file under ``folder`` (newest-level first), by file name."""
    out: dict[str, Any] = {}
    for name in RESULT_FILES:
        hits = sorted(folder.rglob(name))
        if not hits:
            continue
        if name.endswith(".jsonl"):  # the safe reader: an evaluated program's output is input like any other
            lines = read_bytes(hits[0]).decode("utf-8", errors="replace").splitlines()
            records = [parse_json(line, f"{hits[0]} line {k}") for k, line in enumerate(lines, 1) if line.strip()]
            out[name] = {"last": records[-1] if records else {}, "epochs": records}
        else:
            out[name] = read_json(hits[0])
    return out


def run_folder(folder: Path) -> Path:
    """The run directory ``main.py`` made inside an evaluation's folder (``<dataset>_run``)."""
    made = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith("_run"))
    return made[0] if made else folder


def command(program: Program, setting: dict[str, str], seed: int | None, folder: Path) -> list[str]:
    args = [*program.argv, *(f"--{k}={v}" for k, v in setting.items())]
    if seed is not None and program.seed_option:
        args.append(f"--{program.seed_option}={seed}")
    if program.script == "toy_mnist.py":
        return [*args, f"--output_dir={folder}"]
    return [*args, f"--log_dir={folder}", "--comment=run"]


def execute(argv: Sequence[str], script: str, in_process: bool, log_path: Path) -> tuple[int, str]:
    """Run ``script argv``; return the exit status and the last line it printed to stderr or stdout."""
    if in_process:
        if script not in PROGRAMS:
            raise UserError(f"--workers=0 runs only {', '.join(PROGRAMS)} in this process, not {script}")
        module = importlib.import_module(PROGRAMS[script])
        try:
            result = module.main(list(argv))
        except SystemExit as exit_:
            return int(exit_.code or 0), "exited"
        return (result if isinstance(result, int) else 0), ""
    # The child runs in the sweep's own working directory, so that relative paths (--log_dir, --data_dir)
    # mean there what they mean to the sweep, from a checkout or an installed package alike.
    # One intra-op thread per evaluation: independent runs side by side use the cores better than one
    # multi-threaded run (docs/benchmarks.md), and a result does not depend on how many ran at once.
    with open(log_path, "w") as out:
        rc = subprocess.call([sys.executable, str(ROOT / script if script in PROGRAMS else Path(script).resolve()),
                              *argv], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return rc, lines[-1] if lines else ""


def measures(folder: Path, measure: str, extras: Sequence[str]) -> tuple[float | list[float], dict[str, Any]]:
    results = read_results(folder)
    found = {}
    for m in extras:  # an extra measure a run does not report (no controller phase, say) is left out
        try:
            found[m] = as_result(resolve(results, m), m)
        except UserError:
            continue
    return as_result(resolve(results, measure), measure), found


def evaluate(program: Program, setting: dict[str, str], seed: int | None, sweep_dir: Path, measure: str,
             extras: Sequence[str] = ()) -> tuple[float | list[float], dict[str, Any]]:
    """Run one evaluation (reusing a finished one found on disk); its measure and the ``extras``."""
    if program.script not in PROGRAMS and not Path(program.script).is_file():
        raise UserError(f"--program={program.script}: one of {', '.join(PROGRAMS)}, or a script file")
    folder = sweep_dir / "runs" / label(setting, seed)
    done = folder / "evaluation.json"
    if done.is_file():
        return measures(folder, measure, extras)
    shutil.rmtree(folder, ignore_errors=True)  # a half-finished run of a killed sweep starts again
    folder.mkdir(parents=True)
    argv = command(program, setting, seed, folder)
    rc, last = execute(argv, program.script, program.in_process, folder / "output.log")
    if rc == 0 and program.then:
        argv_then = [*program.argv, *program.then, f"--load_path={run_folder(folder)}"]  # same data, same device
        rc, last = execute(argv_then, "main.py", program.in_process, folder / "then.log")
    if rc != 0:
        raise RuntimeError(f"{program.script} exited with {rc}: {last[:300]} (log: {folder / 'output.log'})")
    result, extra = measures(folder, measure, extras)
    done.write_text(json.dumps({"setting": setting, "seed": seed, "argv": argv, "result": result, "extras": extra}))
    return result, extra
