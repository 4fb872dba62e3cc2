"""What a sweep found: per-setting intervals, paired differences, the noise floor, the smallest
detectable effect and how stable the best setting is; a table and a figure.

Runs with the same seed share the base model and the batch order, so every setting's value at a
seed is paired with the reference setting's value at that seed; the difference removes the part of
the noise that comes from the seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from analysis.stats import best_stability, detectable_effect, interval_text, mean_ci, noise_floor, paired_bootstrap
from experiments.sweep.study import setting_key


def per_seed(setting: dict[str, str], seeds: Sequence[int | None], results: dict[str, Any]) -> list[float]:
    """The setting's value at every seed (NaN where an evaluation failed), or the program's own per-seed list."""
    if tuple(seeds) == (None,):
        found = results.get(setting_key(setting, None))
        return [float(v) for v in found] if isinstance(found, list) else ([float(found)] if found is not None else [])
    return [float(np.mean(results[k])) if (k := setting_key(setting, s)) in results else math.nan for s in seeds]


def per_seed_extra(setting: dict[str, str], seeds: Sequence[int | None], extras: dict[str, dict[str, Any]],
                   measure: str) -> list[float]:
    found = [extras.get(setting_key(setting, s), {}).get(measure) for s in seeds]
    flat = [v for f in found if f is not None for v in (f if isinstance(f, list) else [f])]
    return [float(v) for v in flat]


def name_of(setting: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "default"


def summarise(settings: Sequence[dict[str, str]], seeds: Sequence[int | None], results: dict[str, Any],
              reference: dict[str, str] | None, minimize: bool, extras: dict[str, dict[str, Any]] | None = None,
              extra_names: Sequence[str] = ()) -> dict[str, Any]:
    """The statistics of a grid or TPE sweep (the reference defaults to the first setting).

    ``extras`` (``key -> {measure: result}``) adds a mean and t interval of each of ``extra_names``.
    """
    table = {name_of(s): per_seed(s, seeds, results) for s in settings}
    ref = name_of(reference) if reference is not None else name_of(settings[0])
    if ref not in table:
        raise KeyError(f"reference setting {ref!r} is not among the swept settings")
    rows, diffs = [], []
    for s in settings:
        name = name_of(s)
        values = [v for v in table[name] if math.isfinite(v)]
        row: dict[str, Any] = {"setting": s, "name": name, "values": table[name], "n": len(values)}
        if values:
            row.update(mean_ci(values))
        for m in extra_names:
            got = [v for v in per_seed_extra(s, seeds, extras or {}, m) if math.isfinite(v)]
            row.setdefault("extras", {})[m] = mean_ci(got) if got else None
        pairs = [(v, r) for v, r in zip(table[name], table[ref]) if math.isfinite(v) and math.isfinite(r)]
        if name != ref and len(pairs) >= 2:
            row["paired_vs_reference"] = paired_bootstrap([p[0] for p in pairs], [p[1] for p in pairs])
            diffs.append([p[0] - p[1] for p in pairs])
        rows.append(row)
    complete = [table[n] for n in table if all(math.isfinite(v) for v in table[n])]
    seeds_n = min((len(c) for c in complete), default=0)
    floor = noise_floor([[v for v in table[n] if math.isfinite(v)] for n in table])
    diff_sd = noise_floor(diffs) if diffs else floor * math.sqrt(2)
    stability = best_stability([c[:seeds_n] for c in complete], minimize) if complete and seeds_n else []
    names = [n for n in table if all(math.isfinite(v) for v in table[n])]
    return {"reference": ref, "rows": rows, "noise_floor": floor, "paired_difference_sd": diff_sd, "minimize": minimize,
            "detectable_effect": detectable_effect(diff_sd, seeds_n), "seeds": seeds_n,
            "best_frequency": dict(zip(names, stability)),
            "best": (min if minimize else max)((r for r in rows if "mean" in r), key=lambda r: r["mean"])["name"]
            if any("mean" in r for r in rows) else None}


def paired_columns(ledger: dict[str, dict[str, Any]], prefix: str, values: Sequence[str], metric: str,
                   scale: float = 1.0) -> dict[str, list[float]]:
    """``metric`` (times ``scale``) of a protocol ledger's units ``<prefix>/<value>/s<k>`` per value, over the seeds
    every value has finished, in seed order: every column is paired with every other."""
    seeds = sorted({int(key.rsplit("/s", 1)[1]) for key in ledger if key.startswith(prefix + "/")})
    complete = [k for k in seeds if all(f"{prefix}/{v}/s{k}" in ledger for v in values)]
    return {v: [scale * float(ledger[f"{prefix}/{v}/s{k}"]["record"]["metrics"][metric]) for k in complete]
            for v in values}


def summarise_columns(param: str, columns: dict[str, list[float]], reference: str, minimize: bool,
                      extras: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """:func:`summarise` over paired columns (as :func:`paired_columns` gives them) of one parameter's values, with
    the extra measures' columns beside them."""
    seeds = list(range(len(next(iter(columns.values()), []))))
    settings = [{param: v} for v in columns]
    results = {setting_key(s, k): columns[s[param]][k] for s in settings for k in seeds}
    per_key = {setting_key(s, k): {m: extras[m][s[param]][k] for m in extras} for s in settings for k in seeds}
    return summarise(settings, seeds, results, {param: reference}, minimize, per_key, list(extras))


