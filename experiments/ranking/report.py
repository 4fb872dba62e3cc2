"""The ranking benchmark's numbers: Kendall tau against the ground truth, regret, forgetting, paired differences.

Every comparison is on per-cell paired values (``scores[i]`` and ``truth[i]`` belong to cell i,
analysis/stats.py's ``rank_agreement``), every interval over seeds, every difference between variants
paired by seed (same initial weights, same batches). The ceiling is the ground truth's own
seed-to-seed tau: no search can rank the cells more consistently with one training run than another
training run of the same cell does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis import plots, tables
from analysis.stats import (
    detectable_effect,
    mean_ci,
    paired_tests,
    rank_agreement,
    top_k_regret,
)
from experiments.protocol_files import write_report
from experiments.ranking.protocol import truth_matrix

METRICS = ("tau", "rho", "regret1", "regret5", "diff", "stability", "median_log_ppl")


def ceiling(matrix: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Tau between every two ground-truth seeds, and of each seed against the mean of the others."""
    pairs = [rank_agreement(a, b)["tau"] for a, b in itertools.combinations(matrix, 2)]
    loo = [rank_agreement(row, np.mean([r for j, r in enumerate(matrix) if j != i], axis=0))["tau"]
           for i, row in enumerate(matrix)] if len(matrix) > 2 else []
    return {"seed_pair_tau": mean_ci(pairs) if pairs else None, "seed_vs_rest_tau": mean_ci(loo) if loo else None,
            "seeds": len(matrix)}


def _ranked(ppl: Sequence[float | None]) -> list[float]:
    """Perplexities to rank: a diverged cell's (infinite, NaN, or null in the ledger) ranks last."""
    return [p if p is not None and math.isfinite(p) else 1e30 for p in ppl]


def score_epoch(ppl: Sequence[float | None], truth: Sequence[float], previous: Sequence[float] | None) -> dict[str, float]:
    """One epoch's figures; ``median_log_ppl`` says how good the shared weights are at all, which tau ignores: the
    median over the cells of their log-perplexity (nats per word) with the shared weights, a diverged cell counted
    as the worst. In logs, so that a search whose weights blew up (perplexities of 1e78 were seen) stays a number."""
    finite = _ranked(ppl)
    agreement = rank_agreement(finite, truth)
    return {"tau": agreement["tau"], "rho": agreement["rho"], "regret1": top_k_regret(finite, truth, 1),
            "regret5": top_k_regret(finite, truth, 5),
            "stability": rank_agreement(finite, previous)["tau"] if previous is not None else math.nan,
            "median_log_ppl": float(np.median(np.log(finite)))}


def per_run(search: dict[str, Any], truth: Sequence[float]) -> list[dict[str, float]]:
    """Each epoch's figures of one search."""
    rows, previous = [], None
    for epoch in search["epochs"]:
        diff = epoch.get("forgetting_mean_diff")
        rows.append({**score_epoch(epoch["valid_ppl"], truth, previous), "diff": math.nan if diff is None else diff})
        previous = _ranked(epoch["valid_ppl"])
    return rows


def summarise(truth_doc: dict[str, Any], searches: Sequence[dict[str, Any]], variants: Sequence[tuple[str, str]]) -> dict[str, Any]:
    matrix = truth_matrix(truth_doc)
    truth = np.mean(matrix, axis=0).tolist()
    test = np.mean(truth_matrix(truth_doc, "test_ppl"), axis=0).tolist()
    runs: dict[str, dict[int, list[dict[str, float]]]] = {}
    for search in searches:
        runs.setdefault(f"{search['sampler']}:{search['importance']}", {})[search["seed"]] = per_run(search, truth)
    summary: dict[str, Any] = {}
    for name in (f"{s}:{i}" for s, i in variants):
        by_seed = runs.get(name, {})
        if not by_seed:
            continue
        epochs = min(len(rows) for rows in by_seed.values())
        summary[name] = {"seeds": sorted(by_seed), "per_epoch": [
            {m: _ci([rows[e][m] for rows in by_seed.values()]) for m in METRICS} for e in range(epochs)]}
    return {"truth": {"valid_ppl": truth, "test_ppl": test, "ceiling": ceiling(matrix), "best_cell": f"c{int(np.argmin(truth)):02d}"},
            "variants": summary, "paired": paired(runs, variants), "runs": runs}


