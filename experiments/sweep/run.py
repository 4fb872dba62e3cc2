"""A sweep from start to files: the study, the strategy, the statistics, ``sweep_results.json``,
``sweep.png`` and ``sweep.md`` in ``<log_dir>/sweep_<comment>/``."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from experiments.sweep.protocol import Runner, SweepConfig, run_grid, run_narrowing, run_tpe
from experiments.sweep.evaluate import Program, evaluate
from experiments.sweep.report import (
    markdown,
    name_of,
    narrowing_summary,
    plot,
    summarise,
)
from experiments.sweep.study import Study, default_storage
from utils import UserError, save_json

log = logging.getLogger("wpl")


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float as ``None`` (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def check_reference(reference: dict[str, str] | None, settings: Any) -> None:
    """A ``--reference`` that is not among a grid's settings, refused before the first evaluation."""
    if reference is None:
        return
    names = [name_of(s) for s in settings]
    if name_of(reference) not in names:
        raise UserError(f"--reference={name_of(reference)!r} is not among the swept settings ({', '.join(names[:4])}"
                        f"{', ...' if len(names) > 4 else ''})")


def require_some(results: dict[str, Any], sweep_dir: Path) -> None:
    """A sweep whose every evaluation failed has nothing to report: one line and a non-zero exit, not 0."""
    if not results:
        raise UserError(f"every evaluation of the sweep failed: nothing to summarise (each run's output.log under "
                        f"{sweep_dir} says why; rerunning the command retries them)")


def run_sweep(sweep_dir: Path, program: Program, cfg: SweepConfig, measure: str, storage: str, study_name: str,
              reference: dict[str, str] | None, base_seed: int, evaluate_fn: Any = None,
              extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or continue) a sweep and write its outputs; ``evaluate_fn`` replaces running ``program`` (tests)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(sweep_dir)
    study = Study(storage, study_name, cfg.minimize)
    fn = evaluate_fn or (lambda setting, seed: evaluate(program, setting, seed, sweep_dir, measure, extras))
    runner = Runner(study, fn, 1 if program.in_process else cfg.workers)
    started = time.time()
    trials: list[dict[str, Any]] = []
    summary = None
    if cfg.strategy == "grid":
        check_reference(reference, cfg.settings)  # before any evaluation runs, not after all of them
        found = run_grid(runner, cfg)
        require_some(found["results"], sweep_dir)
        summary = summarise(found["settings"], cfg.seeds, found["results"], reference, cfg.minimize, study.extras(), extras)
    elif cfg.strategy == "narrowing":
        found = run_narrowing(runner, cfg, base_seed)
        trials = found["trials"]
    elif cfg.strategy == "tpe":
        found = run_tpe(runner, cfg, study_name, study.storage, base_seed)
        require_some(found["results"], sweep_dir)
        if found["settings"]:
            summary = summarise(found["settings"], cfg.seeds, found["results"], reference, cfg.minimize, study.extras(), extras)
    else:
        raise UserError(f"--strategy={cfg.strategy}: one of grid, narrowing, tpe")
    results: dict[str, Any] = {
        "measure": measure, "minimize": cfg.minimize, "strategy": cfg.strategy, "storage": storage,
        "study": study_name, "program": {"script": program.script, "argv": list(program.argv), "then": list(program.then),
                                         "seed_option": program.seed_option},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "seconds": time.time() - started, "evaluations": dict(found["results"]),
    }
    text = ""
    if summary is not None:
        results["summary"] = summary
        text = markdown(summary, measure)
    if trials:
        results["trials"] = trials
        results["narrowing"] = narrowing_summary(trials, cfg.spacing)
        spread = results["narrowing"]["best_value_spread"]
        text = "\n".join([f"| trial | seed | steps | best {cfg.param} | {measure} |", "|---|---|---|---|---|",
                          *(f"| {t['trial']} | {t['seed']} | {len(t['steps'])} | {t['best_value']:.4g} | {t['best_measure']:.4g} |"
                            for t in trials),
                          "", f"best {cfg.param} across trials ({spread['scale']}): mean {spread['mean']:.4g}, "
                              f"95% CI [{spread['lo']:.4g}, {spread['hi']:.4g}]"])
    param = cfg.param or (next(iter(cfg.settings[0])) if cfg.settings else "setting")
    plot(summary, trials, measure, param, sweep_dir / "sweep.png")
    save_json(sweep_dir / "sweep_results.json", strict(results))
    (sweep_dir / "sweep.md").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {sweep_dir / 'sweep_results.json'}, {sweep_dir / 'sweep.png'}, {sweep_dir / 'sweep.md'}")
    return results
