"""Each regulariser's strength tuned per scenario on the validation split, as resumable units.

    python -m experiments.continual.tune [--protocol=vandeven2019] [--scenarios=class,domain,task]
        [--strategies=ewc,online_ewc,si,mas,wpl,l2,online_ewc.gamma] [--decades=2] [--points=5] [--seeds=3]
        [--grid=[SCENARIO/]SWEEP=V1,V2,...] [--data_dir=../shared/data] [--ledger=FILE] [--out=DIR] [--workers=N]
        [--report_only] [-- OPTIONS]

One unit is (scenario, strategy, strength, seed): that strategy over the whole task sequence, exactly as
``python -m experiments.continual.protocol --scenario=<scenario> --strategies=<strategy> -- --<option>=<strength>
--cl_eval_split=valid`` trains it, measured on the held-out tenth of each task's training data (never the test
split). The grid of a strategy is its protocol value (the published one, the reference) times ``10 ** k`` for
``--points`` values of k evenly from ``-decades`` to ``+decades``; online EWC keeps its protocol's gamma. A seed
fixes the initial weights and the batches whatever the strength, so the values of a seed are paired across the
grid (the sweep's design). ``--grid task/wpl=1e3,...,1e11`` gives one sweep values of its own (the published
value joins them), for a best at the default grid's edge; values the ledger holds already do not run again.
Online EWC's decay is swept too, as ``online_ewc.gamma``: a linear grid
(``EXTRA_GRIDS``) with the strength at the paper's, so each value is tuned with the other at the paper's (one step
of coordinate-wise tuning, not a joint grid). Units run sweep by sweep (scenario, then strategy) and seed by seed inside a sweep,
so a run cut short leaves whole sweeps and whole paired seeds; ``--resume`` is implicit: rerunning the command
runs only the units its ledger lacks.

The report (``<out>/tune_<protocol>.{json,md,png}``) gives, per scenario and strategy, the sweep's statistics
(:func:`experiments.sweep.report.summarise`: t intervals, paired differences to the published value, noise floor,
smallest detectable effect, how often each value is best), the best value (the highest mean validation accuracy)
and the chosen one: the best where its paired t interval against the paper's value lies above zero, else the paper's
(no change without a measured gain: with a few seeds the best mean of five is often noise). The chosen values
become the per-scenario defaults by hand, in each regulariser's ``TUNED_STRENGTHS`` table (read with
``--cl_strengths=tuned``, the default), citing this report; the grid's centre stays the paper's value
(``SCENARIO_STRENGTHS``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.continual.protocol import BASE_SEED, protocol_config, sequence_settings
from experiments.workers import Unit, add_ledger_options, protocol_cli, read_ledger, run_units

MEASURE = "average_accuracy"  # higher is better
EXTRAS = ("forgetting",)
# l2 and online EWC's gamma last: they joined after the first sweeps had run
DEFAULT_STRATEGIES = "ewc,online_ewc,si,mas,wpl,l2,online_ewc.gamma"
# A value beside a strength (``Strength.also``) tuned as the sweep "<strategy>.<value>", the strength kept at the
# paper's: a linear grid, with the protocol's value added where it is not on it. Online EWC's decay gamma: van de
# Ven & Tolias's code uses 0.7-0.8 (param_values.py at f0b1461e), Hsu et al. 1 (no decay).
EXTRA_GRIDS = {"online_ewc.gamma": ("0.5", "0.7", "0.8", "0.9", "1")}
SCENARIOS = ("class", "domain", "task")  # cheapest first: a class unit takes about half a task unit's time


def swept(name: str) -> tuple[str, str]:
    """A sweep's strategy and the table value it tunes: ``si`` -> (si, strength), ``online_ewc.gamma`` ->
    (online_ewc, gamma)."""
    strategy, _, value = name.partition(".")
    return strategy, value or "strength"


def strength_option(name: str) -> str:
    """The option a sweep sets, from its strategy's declaration (``si`` -> ``si_c``, ``online_ewc.gamma`` ->
    ``online_ewc_gamma``)."""
    from modes.continual import strategy_options

    strategy, value = swept(name)
    declared = strategy_options().get(strategy)
    if declared is None or declared.strength is None:
        raise ValueError(f"--strategies={strategy} declares no strength to tune")
    if value == "strength":
        return declared.strength.option
    if value not in declared.strength.also or name not in EXTRA_GRIDS:
        raise ValueError(f"--strategies={name}: {strategy} has no tunable value {value!r} "
                         f"(tunable: {', '.join(EXTRA_GRIDS) or 'none'})")
    return declared.strength.also[value]


def grid(center: float, decades: float, points: int) -> list[str]:
    """``points`` strengths from ``center / 10**decades`` to ``center * 10**decades``, evenly on a log scale, the
    centre among them when ``points`` is odd; each spelt ``%g`` so one strength has one key."""
    if not (math.isfinite(center) and center > 0) or points < 1 or decades < 0:
        raise ValueError(f"a grid needs a positive centre, points >= 1 and decades >= 0 (got {center}, {points}, {decades})")
    exponents = np.linspace(-decades, decades, points) if points > 1 else np.zeros(1)
    values = [f"{center * 10.0 ** float(k):.6g}" for k in exponents]
    if len(set(values)) != len(values):
        raise ValueError(f"--points={points} over {decades} decades repeats a strength")
    return values


def published(protocol: str, scenario: str, name: str) -> float:
    """The paper's value a sweep is centred on (the protocol's table, never the tuned one)."""
    from modes.continual import scenario_values

    strategy, value = swept(name)
    return float(scenario_values(strategy, protocol, scenario, "published")[value])


def sweep_grid(name: str, reference: str, decades: float, points: int) -> list[str]:
    """A strength's log grid around the paper's value, or a value's linear grid (``EXTRA_GRIDS``) holding it."""
    if swept(name)[1] == "strength":
        return grid(float(reference), decades, points)
    return sorted({*EXTRA_GRIDS[name], reference}, key=float)