def _ci(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return mean_ci(finite) if finite else {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}


def paired(runs: dict[str, dict[int, list[dict[str, float]]]], variants: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Each importance minus ``none`` of the same sampler, at the last epoch, over the seeds both have;
    then, where two or more samplers have the importance, the same difference with the samplers pooled:
    every (sampler, seed) is one pair (same sampler, same seed, same start and batches), so the test
    asks whether the importance moves tau whichever sampler proposes the cells, with twice the pairs;
    last, each later sampler minus each earlier one with the same importance, paired by seed (a seed fixes the
    initial weights and the batches whatever the sampler)."""
    out: dict[str, Any] = {}
    pooled: dict[str, list[tuple[str, str, str]]] = {}
    for sampler, importance in variants:
        base, this = runs.get(f"{sampler}:none", {}), runs.get(f"{sampler}:{importance}", {})
        seeds = sorted(set(base) & set(this))
        if importance == "none":
            continue
        pairs = [(f"{sampler}:{importance}/{s}", f"{sampler}:none/{s}", f"{sampler}/{s}") for s in seeds]
        pooled.setdefault(importance, []).extend(pairs)
        if len(seeds) >= 2:
            out[f"{sampler}:{importance} - {sampler}:none"] = _differences(runs, pairs)
    for importance, pairs in pooled.items():
        if len({label.split("/")[0] for _, _, label in pairs}) >= 2 and len(pairs) >= 2:
            out[f"{importance} - none, samplers pooled"] = _differences(runs, pairs)
    samplers = list(dict.fromkeys(sampler for sampler, _ in variants))
    for importance in dict.fromkeys(importance for _, importance in variants):
        present = [s for s in samplers if runs.get(f"{s}:{importance}")]
        for first, second in itertools.combinations(present, 2):
            a, b = f"{second}:{importance}", f"{first}:{importance}"
            seeds = sorted(set(runs[a]) & set(runs[b]))
            if len(seeds) >= 2:
                out[f"{a} - {b}"] = _differences(runs, [(f"{a}/{s}", f"{b}/{s}", f"{importance}/{s}") for s in seeds])
    return out


def _differences(runs: dict[str, dict[int, list[dict[str, float]]]], pairs: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Paired tests at the last epoch over ``pairs`` of (``variant/seed`` minus ``variant/seed``, label)."""
    def last(ref: str, metric: str) -> float:
        name, seed = ref.rsplit("/", 1)
        return runs[name][int(seed)][-1][metric]

    entry: dict[str, Any] = {"seeds": [label for _, _, label in pairs]}
    for metric in ("tau", "regret1", "regret5", "median_log_ppl"):
        a = [last(x, metric) for x, _, _ in pairs]
        b = [last(y, metric) for _, y, _ in pairs]
        entry[metric] = paired_tests(a, b)
        entry[metric]["detectable"] = detectable_effect(float(np.std(np.subtract(a, b), ddof=1)), len(pairs))
    return entry


def markdown(results: dict[str, Any]) -> str:
    t = results["truth"]
    c = t["ceiling"]
    lines = [f"Ground truth: {c['seeds']} seed(s) per cell; best cell {t['best_cell']} "
             f"(valid ppl {min(t['valid_ppl']):.1f}); seed-to-seed tau (the ceiling): "
             + (f"{c['seed_pair_tau']['mean']:.3f} [{c['seed_pair_tau']['lo']:.3f}, {c['seed_pair_tau']['hi']:.3f}]"
                if c["seed_pair_tau"] else "needs >= 2 seeds"), ""]
    rows = []
    for name, v in results["variants"].items():
        last = v["per_epoch"][-1]
        rows.append([name, len(v["seeds"])] + [_fmt(last[m]) for m in ("tau", "rho", "regret1", "regret5", "diff", "stability",
                                                                       "median_log_ppl")])
    lines.append(tables.markdown(["variant", "seeds", "Kendall tau", "Spearman rho", "top-1 regret (ppl)",
                                  "top-5 regret (ppl)", "forgetting Diff (nats)", "tau vs previous epoch",
                                  "median cell log-ppl (shared weights)"], rows,
                                 "Last epoch, mean [95% t interval] over paired seeds"))
    prow = []
    for name, entry in results["paired"].items():
        for metric in ("tau", "regret1", "median_log_ppl"):
            e = entry[metric]
            boot = f"[{e['lo']:+.3f}, {e['hi']:+.3f}]" if e.get("lo") is not None else e.get("note", "")
            prow.append([name, metric, len(entry["seeds"]), f"{e['mean']:+.3f} [{e['t_lo']:+.3f}, {e['t_hi']:+.3f}]", boot,
                         tables.cell(e["wilcoxon_p"], ".3f"), tables.cell(e["t_p"], ".3f"), f"{e['detectable']:.3f}"])
    if prow:
        lines += ["", tables.markdown(["difference", "metric", "pairs", "mean [t 95%]", "bootstrap 95%", "Wilcoxon p",
                                       "paired t p", "detectable (80% power)"], prow, "Paired differences at the last epoch")]
    return "\n".join(lines) + "\n"


def _fmt(ci: dict[str, Any]) -> str:
    if not math.isfinite(ci["mean"]):
        return tables.MISSING
    return f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci["n"] > 1 else f"{ci['mean']:.3f}"


def plot(results: dict[str, Any], path: Path) -> Path:
    """Kendall tau and top-1 regret against epoch per variant (mean and 95% band, the ceiling dashed), and each
    search's median cell log-perplexity (one thin line per seed on a log axis: a search whose weights blew up
    would flatten a mean and its band; the bold line is the median over seeds)."""
    fig, axes = plots.panels(1, 3, (16, 4))
    colours = plots.pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, v) in enumerate(results["variants"].items()):
        colour = colours[k % len(colours)]
        x = list(range(1, len(v["per_epoch"]) + 1))
        for ax, metric in zip(axes[0], ("tau", "regret1")):
            rows = [e[metric] for e in v["per_epoch"]]
            plots.band(ax, x, [r["mean"] for r in rows], [r["mean"] - r["lo"] if r["n"] > 1 else 0 for r in rows],
                       color=colour, label=name, style="-o")
        shift = [e + 0.04 * (k - 1.5) for e in x]
        per_seed = [[rows[e]["median_log_ppl"] for e in range(len(x))] for rows in results["runs"].get(name, {}).values()]
        for values in per_seed:
            axes[0][2].plot(shift, values, "-o", color=colour, alpha=0.35, lw=0.8, ms=3)
        if per_seed:
            axes[0][2].plot(shift, np.median(per_seed, axis=0), "-", color=colour, lw=2.5, label=name)
    top = results["truth"]["ceiling"]["seed_pair_tau"]
    if top:
        axes[0][0].axhline(top["mean"], color="grey", ls="--", label="ground truth seed-to-seed")
    axes[0][0].set(xlabel="epoch", ylabel="Kendall tau vs ground truth", title="ranking of the 32 cells")
    axes[0][1].set(xlabel="epoch", ylabel="top-1 regret (valid ppl)", title="cost of the cell a search would pick")
    axes[0][2].set(xlabel="epoch", ylabel="median cell log-ppl (nats, log axis)", yscale="log",
                   title="the shared weights themselves, per search")
    for ax in axes[0]:
        ax.set_xticks(range(1, 1 + max((len(v["per_epoch"]) for v in results["variants"].values()), default=1)))
    axes[0][0].legend(fontsize=7)
    plots.save(fig, path)
    return path


def write(folder: Path, results: dict[str, Any]) -> dict[str, Any]:
    return write_report(folder, "ranking", results, markdown(results), plot)
