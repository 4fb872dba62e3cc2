"""Strength sweeps: which settings to evaluate (grid, narrowing, TPE) and running them in parallel.

* ``grid``: every setting of ``--grid`` (a product) and ``--setting`` (listed), at every seed.
* ``narrowing``: the EWC lambda study's search. Per trial, a lower bound is drawn from
  ``low_range`` and an upper bound from ``high_range``; ``num_steps`` values between them (linear
  or log spacing) are evaluated on the trial's fixed base model (one seed per trial); the range
  narrows to the best value's neighbours and the step repeats until its width is below
  ``threshold`` (in the parameter's units, or in decades with log spacing). A range of
  ``num_steps >= 4`` values shrinks by ``2 / (num_steps - 1)`` per step, so it always ends.
* ``tpe``: Optuna's TPE proposes values of one parameter; each is evaluated at every seed.

Every evaluation is a trial of the sweep's Optuna study (:mod:`experiments.sweep.study`), so
workers never duplicate one and a rerun continues where the last one stopped.
"""

from __future__ import annotations

import itertools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from experiments.sweep.study import Study, setting_key
from utils import UserError

log = logging.getLogger("wpl")
Result = float | list[float]
Evaluate = Callable[[dict[str, str], int | None], Any]  # a Result, or (Result, {extra measure: Result})
MAX_NARROWING_STEPS = 60
WAIT_FOR_OTHER_WORKER_S = 24 * 3600.0


@dataclass(frozen=True)
class SweepConfig:
    strategy: str  # grid | narrowing | tpe
    settings: tuple[dict[str, str], ...]  # grid
    param: str  # narrowing, tpe
    low_range: tuple[float, float]
    high_range: tuple[float, float]
    num_steps: int
    threshold: float
    spacing: str  # linear | log
    trials: int  # narrowing trials, TPE proposals
    seeds: tuple[int | None, ...]  # (None,): the program runs every seed itself
    minimize: bool
    workers: int


def grid_settings(grid: Sequence[str], listed: Sequence[str]) -> list[dict[str, str]]:
    """``--grid a=1,2 b=x,y`` (product) and ``--setting "a=0 b=x"`` (as given), in order, without repeats."""
    axes = []
    for item in grid:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise UserError(f"--grid {item!r}: expected name=v1,v2,...")
        axes.append([(name.lstrip("-"), v) for v in values.split(",")])
    settings = [dict(combo) for combo in itertools.product(*axes)] if axes else []
    for item in listed:
        pairs = [p.partition("=") for p in item.split()]
        if not pairs or any(not sep or not name for name, sep, _ in pairs):
            raise UserError(f"--setting {item!r}: expected 'name=value [name=value ...]'")
        settings.append({name.lstrip("-"): value for name, _, value in pairs})
    unique = list({setting_key(s, None): s for s in settings}.values())
    if not unique:
        raise UserError("--strategy=grid needs --grid name=v1,v2,... or --setting 'name=value ...'")
    return unique


def spaced(low: float, high: float, n: int, spacing: str) -> list[float]:
    """``n`` values from ``low`` to ``high``, rounded to 6 significant digits (they become option values)."""
    if spacing == "log":
        values = np.logspace(math.log10(low), math.log10(high), n)
    else:
        values = np.linspace(low, high, n)
    return [float(f"{v:.6g}") for v in values]


def width(low: float, high: float, spacing: str) -> float:
    return math.log10(high / low) if spacing == "log" else high - low


def draw(rng: np.random.Generator, bounds: tuple[float, float], spacing: str) -> float:
    lo, hi = bounds
    if spacing == "log":
        return float(10 ** rng.uniform(math.log10(lo), math.log10(hi)))
    return float(rng.uniform(lo, hi))


def mean(result: Result) -> float:
    return float(np.mean(result)) if isinstance(result, list) else float(result)


class Runner:
    """Evaluates jobs ``(setting, seed)`` through the study, ``workers`` at a time, with a progress bar."""

    def __init__(self, study: Study, evaluate: Evaluate, workers: int) -> None:
        self.study, self.evaluate, self.workers = study, evaluate, max(1, workers)
        study.fail_dead_workers()

    def _one(self, setting: dict[str, str], seed: int | None) -> Result | None:
        key = setting_key(setting, seed)
        while True:
            trial = self.study.claim(key, setting, seed)
            if trial is not None:
                break
            done = self.study.wait_for(key, WAIT_FOR_OTHER_WORKER_S)
            if done is not None:
                return done  # another worker ran it; if it failed instead, claim it again
        extras: dict[str, Any] = {}
        try:
            result = self.evaluate(setting, seed)
            if isinstance(result, tuple):  # (measure, extra measures)
                result, extras = result
        except RuntimeError as err:  # the run failed; the sweep goes on without it
            log.warning("sweep: %s at seed %s failed: %s", setting, seed, err)
            self.study.finish(trial, None, str(err))
            return None
        except BaseException as err:
            self.study.finish(trial, None, f"{type(err).__name__}: {err}")
            raise
        self.study.finish(trial, result, extras=extras)
        return result

    def run(self, jobs: Sequence[tuple[dict[str, str], int | None]], desc: str = "evaluations") -> dict[str, Result]:
        """``key -> result`` for every job that succeeded (finished ones are not run again)."""
        done = self.study.values()
        todo = [(s, k) for s, k in jobs if setting_key(s, k) not in done]
        results = {setting_key(s, k): done[setting_key(s, k)] for s, k in jobs if setting_key(s, k) in done}
        with (tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, leave=False, disable=None) as bar,
              ThreadPoolExecutor(self.workers) as pool):
            futures = {pool.submit(self._one, s, k): setting_key(s, k) for s, k in todo}
            for future, key in futures.items():
                result = future.result()
                if result is not None:
                    results[key] = result
                bar.update()
        return results