def grid_overrides(specs: Sequence[str]) -> dict[str, list[str]]:
    """``--grid [SCENARIO/]SWEEP=V1,V2,...`` -> {"task/wpl" or "wpl": the values spelt ``%g``}: a grid of one's own
    for a sweep whose best lies at the default grid's edge (the published value joins it: it is the reference)."""
    out = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        try:
            spelt = sorted({f"{float(v):.6g}" for v in values.split(",")}, key=float)
        except ValueError:
            spelt = []
        if not name or not spelt or not all(math.isfinite(float(v)) and float(v) > 0 for v in spelt):
            raise ValueError(f"--grid {spec!r}: expected [SCENARIO/]SWEEP=V1,V2,... of positive numbers")
        out[name] = spelt
    return out


def sweep_units(protocol: str, scenario: str, name: str, values: Sequence[str], seeds: int, data_dir: str,
                extra: Sequence[str] = ()) -> list[Unit]:
    """One sweep's units, seed-major; each holds the whole configuration it runs with."""
    option, strategy = strength_option(name), swept(name)[0]
    changed = sequence_settings([*extra, "--cl_eval_split=valid"])
    out = []
    for k in range(seeds):
        for value in values:
            benchmark, cfg = protocol_config(protocol, scenario, [f"--strategies={strategy}", f"--{option}={value}",
                                                                  *extra, "--cl_eval_split=valid",
                                                                  "--cl_strengths=published"])  # gamma: the paper's
            one = replace(cfg, seeds=1, first_seed=BASE_SEED + k, strengths={strategy: cfg.strengths[strategy]},
                          options={s: v for s, v in cfg.options.items() if s == strategy})
            out.append(Unit(f"{scenario}/{name}/{value}/s{k}", "experiments.continual.tune:tuning_unit",
                            {"benchmark": benchmark, "scenario": scenario, "data_dir": data_dir,
                             "sequence_seed": BASE_SEED, "config": asdict(one), **changed}))
    return out


