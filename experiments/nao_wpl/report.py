"""NAO vs NAO + WPL's numbers: per dropout and epoch, each variant's mean with 95 % intervals over seeds, and the
paired difference (WPL minus NAO, same seed) at the last epoch.

The headline is the pool's best architecture's validation perplexity at the last epoch; its paired
difference comes with t and bootstrap intervals, Wilcoxon signed-rank and paired t p-values and the
smallest difference detectable with 80 % power at that number of seeds (analysis/stats.py). Perplexity
is heavy-tailed at this scale (one seed that blows up dominates a mean), so the difference of log
perplexities (a ratio) is reported beside it, and the forgetting Diff averaged over the epochs with WPL.
A seed where either variant diverged is left out of the paired figures and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis import plots, tables
from analysis.stats import detectable_effect, mean_ci, paired_tests
from experiments.nao_wpl.protocol import PAPER_FINAL_PPL, VARIANTS
from experiments.protocol_files import write_report

LABELS = {"nao": "NAO", "nao_wpl": "NAO + WPL"}


def _ci(values: Sequence[float | None]) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return mean_ci(finite) if finite else {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}


def _paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    entry = paired_tests(a, b)
    entry["detectable"] = detectable_effect(float(np.std(np.subtract(a, b), ddof=1)), len(a)) if len(a) > 1 else math.inf
    return entry


def _mean_diff(epochs: Sequence[dict[str, Any]], first: int) -> float | None:
    values = [e["forgetting_mean_diff"] for e in epochs[first:] if e.get("forgetting_mean_diff") is not None]
    return float(np.mean(values)) if values else None


def summarise(records: Sequence[dict[str, Any]], dropouts: Sequence[float], wpl_from: int) -> dict[str, Any]:
    """``records``: the units' records (any order); ``wpl_from``: the first epoch with WPL's penalty."""
    runs: dict[float, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    for r in records:
        runs.setdefault(float(r["dropout"]), {}).setdefault(r["variant"], {})[r["seed"]] = r["epochs"]
    out: dict[str, Any] = {}
    for dropout in dropouts:
        by_variant = runs.get(float(dropout), {})
        entry: dict[str, Any] = {"variants": {}, "paper_final_ppl": PAPER_FINAL_PPL.get(float(dropout))}
        for variant in VARIANTS:
            seeds = by_variant.get(variant, {})
            if not seeds:
                continue
            n_epochs = max(len(e) for e in seeds.values())
            entry["variants"][variant] = {
                "seeds": sorted(seeds), "diverged": sorted(s for s, e in seeds.items() if e[-1].get("diverged")),
                "per_epoch": [{"valid_ppl": _ci([e[k].get("valid_ppl") for e in seeds.values() if k < len(e)]),
                               "diff": _ci([e[k].get("forgetting_mean_diff") for e in seeds.values() if k < len(e)])}
                              for k in range(n_epochs)]}
        base, wpl = by_variant.get("nao", {}), by_variant.get("nao_wpl", {})
        pairs = sorted(set(base) & set(wpl))
        usable = [s for s in pairs if base[s][-1].get("valid_ppl") is not None and wpl[s][-1].get("valid_ppl") is not None]
        entry["pairs"], entry["pairs_left_out"] = usable, sorted(set(pairs) - set(usable))
        if len(usable) >= 2:
            a = [wpl[s][-1]["valid_ppl"] for s in usable]
            b = [base[s][-1]["valid_ppl"] for s in usable]
            entry["paired"] = {"valid_ppl": _paired(a, b), "log_valid_ppl": _paired(np.log(a).tolist(), np.log(b).tolist())}
            da = [_mean_diff(wpl[s], wpl_from) for s in usable]
            db = [_mean_diff(base[s], wpl_from) for s in usable]
            keep = [i for i in range(len(usable)) if da[i] is not None and db[i] is not None]
            if len(keep) >= 2:
                entry["paired"]["diff"] = _paired([float(da[i]) for i in keep], [float(db[i]) for i in keep])  # type: ignore[arg-type]
        out[f"{dropout:g}"] = entry
    return {"dropouts": out, "wpl_from_epoch": wpl_from, "runs": {f"{d:g}": v for d, v in runs.items()}}


def _fmt(ci: dict[str, Any], spec: str = ".0f") -> str:
    if not math.isfinite(ci["mean"]):
        return tables.MISSING
    return f"{ci['mean']:{spec}} [{ci['lo']:{spec}}, {ci['hi']:{spec}}]" if ci["n"] > 1 else f"{ci['mean']:{spec}}"


def _diff(e: dict[str, Any], spec: str) -> list[str]:
    boot = f"[{e['lo']:{spec}}, {e['hi']:{spec}}]" if e.get("lo") is not None else e.get("note", "")
    return [f"{e['mean']:{spec}} [{e['t_lo']:{spec}}, {e['t_hi']:{spec}}]", boot, tables.cell(e["wilcoxon_p"], ".3f"),
            tables.cell(e["t_p"], ".3f"), f"{e['detectable']:{spec.lstrip('+')}}"]


def markdown(results: dict[str, Any]) -> str:
    levels, diffs = [], []
    for dropout, entry in results["dropouts"].items():
        v, paper = entry["variants"], entry["paper_final_ppl"] or {}
        last = {k: v[k]["per_epoch"][-1] for k in v}
        levels.append([dropout, len(entry["pairs"]) + len(entry["pairs_left_out"])]
                      + [_fmt(last[k]["valid_ppl"]) if k in last else tables.MISSING for k in VARIANTS]
                      + [paper.get(k, tables.MISSING) for k in VARIANTS]
                      + [_fmt(last[k]["diff"], ".3f") if k in last else tables.MISSING for k in VARIANTS])
        p = entry.get("paired", {})
        for key, name, spec in (("valid_ppl", "valid ppl", "+.0f"), ("log_valid_ppl", "log valid ppl", "+.3f"),
                                ("diff", "Diff (WPL epochs' mean, nats)", "+.4f")):
            if key in p:
                diffs.append([dropout, name, len(entry["pairs"]), *_diff(p[key], spec)])
    lines = [tables.markdown(["output dropout", "seeds", "NAO valid ppl", "NAO + WPL valid ppl", "paper NAO (300 ep.)",
                              "paper NAO + WPL", "NAO Diff", "NAO + WPL Diff"], levels,
                             "Last epoch: the pool's best architecture, mean [95% t interval] over seeds; "
                             "the paper's values read off its figure")]
    if diffs:
        lines += ["", tables.markdown(["output dropout", "metric", "pairs", "WPL - NAO [t 95%]", "bootstrap 95%",
                                       "Wilcoxon p", "paired t p", "detectable (80% power)"], diffs,
                                      "Paired differences (same seed: same initial weights, pool and batches), last epoch")]
    left = {d: e["pairs_left_out"] for d, e in results["dropouts"].items() if e["pairs_left_out"]}
    if left:
        lines += ["", "Seeds left out of the paired figures (a variant diverged): "
                  + "; ".join(f"dropout {d}: {s}" for d, s in left.items())]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    """Shaped like the paper's NAO figure: one column per output dropout, valid perplexity per epoch on top
    (log scale), the forgetting Diff below; each variant's mean over seeds with its 95 % band."""
    dropouts = list(results["dropouts"].items())
    fig, axes = plots.panels(2, max(1, len(dropouts)), (4.2 * max(1, len(dropouts)), 6.5))
    colours = {"nao": "tab:blue", "nao_wpl": "tab:red"}
    for col, (dropout, entry) in enumerate(dropouts):
        for variant, v in entry["variants"].items():
            for row, metric in enumerate(("valid_ppl", "diff")):
                scored = [(k + 1, e[metric]) for k, e in enumerate(v["per_epoch"]) if e[metric]["n"] > 0]
                x, rows = [k for k, _ in scored], [r for _, r in scored]
                plots.band(axes[row][col], x, [r["mean"] for r in rows],
                           [r["mean"] - r["lo"] if r["n"] > 1 else 0.0 for r in rows], color=colours[variant],
                           style="-o", label=f"{LABELS[variant]} (n={len(v['seeds'])})")
        axes[0][col].set(title=f"output dropout {dropout}", xlabel="epoch", ylabel="valid ppl (pool's best)", yscale="log")
        axes[1][col].set(xlabel="epoch", ylabel="forgetting Diff (nats)")
        axes[1][col].axhline(0, color="grey", lw=0.8)
        for row in (0, 1):  # the first epoch (1-based) with WPL's penalty: the curves agree before it
            axes[row][col].axvline(results["wpl_from_epoch"] + 1, color="grey", ls=":", lw=0.8)
        if entry["variants"]:
            axes[0][col].legend(fontsize=7)
        else:
            plots.no_data(axes[0][col], "no unit finished yet")
    plots.save(fig, path)
    return path


def write(folder: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``nao_wpl_results.json``, ``nao_wpl.md`` and ``nao_wpl.png`` in ``folder``."""
    return write_report(folder, "nao_wpl", results, markdown(results), plot)
