"""The report of a protocol's ledger: metrics over paired seeds, the published figures beside them, a figure.

Only seeds that every strategy of the ledger has finished are summarised, so every row is over the same
seeds and the paired differences to ``none`` stay paired (a run cut short mid-seed loses nothing: the
next run finishes the seed). Intervals are 95 % t intervals (:mod:`analysis.stats`). The published
figures are not intervals of the same kind: van de Ven & Tolias report mean ± SEM over 20 runs, Hsu et
al. mean ± standard deviation over 10 runs; each carries its source and whether its number was read
from the paper's text here (``verified``) or is recalled from the paper and not checked against it. So
that "outside the published interval" means one thing, each figure is shown with the 95 % t interval of
its mean rebuilt from its ± and its number of runs (:func:`analysis.stats.reported_ci`), and a row is
marked where that interval and ours do not overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

from analysis import plots
from analysis.stats import reported_ci
from analysis.tables import markdown as markdown_table
from experiments.continual.report import fmt, markdown, summarise
from experiments.workers import read_ledger
from utils import UserError, save_json


class Published(NamedTuple):
    mean: float  # average accuracy over all tasks after the last one, %
    spread: float  # the paper's ± (SEM or std, see SOURCES)
    verified: bool  # read from the paper's text here; False: recalled, not checked


SOURCES = {
    "vandeven2019": "van de Ven & Tolias 2019, arXiv:1904.07734 v1, split MNIST table (mean ± SEM, 20 runs)",
    "hsu2018": "Hsu et al. 2018, arXiv:1810.12488 v4, Table 2 split MNIST (mean ± std, 10 runs)",
}
RUNS = {"vandeven2019": (20, True), "hsu2018": (10, False)}  # each paper's runs, and whether its ± is an SEM
# Average accuracy (%) per scenario and strategy ("none": plain fine-tuning with Adam; "joint": the
# offline upper bound trained on all tasks at once).
PUBLISHED: dict[str, dict[str, dict[str, Published]]] = {
    "vandeven2019": {
        "task": {"none": Published(87.19, 0.94, False), "ewc": Published(98.64, 0.22, True),
                 "online_ewc": Published(99.12, 0.11, False), "si": Published(99.09, 0.15, False),
                 "joint": Published(99.66, 0.02, False)},
        "domain": {"none": Published(59.21, 2.04, False), "ewc": Published(63.95, 1.90, True),
                   "online_ewc": Published(64.32, 1.90, False), "si": Published(65.36, 1.57, False),
                   "joint": Published(98.42, 0.06, False)},
        "class": {"none": Published(19.90, 0.02, False), "ewc": Published(20.01, 0.06, True),
                  "online_ewc": Published(19.96, 0.07, False), "si": Published(19.99, 0.06, False),
                  "joint": Published(97.94, 0.03, False)},
    },
    "hsu2018": {
        "task": {"none": Published(93.46, 2.01, False), "ewc": Published(97.70, 0.81, False),
                 "online_ewc": Published(98.04, 1.10, False), "si": Published(98.56, 0.49, False),
                 "mas": Published(99.22, 0.21, False), "l2": Published(98.18, 0.96, False)},
        "domain": {"none": Published(55.16, 1.38, False), "ewc": Published(58.85, 2.59, False),
                   "online_ewc": Published(57.33, 1.44, False), "si": Published(64.76, 3.09, False),
                   "mas": Published(68.57, 6.85, False), "l2": Published(66.00, 3.73, False)},
        "class": {"none": Published(19.71, 0.08, False), "ewc": Published(19.80, 0.05, False),
                  "online_ewc": Published(19.77, 0.04, False), "si": Published(19.67, 0.09, False),
                  "mas": Published(19.52, 0.29, False), "l2": Published(22.52, 1.08, False)},
    },
}


def paired_runs(records: Sequence[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str], list[int]]:
    """``runs`` as :func:`summarise` reads them, the strategies in ledger order, the seeds all of them finished."""
    strategies = list(dict.fromkeys(r["strategy"] for r in records))
    seeds = sorted(set.intersection(*[{r["seed"] for r in records if r["strategy"] == s} for s in strategies]))
    runs = {f"{r['strategy']}/{r['seed']}": {"R": r["R"], "curve": r["curve"], "seconds": r["seconds"]}
            for r in records}
    return runs, strategies, seeds


def published_cell(protocol: str, scenario: str, strategy: str, ours: dict[str, float] | None = None) -> str:
    """``mean ± spread [95 % interval of the mean]``, ``(recalled)`` where unchecked, ``apart`` where the interval
    and ``ours`` (average accuracy as a fraction, with ``lo`` and ``hi``) do not overlap."""
    figure = PUBLISHED.get(protocol, {}).get(scenario, {}).get(strategy)
    if figure is None:
        return "–"
    ci = reported_ci(figure.mean, figure.spread, *RUNS[protocol])
    apart = ours is not None and (100 * ours["lo"] > ci["hi"] or 100 * ours["hi"] < ci["lo"])
    return (f"{figure.mean:.2f} ± {figure.spread:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}]"
            + ("" if figure.verified else " (recalled)") + (" apart" if apart else ""))


def side_by_side(summary: dict[str, Any], scenario: str, seeds: int) -> str:
    """Our average accuracy (95 % t interval) beside both papers' figures, and the time of one unit."""
    head = ["strategy", f"measured, {seeds} seeds (95 % t)", "van de Ven & Tolias 2019 (± SEM [95 %])",
            "Hsu et al. 2018 (± std [95 %])", "s/unit"]
    rows = [[s, fmt(e["average_accuracy"]), published_cell("vandeven2019", scenario, s, e["average_accuracy"]),
             published_cell("hsu2018", scenario, s, e["average_accuracy"]), f"{e['seconds_per_run']:.0f}"]
            for s, e in summary.items()]
    return markdown_table(head, rows)