def tuning_unit(**kwargs: Any) -> dict[str, Any]:
    """A protocol unit (:func:`experiments.continual.protocol.run_unit`, same settings) recorded without its
    evaluation curve: the tuner reads only the metrics (the integrated loss among them), and the curve was 93 % of a
    ledger line (253 units: 6.2 MB with curves, 0.4 MB without)."""
    from experiments.continual.protocol import run_unit

    record = run_unit(**kwargs)
    del record["curve"]
    return record


def summary(ledger: dict[str, dict[str, Any]], sweeps: dict[tuple[str, str], list[str]],
            references: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Per sweep: the sweep's statistics, the best strength (highest mean) and the chosen one: the best where its
    paired 95 % t interval against the published value excludes zero from below, else the published one (``None``
    until a seed has finished the grid)."""
    from analysis.stats import paired_difference
    from experiments.sweep.report import paired_columns, summarise_columns

    out: dict[str, Any] = {}
    for (scenario, strategy), values in sweeps.items():
        prefix = f"{scenario}/{strategy}"
        table = paired_columns(ledger, prefix, values, MEASURE, scale=100.0)  # percentage points
        seeds = len(table[values[0]])
        reference = references[scenario, strategy]
        found, versus, best, chosen = None, None, None, None
        if seeds:
            extras = {m: paired_columns(ledger, prefix, values, m, scale=100.0) for m in EXTRAS}
            found = summarise_columns("strength", table, reference, False, extras)
            means = {r["setting"]["strength"]: r["mean"] for r in found["rows"] if "mean" in r}
            top = max(means.values())  # a tie keeps the published value: no change without a measured gain
            best = reference if means.get(reference) == top else next(v for v in values if means.get(v) == top)
            if seeds >= 2 and best != reference:  # a paired t interval at any n >= 2
                versus = paired_difference(table[best], table[reference])
            chosen = best if versus is not None and versus["lo"] > 0 else reference
        out[prefix] = {"scenario": scenario, "strategy": strategy, "option": strength_option(strategy),
                       "published": reference, "grid": values, "seeds": seeds, "best": best, "chosen": chosen,
                       "best_vs_published": versus, "sweep": found}
    return out


def markdown(found: dict[str, Any], protocol: str) -> str:
    from analysis.stats import interval_text
    from analysis.tables import markdown as table

    rows = []
    for s in found.values():
        sweep = s["sweep"]
        if sweep is None:
            rows.append([s["scenario"], s["strategy"], f"{s['option']}={s['published']}", "-", "-", "-", "-", "-", "0"])
            continue
        by = {r["setting"]["strength"]: r for r in sweep["rows"]}
        best, ref = by[s["best"]], by[s["published"]]
        diff = interval_text(s["best_vs_published"]) if s["best_vs_published"] else "-"
        p_best = sweep["best_frequency"].get("strength=" + s["best"], math.nan)
        edge = " (grid edge)" if s["best"] in (s["grid"][0], s["grid"][-1]) else ""  # the best may lie beyond
        rows.append([s["scenario"], s["strategy"], f"{s['option']}={s['published']}", s["best"] + edge,
                     interval_text(best, fmt=".2f"), interval_text(ref, fmt=".2f"), diff, s["chosen"],
                     f"{s['seeds']} (P(best) {p_best:.2f}, detectable {sweep['detectable_effect']:.3g})"])
    head = ["scenario", "strategy", "published", "best", "valid acc at best (%)", "at published (%)",
            "best - published (points, paired t)", "chosen", "seeds"]
    return table(head, rows, f"Strengths tuned on the validation split ({protocol})")


def plot(found: dict[str, Any], path: Path) -> Path:
    """Validation accuracy against strength (log scale), a panel per scenario, a line per strategy."""
    from analysis import plots

    scenarios = list(dict.fromkeys(s["scenario"] for s in found.values()))
    fig, axes = plots.panels(1, len(scenarios), (4.2 * len(scenarios), 3.4))
    for ax, scenario in zip(axes[0], scenarios):
        drawn = False
        for s in (s for s in found.values() if s["scenario"] == scenario and s["sweep"]):
            rows = [r for r in s["sweep"]["rows"] if "mean" in r]
            x = [float(r["setting"]["strength"]) / float(s["published"]) for r in rows]
            ax.errorbar(x, [r["mean"] for r in rows], yerr=[r["mean"] - r["lo"] for r in rows], marker="o",
                        capsize=2, label=f"{s['strategy']} (n={s['seeds']})")
            drawn = True
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set(title=f"{scenario}-IL", xlabel="strength / published value", ylabel="valid accuracy (%)")
        ax.legend(fontsize=7) if drawn else plots.no_data(ax)
    plots.save(fig, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from experiments.continual.published import options_line
    from utils import UserError, save_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="vandeven2019")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    p.add_argument("--decades", type=float, default=2.0, help="the grid spans this many decades either side")
    p.add_argument("--points", type=int, default=5, help="strengths per grid")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--grid", action="append", default=[], metavar="[SCENARIO/]SWEEP=V1,V2,...",
                   help="this sweep's values instead of the log grid (repeatable), e.g. task/wpl=1e3,1e5,1e7,1e9")
    p.add_argument("--data_dir", default="../shared/data")
    add_ledger_options(p, ledger="", ledger_help="default: <out>/tune_<protocol>.jsonl", out="results/continual",
                       extra_help="options added to every unit's --mode=continual command line (after --)")
    args = p.parse_args(argv)
    scenarios, strategies = args.scenarios.split(","), args.strategies.split(",")
    if args.seeds < 1 or args.points % 2 == 0 or not set(scenarios) <= set(SCENARIOS):
        p.error(f"--seeds must be >= 1, --points odd (the published value is the grid's centre) and --scenarios "
                f"among {','.join(SCENARIOS)}")
    try:
        references = {(sc, st): f"{published(args.protocol, sc, st):.6g}" for sc in scenarios for st in strategies}
        own = grid_overrides(args.grid)
        unknown = set(own) - {k for sc, st in references for k in (st, f"{sc}/{st}")}
        if unknown:
            raise ValueError(f"--grid names no sweep of this run: {', '.join(sorted(unknown))}")
        sweeps = {}
        for (sc, st), ref in references.items():
            values = own.get(f"{sc}/{st}", own.get(st))
            sweeps[sc, st] = (sweep_grid(st, ref, args.decades, args.points) if values is None
                              else sorted({*values, ref}, key=float))
    except (KeyError, ValueError) as err:
        p.error(f"{err}")

    def body() -> str:
        ledger = Path(args.ledger or f"{args.out}/tune_{args.protocol}.jsonl")
        if not args.report_only:
            todo = [u for (sc, st), values in sweeps.items()
                    for u in sweep_units(args.protocol, sc, st, values, args.seeds, args.data_dir, args.extra)]
            run_units(todo, ledger, workers=args.workers, desc="tuning units")
        found = summary(read_ledger(ledger), sweeps, references)
        if not any(s["seeds"] for s in found.values()):
            raise UserError(f"{ledger}: no sweep has a seed with every strength finished yet")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join([markdown(found, args.protocol), options_line(args.extra)]).rstrip() + "\n"
        save_json(out / f"tune_{args.protocol}.json", found)
        (out / f"tune_{args.protocol}.md").write_text(text)
        plot(found, out / f"tune_{args.protocol}.png")
        return text

    return protocol_cli(body)


if __name__ == "__main__":
    sys.exit(main())