def narrowing_summary(trials: Sequence[dict[str, Any]], spacing: str) -> dict[str, Any]:
    """How much the trials agree on the best value (on a log scale with log spacing)."""
    best = [t["best_value"] for t in trials]
    scale = [math.log10(b) for b in best] if spacing == "log" and all(b > 0 for b in best) else best
    return {"best_values": best, "best_measures": [t["best_measure"] for t in trials],
            "best_value_spread": {**mean_ci(scale), "scale": "log10" if scale is not best else "linear"},
            "steps_per_trial": [len(t["steps"]) for t in trials]}


def _fmt(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def markdown(summary: dict[str, Any], measure: str) -> str:
    extra = list(summary["rows"][0].get("extras", {})) if summary["rows"] else []
    lines = [f"| setting | n | {measure} (mean, 95% CI) | paired diff. vs {summary['reference']} (bootstrap 95% CI) | P(best) |"
             + "".join(f" {m} |" for m in extra), "|---|---|---|---|---|" + "---|" * len(extra)]
    for r in summary["rows"]:
        mean = f"{_fmt(r.get('mean'))} [{_fmt(r.get('lo'))}, {_fmt(r.get('hi'))}]" if "mean" in r else "—"
        p = r.get("paired_vs_reference")
        paired = interval_text(p) if p else "reference" if r["name"] == summary["reference"] else "—"
        cells = "".join(f" {_fmt(e['mean'])} ± {_fmt(e['hi'] - e['mean'])} |" if (e := r["extras"][m]) else " — |"
                        for m in extra)
        lines.append(f"| {r['name']} | {r['n']} | {mean} | {paired} | {_fmt(summary['best_frequency'].get(r['name']))} |"
                     + cells)
    better = "" if summary.get("minimize") is None else " (lower is better)" if summary["minimize"] else " (higher is better)"
    lines += ["", f"noise floor (SD across seeds at one setting): {_fmt(summary['noise_floor'])}; "
              f"SD of paired differences: {_fmt(summary['paired_difference_sd'])}; smallest effect {summary['seeds']} "
              f"paired seeds detect (two-sided 5%, power 80%): {_fmt(summary['detectable_effect'])}; "
              f"best{better}: {summary['best']}"]
    return "\n".join(lines)


def numeric(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot(summary: dict[str, Any] | None, trials: Sequence[dict[str, Any]], measure: str, param: str, path: Path) -> Path:
    """Measure against the parameter: mean and 95% CI band, each seed's value, each narrowing trial's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs_all: list[float] = []
    if summary is not None:
        rows = [r for r in summary["rows"] if "mean" in r]
        first = [str(next(iter(r["setting"].values()), "")) for r in rows]
        xs = numeric(first) if all(len(r["setting"]) == 1 for r in rows) else None
        positions = xs if xs is not None else list(range(len(rows)))
        order = np.argsort(positions)
        px = np.asarray(positions)[order]
        ax.plot(px, [rows[i]["mean"] for i in order], "o-", color="C0", label="mean over seeds")
        ax.fill_between(px, [rows[i]["lo"] for i in order], [rows[i]["hi"] for i in order], color="C0", alpha=0.2,
                        label="95% CI")
        for x, r in zip(positions, rows):
            ax.plot([x] * len(r["values"]), r["values"], ".", color="0.5", alpha=0.6)
        if xs is None:
            ax.set_xticks(positions, [r["name"] for r in rows], rotation=20, ha="right", fontsize=7)
        xs_all = list(px) if xs is not None else []
    for t in trials:
        xs = [v for s in t["steps"] for v in s["values"]]
        ys = [m for s in t["steps"] for m in s["measures"]]
        ax.plot(xs, ys, ".", alpha=0.5, color=f"C{1 + t['trial'] % 8}")
        ax.plot([t["best_value"]], [t["best_measure"]], "*", ms=12, color=f"C{1 + t['trial'] % 8}",
                label=f"trial {t['trial']} best")
        xs_all += xs
    positive = [x for x in xs_all if x > 0]
    if positive and max(positive) / min(positive) >= 100 and all(x >= 0 for x in xs_all):
        if len(positive) == len(xs_all):
            ax.set_xscale("log")
        else:  # zero (the reference strength) and decades above it
            ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel(param)
    ax.set_ylabel(measure)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