def plot(summary: dict[str, Any], protocol: str, scenario: str, path: Path) -> None:
    """Bars: our average accuracy with its 95 % interval; markers: each paper's figure with its ±."""
    names = list(summary)
    fig, axes = plots.panels(1, 1, (1.2 * len(names) + 2.5, 3.8))
    ax = axes[0][0]
    plots.bar_ci(ax, names, [100 * summary[s]["average_accuracy"]["mean"] for s in names],
                 [(100 * summary[s]["average_accuracy"]["lo"], 100 * summary[s]["average_accuracy"]["hi"]) for s in names])
    for k, (paper, marker) in enumerate((("vandeven2019", "k*"), ("hsu2018", "rD"))):
        xs = [i + 0.25 * (k * 2 - 1) for i, s in enumerate(names) if s in PUBLISHED[paper][scenario]]
        figs = [PUBLISHED[paper][scenario][s] for s in names if s in PUBLISHED[paper][scenario]]
        if figs:
            ax.errorbar(xs, [f.mean for f in figs], yerr=[f.spread for f in figs], fmt=marker, ms=6, capsize=3,
                        label=SOURCES[paper].split(",")[0])
    low = min(100 * summary[s]["average_accuracy"]["lo"] for s in names)
    ax.set(ylabel="average accuracy after the last task (%)", title=f"split MNIST, {scenario} scenario ({protocol} protocol)",
           ylim=(max(0.0, low - 5), 100.5))
    ax.legend(fontsize=7, loc="lower right")
    plots.save(fig, path, dpi=110)


def strengths_line(entries: Sequence[dict[str, Any]], protocol: str, scenario: str) -> str:
    """The strength each strategy ran with, as its units store it, and whether it is the untuned table's (the papers'
    values; WPL's the project's earlier default), the one tuned on the validation split, or another (an option)."""
    from modes.continual import scenario_values, tuned_values

    ran: dict[str, float] = {}
    for entry in entries:
        ran.update(entry.get("kwargs", {}).get("config", {}).get("strengths", {}))
    parts = []
    for strategy, value in sorted(ran.items()):
        paper = float(scenario_values(strategy, protocol, scenario, "published")["strength"])
        tuned = (tuned_values(strategy, protocol, scenario) or {}).get("strength")
        source = "untuned" if value == paper else "tuned" if value == tuned else "set by an option"
        parts.append(f"{strategy} {value:g} ({source}" + ("" if value == paper else f"; untuned {paper:g}") + ")")
    return ("Strengths (untuned: SCENARIO_STRENGTHS beside each regulariser, the papers' values; tuned: on the "
            "validation split, TUNED_STRENGTHS): " + ("; ".join(parts) if parts else "none") + ".")


def options_line(extra: Sequence[str]) -> str:
    """What a report's units ran with beyond the protocol's options (the ``--`` part of its command), or nothing."""
    return f"Every unit ran with `{' '.join(extra)}` added to the protocol's options." if extra else ""


def report(ledger: Path, out: Path, protocol: str, extra: Sequence[str] = ()) -> str:
    """Summarise ``ledger`` into ``<out>/<ledger name>.md``, ``.json`` and ``.png``; returns the markdown. ``extra``:
    the options its units ran with beyond the protocol's, named in the report."""
    entries = list(read_ledger(ledger).values())
    records = [entry["record"] for entry in entries]
    if not records:
        raise UserError(f"{ledger} holds no finished unit yet")
    runs, strategies, seeds = paired_runs(records)
    if not seeds:
        raise UserError(f"{ledger}: no seed is finished for every strategy yet ({len(records)} units)")
    scenario = records[0]["scenario"]
    summary = summarise(runs, strategies, seeds)
    title = f"split MNIST ({scenario} scenario, {protocol} protocol), {len(seeds)} paired seeds"
    if records[0].get("eval_split") == "valid":  # a test ledger's records name no split: its report stays as it was
        title += (f", measured on a held-out {records[0]['valid_fraction']:g} of each task's training data "
                  f"(the published figures are test accuracies)")
    text = "\n\n".join([markdown(summary, title), side_by_side(summary, scenario, len(seeds)),
                        "Published: " + "; ".join(SOURCES.values()) + ". [95 %]: the t interval of the published mean "
                        "rebuilt from its ± and runs; apart: it does not overlap ours. (recalled): not checked against "
                        "the paper's text.", strengths_line(entries, protocol, scenario), options_line(extra)]).rstrip()
    stem = out / ledger.stem
    save_json(stem.with_suffix(".json"), {"ledger": str(ledger), "protocol": protocol, "scenario": scenario,
                                          "seeds": seeds, "units": len(records), "summary": summary})
    stem.with_suffix(".md").write_text(text + "\n")
    plot(summary, protocol, scenario, stem.with_suffix(".png"))
    return text