def run_grid(runner: Runner, cfg: SweepConfig) -> dict[str, Any]:
    jobs = [(s, seed) for s in cfg.settings for seed in cfg.seeds]
    results = runner.run(jobs, "grid")
    return {"settings": list(cfg.settings), "results": results}


def run_narrowing(runner: Runner, cfg: SweepConfig, base_seed: int) -> dict[str, Any]:
    """The narrowing search, ``cfg.trials`` times; every step's values, measures and best are recorded."""
    if cfg.num_steps < 4:
        raise UserError(f"--num_steps={cfg.num_steps}: narrowing needs at least 4 values per step to shrink")
    trials, results = [], {}
    for t in tqdm(range(cfg.trials), desc="narrowing trials", disable=None):
        rng = np.random.default_rng(base_seed + t)
        low, high = draw(rng, cfg.low_range, cfg.spacing), draw(rng, cfg.high_range, cfg.spacing)
        if not low < high:
            raise UserError(f"narrowing trial {t}: drawn lower bound {low:.4g} >= upper bound {high:.4g}; "
                            f"make --low_range lie below --high_range")
        seed = None if cfg.seeds == (None,) else base_seed + t  # the trial's fixed base model
        steps: list[dict[str, Any]] = []
        seen: list[float] = []
        for _ in range(MAX_NARROWING_STEPS):
            # A value the trial already evaluated, re-derived with rounding noise, is reused as it was.
            values = [next((s for s in seen if abs(s - v) <= 1e-4 * abs(v)), v)
                      for v in spaced(low, high, cfg.num_steps, cfg.spacing)]
            seen += [v for v in values if v not in seen]
            jobs = [({cfg.param: f"{v:g}"}, seed) for v in values]
            step_results = runner.run(jobs, f"trial {t} [{low:.4g}, {high:.4g}]")
            results.update(step_results)
            measures = [mean(step_results[setting_key(s, k)]) if setting_key(s, k) in step_results else math.nan
                        for s, k in jobs]
            if all(math.isnan(m) for m in measures):
                raise UserError(f"narrowing trial {t}: every evaluation of {values} failed (see the runs' output.log)")
            best = int(np.nanargmin(measures) if cfg.minimize else np.nanargmax(measures))
            steps.append({"low": low, "high": high, "values": values, "measures": measures, "best": values[best]})
            low, high = values[max(best - 1, 0)], values[min(best + 1, len(values) - 1)]
            if width(low, high, cfg.spacing) < cfg.threshold:
                break
        final = steps[-1]
        trials.append({"trial": t, "seed": seed, "steps": steps, "best_value": final["best"],
                       "best_measure": min(final["measures"]) if cfg.minimize else max(final["measures"])})
    return {"trials": trials, "results": results}


def run_tpe(runner: Runner, cfg: SweepConfig, study_name: str, storage: Any, base_seed: int) -> dict[str, Any]:
    """TPE over ``cfg.param`` in ``[low_range[0], high_range[1]]``; each proposal at every seed."""
    import optuna

    tpe = optuna.create_study(study_name=f"{study_name}-tpe", storage=storage, load_if_exists=True,
                              direction="minimize" if cfg.minimize else "maximize",
                              sampler=optuna.samplers.TPESampler(seed=base_seed))
    space = {cfg.param: optuna.distributions.FloatDistribution(cfg.low_range[0], cfg.high_range[1],
                                                               log=cfg.spacing == "log")}
    complete = optuna.trial.TrialState.COMPLETE
    results = {}
    for _ in tqdm(range(max(0, cfg.trials - len(tpe.get_trials(states=(complete,))))), desc="tpe", disable=None):
        trial = tpe.ask(space)
        value = float(f"{trial.params[cfg.param]:.6g}")
        jobs = [({cfg.param: f"{value:g}"}, seed) for seed in cfg.seeds]
        got = runner.run(jobs, f"{cfg.param}={value:g}")
        results.update(got)
        measures = [mean(r) for r in got.values()]
        if measures:
            tpe.tell(trial, float(np.mean(measures)))
        else:
            tpe.tell(trial, state=optuna.trial.TrialState.FAIL)
    proposals = [{"value": float(f"{t.params[cfg.param]:.6g}"), "measure": t.value, "number": t.number}
                 for t in tpe.get_trials(states=(complete,))]
    settings = [{cfg.param: f"{p['value']:g}"} for p in proposals]
    return {"settings": list({setting_key(s, None): s for s in settings}.values()), "proposals": proposals,
            "results": results}
