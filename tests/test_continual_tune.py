"""experiments.continual.tune: per-scenario strength sweeps on the validation split, resumable, with a chosen value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.continual import tune
from family_harness import write_mnist
from test_continual_valid_split import TINY


def test_the_grid_is_log_even_around_the_published_value_and_one_spelling_per_strength() -> None:
    assert tune.grid(50.0, 2, 5) == ["0.5", "5", "50", "500", "5000"]
    assert tune.grid(1e7, 1, 3) == ["1e+06", "1e+07", "1e+08"]
    assert tune.grid(0.5, 0, 1) == ["0.5"]
    with pytest.raises(ValueError, match="positive centre"):
        tune.grid(0.0, 2, 5)
    assert tune.strength_option("si") == "si_c" and tune.strength_option("online_ewc") == "online_ewc_lambda"
    with pytest.raises(ValueError, match="declares no strength"):
        tune.strength_option("none")


def test_units_carry_the_strength_and_the_validation_split(tmp_path: Path) -> None:
    units = tune.sweep_units("vandeven2019", "domain", "online_ewc", ["1e+07", "1e+08"], 2, str(tmp_path), TINY)
    assert [u.key for u in units] == ["domain/online_ewc/1e+07/s0", "domain/online_ewc/1e+08/s0",
                                      "domain/online_ewc/1e+07/s1", "domain/online_ewc/1e+08/s1"]  # seed-major
    first = units[0].kwargs
    assert first["eval_split"] == "valid" and first["valid_fraction"] == 0.1
    assert first["config"]["strengths"] == {"online_ewc": 1e7}
    assert first["config"]["options"]["online_ewc"]["gamma"] == 0.7  # the protocol's domain gamma is kept
    assert units[2].kwargs["config"]["first_seed"] == 12346 and units[1].kwargs["config"]["first_seed"] == 12345
    forced = tune.sweep_units("vandeven2019", "task", "si", ["50"], 1, str(tmp_path), ["--cl_eval_split=test"])
    assert forced[0].kwargs["eval_split"] == "valid"  # never the test split, whatever follows --


def test_online_ewcs_decay_is_a_sweep_of_its_own_with_the_strength_at_the_papers() -> None:
    assert tune.strength_option("online_ewc.gamma") == "online_ewc_gamma"
    assert tune.published("vandeven2019", "domain", "online_ewc.gamma") == 0.7
    assert tune.sweep_grid("online_ewc.gamma", "0.7", 2, 5) == ["0.5", "0.7", "0.8", "0.9", "1"]
    assert tune.sweep_grid("online_ewc.gamma", "0.75", 2, 5) == ["0.5", "0.7", "0.75", "0.8", "0.9", "1"]  # the paper's joins
    assert tune.sweep_grid("si", "50", 1, 3) == ["5", "50", "500"]
    units = tune.sweep_units("vandeven2019", "domain", "online_ewc.gamma", ["0.5", "1"], 1, "data", TINY)
    assert [u.key for u in units] == ["domain/online_ewc.gamma/0.5/s0", "domain/online_ewc.gamma/1/s0"]
    config = units[1].kwargs["config"]
    assert config["strengths"] == {"online_ewc": 1e8} and config["options"]["online_ewc"]["gamma"] == 1.0
    with pytest.raises(ValueError, match="no tunable value"):
        tune.strength_option("si.xi")


def test_summary_chooses_the_best_mean_over_complete_seeds_and_pairs_it_with_the_published_value() -> None:
    acc = {("0.5", 0): 0.90, ("5", 0): 0.95, ("50", 0): 0.93, ("0.5", 1): 0.91, ("5", 1): 0.96, ("50", 1): 0.95,
           ("0.5", 2): 0.80}  # seed 2 has not finished the grid: left out of every column
    ledger = {f"task/si/{v}/s{k}": {"record": {"metrics": {"average_accuracy": a, "forgetting": 1 - a}}}
              for (v, k), a in acc.items()}
    found = tune.summary(ledger, {("task", "si"): ["0.5", "5", "50"]}, {("task", "si"): "50"})["task/si"]
    assert found["seeds"] == 2 and found["best"] == "5" and found["published"] == "50"
    assert found["chosen"] == "50"  # the best's interval below reaches under zero: no measured gain, the paper's kept
    versus = found["best_vs_published"]  # in points, paired t by hand: differences 2 and 1, mean 1.5, sd 0.7071, t(1) 12.706
    assert versus["mean"] == pytest.approx(1.5)
    assert versus["hi"] - versus["mean"] == pytest.approx(12.7062 * 0.70711 / np.sqrt(2), rel=1e-4)
    rows = {r["name"]: r for r in found["sweep"]["rows"]}
    assert rows["strength=5"]["mean"] == pytest.approx(95.5) and rows["strength=0.5"]["n"] == 2
    tied = {k: {"record": {"metrics": {"average_accuracy": 0.9, "forgetting": 0.1}}} for k in ledger}
    assert tune.summary(tied, {("task", "si"): ["0.5", "5", "50"]}, {("task", "si"): "50"})["task/si"]["best"] == "50"
    steady = {(v, k): a for k, (low, best, paper) in enumerate([(0.90, 0.95, 0.93), (0.90, 0.96, 0.95), (0.90, 0.965, 0.95)])
              for v, a in (("0.5", low), ("5", best), ("50", paper))}  # 5 beats 50 by 2, 1 and 1.5 points
    gain = tune.summary({f"task/si/{v}/s{k}": {"record": {"metrics": {"average_accuracy": a, "forgetting": 1 - a}}}
                         for (v, k), a in steady.items()}, {("task", "si"): ["0.5", "5", "50"]}, {("task", "si"): "50"})
    # mean 1.5, sd 0.5, t(2) 4.303: [1.5 - 1.242, 1.5 + 1.242] lies above zero, so the best is chosen
    assert gain["task/si"]["best_vs_published"]["lo"] == pytest.approx(1.5 - 4.3027 * 0.5 / np.sqrt(3), rel=1e-4)
    assert gain["task/si"]["chosen"] == "5"
    empty = tune.summary({}, {("task", "si"): ["5", "50"]}, {("task", "si"): "50"})["task/si"]
    assert empty["seeds"] == 0 and empty["chosen"] is None and empty["sweep"] is None
    assert "| task | si | si_c=50 | - |" in tune.markdown({"task/si": empty}, "vandeven2019")
    text = tune.markdown(tune.summary(ledger, {("task", "si"): ["5", "50"]}, {("task", "si"): "50"}), "vandeven2019")
    assert "| task | si | si_c=50 | 5 (grid edge) |" in text and text.count("| 50 | 2 (P(best)") == 1  # the best may lie beyond the grid


def test_a_tiny_tuning_run_end_to_end_resumes_and_reports(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_mnist(data / "mnist")
    argv = ["--scenarios=class", "--strategies=si", "--decades=1", "--points=3", "--seeds=2", f"--data_dir={data}",
            f"--out={out}", "--", *TINY]
    assert tune.main(argv) == 0
    ledger = out / "tune_vandeven2019.jsonl"
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["key"] for e in lines] == [f"class/si/{v}/s{k}" for k in (0, 1) for v in ("0.05", "0.5", "5")]
    assert all(e["kwargs"]["eval_split"] == "valid" and e["record"]["eval_split"] == "valid" for e in lines)
    assert all("curve" not in e["record"] and len(e["record"]["R"]) == len(e["record"]["tasks"]) for e in lines)  # metrics and R only
    assert all(np.isfinite(e["record"]["metrics"]["integrated_loss"]) for e in lines)  # computed from the curve
    report = json.loads((out / "tune_vandeven2019.json").read_text())["class/si"]
    accs = {v: np.mean([100 * e["record"]["metrics"]["average_accuracy"] for e in lines if f"/{v}/" in e["key"]])
            for v in ("0.05", "0.5", "5")}
    assert report["seeds"] == 2 and accs[report["best"]] == pytest.approx(max(accs.values()))
    assert report["chosen"] in (report["best"], "0.5")
    assert "| class | si | si_c=0.5 |" in (out / "tune_vandeven2019.md").read_text()
    assert f"Every unit ran with `{' '.join(TINY)}` added" in (out / "tune_vandeven2019.md").read_text()
    with Image.open(out / "tune_vandeven2019.png") as picture:
        assert picture.size[0] > 300

    kept = ledger.read_text().splitlines()[:5]
    ledger.write_text("\n".join(kept) + "\n")  # as if killed during the last unit
    assert tune.main(argv) == 0
    again = ledger.read_text().splitlines()
    assert again[:5] == kept and json.loads(again[5])["key"] == "class/si/5/s1"  # only the lost unit ran again
    assert json.loads(again[5])["record"]["R"] == lines[5]["record"]["R"]  # and gave the same numbers
    with pytest.raises(SystemExit) as refused:  # an even grid would leave out the published value
        tune.main([*argv[:3], "--points=4", *argv[4:]])
    assert refused.value.code == 2

    assert tune.main([*argv[:5], "--grid", "class/si=0.05,5,50", *argv[5:]]) == 0  # a grid of its own, beyond the edge
    wider = [json.loads(line)["key"] for line in ledger.read_text().splitlines()]
    assert wider[:6] == [e["key"] for e in lines] and wider[6:] == ["class/si/50/s0", "class/si/50/s1"]  # only 50 ran
    assert json.loads((out / "tune_vandeven2019.json").read_text())["class/si"]["grid"] == ["0.05", "0.5", "5", "50"]


def test_a_grid_of_its_own_is_spelt_like_the_log_grid_and_bad_specs_are_one_line() -> None:
    assert tune.grid_overrides(["task/wpl=1e9,1000,1e+11", "si=5"]) == {"task/wpl": ["1000", "1e+09", "1e+11"],
                                                                          "si": ["5"]}
    for bad in ("task/wpl", "=5", "wpl=", "wpl=1,x", "wpl=-1", "wpl=nan"):
        with pytest.raises(ValueError, match="expected"):
            tune.grid_overrides([bad])
    with pytest.raises(SystemExit) as refused:
        tune.main(["--report_only", "--scenarios=task", "--strategies=si", "--grid", "task/wpl=1e9"])
    assert refused.value.code == 2  # a sweep this run does not hold


def test_the_tuned_defaults_are_the_committed_reports_choices() -> None:
    """Every scenario in a TUNED table was swept whole and the table holds the report's chosen value."""
    from modes.continual import strategy_options, strength_table

    report = json.loads((Path(__file__).resolve().parent.parent / "results/continual/tune_vandeven2019.json").read_text())
    checked = 0
    for strategy, declared in strategy_options().items():
        if declared.strength is None or not declared.strength.tuned:
            continue
        for scenario, values in strength_table(declared.strength.tuned).get("vandeven2019", {}).items():
            for value, number in values.items():
                name = strategy if value == "strength" else f"{strategy}.{value}"
                found = report[f"{scenario}/{name}"]
                assert found["seeds"] >= 3 and float(found["chosen"]) == number, (scenario, name)
                checked += 1
    assert checked == 21  # three scenarios: six strengths and online EWC's gamma each
