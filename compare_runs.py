"""Compare run directories: the panels of the paper's ENAS figure and a table of final numbers.

    python compare_runs.py logs/ptb_wpl logs/ptb_nowpl --output report.png

Each run directory holds params.json, metrics.jsonl and possibly test_results.json, as main.py writes
them. The figure has one line per run in each panel, per epoch: the forgetting metric's mean and max
error increase, the controller reward and the validation perplexity or accuracy (a search validates
only every ``save_epoch`` epochs, a retrain every epoch). Runs are labelled by the options whose values
differ between them (e.g. ``alpha_fisher=0`` vs ``alpha_fisher=60``), leaving out names, paths and
other options that do not change what is computed. A markdown table of final numbers goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from analysis import plots
from analysis.tables import cell, markdown
from config import StrictParser
from engine.stopping import Stopped, stop_on_signals
from options.parsing import program_name
from options.safe_io import one_line_errors
from utils import UserError, load_json

PANELS = (
    ("forgetting_mean_diff", "forgetting: mean error increase"),
    ("forgetting_max_diff", "forgetting: max error increase"),
    ("controller_reward", "controller reward"),
    ("valid", "validation perplexity / accuracy (%)"),
)
# Options that name, place or report a run without changing what it computes.
IGNORED = frozenset({
    "comment", "log_dir", "data_dir", "load_path", "resume", "resume_with_new_params", "log_level", "log_step",
    "use_tensorboard", "num_gpu", "num_workers", "run_id",
})
MAX_LABEL_OPTIONS = 3


@dataclass
class Run:
    path: Path
    params: dict[str, Any]
    metrics: list[dict[str, Any]]
    test: dict[str, Any]

    @property
    def valid_key(self) -> str | None:
        """``valid_ppl`` or ``valid_acc``, whichever this run records."""
        return next((k for k in ("valid_ppl", "valid_acc") if self.series(k)[0]), None)  # numbers only

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["epoch"], r[key]) for r in self.metrics
                  if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        return [e for e, _ in points], [v for _, v in points]


def load_run(path: Path) -> Run:
    if not path.is_dir():
        raise UserError(f"run directory {path} does not exist")
    if not (path / "metrics.jsonl").is_file():
        raise UserError(f"{path} holds no metrics.jsonl: not a run directory, or no epoch has finished yet")
    for kind in ("continual", "pathnet"):
        if (path / f"{kind}_results.json").is_file() or (path.name.startswith("pathnet_") and kind == "pathnet"):
            raise UserError(f"{path} is a {kind} run: this script compares search and retrain runs (epochs); "
                            f"its results are in {kind}_results.json")
    metrics = read_metrics(path / "metrics.jsonl")
    params = load_json(path / "params.json") if (path / "params.json").is_file() else {}
    test = load_json(path / "test_results.json") if (path / "test_results.json").is_file() else {}
    for name, value in (("params.json", params), ("test_results.json", test)):
        if not isinstance(value, dict):
            raise UserError(f"{path / name} holds a JSON {type(value).__name__}, not an object")
    return Run(path, params, metrics, test)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records, each read by the safe JSON reader; a torn last line is dropped (as the runs do).

    Every record must be an object with an integer ``epoch``; figures that are not numbers are left out of
    the plots and the table (``Run.series`` keeps numbers only), never drawn as text."""
    from options.safe_io import parse_json, read_bytes

    lines = [line for line in read_bytes(path).decode("utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = parse_json(line, f"{path} line {number}")
        except UserError:
            if number == len(lines):
                continue  # a write cut short
            raise
        if not isinstance(record, dict) or isinstance(record.get("epoch"), bool) or not isinstance(record.get("epoch"), int):
            raise UserError(f"{path} line {number} is not a record of one epoch (a JSON object with an integer "
                            f"\"epoch\"): not a search or retrain run's metrics")
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no complete record yet")
    return records


def _show(value: Any) -> str:
    if value == "":
        return '""'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """``key=value`` for every option whose value differs between runs (options every run records, minus
    IGNORED), at most MAX_LABEL_OPTIONS of them; the directory name is added when options were left out
    or two runs would share a label, and is the label when nothing differs."""
    common = set.intersection(*(set(r.params) for r in runs)) - IGNORED
    differing = [k for k in sorted(common) if len({json.dumps(r.params[k], sort_keys=True) for r in runs}) > 1]
    shown = differing[:MAX_LABEL_OPTIONS]
    labels = [", ".join(f"{k}={_show(r.params[k])}" for k in shown) for r in runs]
    counts = Counter(labels)
    return [label + (", ..." if len(differing) > len(shown) else "") + f" ({r.path.name})"
            if label and (counts[label] > 1 or len(differing) > len(shown)) else label or r.path.name
            for label, r in zip(labels, runs)]


def draw(runs: Sequence[Run], labels: Sequence[str], output: Path, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, axes = plots.panels(2, 2, (12, 8), constrained_layout=True)
    for ax, (key, name) in zip(axes.flat, PANELS):
        drawn = False
        for run, label in zip(runs, labels):
            series_key = run.valid_key if key == "valid" else key
            if series_key is None:
                continue
            epochs, values = run.series(series_key)
            if epochs:
                ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3, label=label)
                drawn = True
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key == "valid" and drawn and all(r.valid_key in (None, "valid_ppl") for r in runs):
            ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=8)
        else:
            plots.no_data(ax)
    if title:
        fig.suptitle(title)
    plots.save(fig, output, dpi=120, tight=False)


def table(runs: Sequence[Run], labels: Sequence[str]) -> str:
    """Last epoch's forgetting and reward, best validation, test metric and parameters, one row per run."""
    head = ["run", "epochs", "forgetting mean", "forgetting max", "controller reward", "best valid", "test", "params"]
    rows = []
    for run, label in zip(runs, labels):
        last = {k: run.series(k)[1][-1] for k in ("forgetting_mean_diff", "forgetting_max_diff", "controller_reward")
                if run.series(k)[1]}
        best = test = None
        if run.valid_key:
            values = run.series(run.valid_key)[1]
            best = f"{run.valid_key} {(min if run.valid_key == 'valid_ppl' else max)(values):.4g}"
        test_key = next((k for k in ("test_ppl", "test_acc") if isinstance(run.test.get(k), (int, float))
                         and not isinstance(run.test.get(k), bool)), None)
        if test_key:
            test = f"{test_key} {run.test[test_key]:.4g}"
        epochs = max((r["epoch"] for r in run.metrics), default=-1) + 1
        rows.append([label, epochs, last.get("forgetting_mean_diff"), last.get("forgetting_max_diff"),
                     last.get("controller_reward"), best, test, run.test.get("params")])
    return markdown(head, [[cell(v) for v in row] for row in rows])


def build_parser() -> StrictParser:
    p = StrictParser(prog=program_name("compare_runs.py"), description=__doc__.splitlines()[0], allow_abbrev=False,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (<log_dir>/<dataset>_<comment>)")
    p.add_argument("--output", type=Path, default=Path("report.png"), help="PNG file to write")
    p.add_argument("--title", type=str, default="", help="figure title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # an unwritable --output, a name too long, a bad file: one line
        with stop_on_signals(), one_line_errors():
            if args.output.suffix.lower() != ".png":
                raise UserError(f"--output={args.output}: expected a .png file")
            runs = [load_run(path) for path in args.runs]
            labels = run_labels(runs)
            draw(runs, labels, args.output, args.title)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:  # the picture is renamed into place whole (analysis.plots.save): none half-written
        print(f"stopped by {stop.name}: no picture written", file=sys.stderr)
        return stop.exit_code
    print(table(runs, labels))
    print(f"written: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
