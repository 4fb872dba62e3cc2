"""Published protocols: presets into the config, the unit runner's ledger and report, resume, old checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import config
from engine import stamp
from experiments.continual import protocol
from experiments.continual.main import resumable_state
from experiments.continual.report import run_metrics
from family_harness import write_mnist
from modes.continual import build_config
from regularizers import TaskData
from regularizers.importance import log_likelihood, mean_per_sample
from utils import UserError

TINY = ["--cl_iters=3", "--cl_eval_every=3", "--cl_hidden=8", "--importance_samples=16"]


def configured(*argv: str):  # type: ignore[no-untyped-def]
    args = config.parse_args(["--mode=continual", *argv])
    return build_config(args, config.explicit_options(["--mode=continual", *argv]))


def test_the_default_is_van_de_ven_and_tolias_with_its_per_scenario_strengths() -> None:
    task, domain, cls = (configured(f"--scenario={s}", "--cl_strengths=published") for s in ("task", "domain", "class"))
    assert (task.iters, task.batch_size, task.lr, task.hidden, task.betas) == (2000, 128, 1e-3, [400, 400], (0.9, 0.999))
    assert task.options["ewc"]["fisher"] == "predicted" and task.protocol == "vandeven2019"
    assert [c.strengths["ewc"] for c in (task, domain, cls)] == [1e7, 1e6, 1e8]
    assert [c.strengths["online_ewc"] for c in (task, domain, cls)] == [1e8, 1e8, 1e9]
    assert [c.options["online_ewc"]["gamma"] for c in (task, domain, cls)] == [0.8, 0.7, 0.8]
    assert [c.strengths["si"] for c in (task, domain, cls)] == [50.0, 500.0, 0.5]


def test_hsu_preset_and_explicit_options_win() -> None:
    hsu = configured("--cl_protocol=hsu2018", "--scenario=domain")
    assert hsu.iters == 375 and hsu.strengths["ewc"] == 200.0 and hsu.strengths["si"] == 3000.0
    assert hsu.options["online_ewc"]["gamma"] == 1.0
    mine = configured("--cl_protocol=hsu2018", "--cl_iters=7", "--ewc_lambda=3", "--online_ewc_gamma=0.5")
    assert mine.iters == 7 and mine.strengths["ewc"] == 3.0 and mine.options["online_ewc"]["gamma"] == 0.5
    assert configured("--benchmark=seq_mnist_0-2_3-5").strengths["ewc"] == 1e8  # its one head: the class row


def test_tuned_strengths_are_the_default_where_a_scenario_was_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    import regularizers.ewc
    import regularizers.si
    from experiments.continual import tune

    monkeypatch.setattr(regularizers.si, "TUNED_STRENGTHS", {"vandeven2019": {"class": {"strength": 5.0}}})
    monkeypatch.setattr(regularizers.ewc, "ONLINE_TUNED_STRENGTHS",
                        {"vandeven2019": {"class": {"strength": 1e8, "gamma": 0.8}}})
    tuned, paper = configured("--scenario=class"), configured("--scenario=class", "--cl_strengths=published")
    assert (tuned.strengths["si"], tuned.strengths["online_ewc"], tuned.strengths["ewc"]) == (5.0, 1e8, 1e8)
    assert (paper.strengths["si"], paper.strengths["online_ewc"]) == (0.5, 1e9)
    assert configured("--scenario=task").strengths["si"] == 50.0  # not tuned there: the paper's value
    assert configured("--scenario=class", "--si_c=7").strengths["si"] == 7.0  # an option given wins
    assert configured("--cl_protocol=hsu2018", "--scenario=class").strengths["si"] == 600.0  # no tuned table for hsu
    # the committed ledgers ran the papers' strengths: a tuned one moves the default ledger to *_tuned
    assert protocol.tuned_suffix("vandeven2019", "class", ["none", "si"], TINY) == "_tuned"
    assert protocol.tuned_suffix("vandeven2019", "class", ["none", "ewc"], TINY) == ""
    assert protocol.tuned_suffix("vandeven2019", "class", ["si"], [*TINY, "--cl_strengths=published"]) == ""
    assert protocol.tuned_suffix("vandeven2019", "task", ["si"], TINY) == ""
    # the tuner's grid stays centred on the paper's value, with the paper's gamma
    assert tune.published("vandeven2019", "class", "si") == 0.5
    unit = tune.sweep_units("vandeven2019", "class", "online_ewc", ["1e+09"], 1, "data", TINY)[0]
    assert unit.kwargs["config"]["strengths"] == {"online_ewc": 1e9}


def test_a_run_of_other_strengths_is_refused_naming_the_papers_values(tmp_path: Path) -> None:
    saved = stamp("continual", {"epoch": 1, "model": {}, "records": [], "runs": {}, "current": None,
                                "config": {"protocol": "vandeven2019", "strengths": {"si": 0.5}}})
    with pytest.raises(UserError) as err:
        resumable_state(tmp_path / "latest.pt", saved, {"protocol": "vandeven2019", "strengths": {"si": 5.0},
                                                         "task_order": "fixed", "eval_split": "test"})
    assert "strengths differ" in str(err.value) and "--cl_strengths=published" in str(err.value)


def test_predicted_fisher_uses_the_models_most_likely_class() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(50, 4)
    params = list(model.parameters())
    predicted = model(x).argmax(1).detach()
    as_labels = mean_per_sample(TaskData(model, [(x, predicted)], {}), params, log_likelihood, "square", 50)
    fisher = mean_per_sample(TaskData(model, [(x, torch.zeros(50, dtype=torch.long))], {}), params, log_likelihood,
                             "square", 50, labels="predicted")
    wrong = mean_per_sample(TaskData(model, [(x, torch.zeros(50, dtype=torch.long))], {}), params, log_likelihood,
                            "square", 50)
    assert all(torch.allclose(a, b) for a, b in zip(fisher, as_labels))
    assert not all(torch.allclose(a, b) for a, b in zip(fisher, wrong))
    with pytest.raises(ValueError, match="labels must be one of"):
        mean_per_sample(TaskData(model, [(x, predicted)], {}), params, log_likelihood, "square", 50, labels="true")


def test_a_tiny_protocol_end_to_end_and_its_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_mnist(data / "mnist")
    ledger, out = tmp_path / "out" / "p_task.jsonl", tmp_path / "out"
    argv = ["--scenario=task", "--strategies=none,ewc", "--seeds=2", f"--data_dir={data}", f"--ledger={ledger}",
            f"--out={out}", "--", *TINY]
    assert protocol.main(argv) == 0
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["key"] for e in lines] == ["task/none/s0", "task/ewc/s0", "task/none/s1", "task/ewc/s1"]  # seed-major
    ewc = lines[1]["kwargs"]["config"]
    assert ewc["strengths"] == {"ewc": 1e7} and ewc["iters"] == 3 and ewc["options"]["ewc"]["fisher"] == "predicted"
    record = lines[1]["record"]
    assert len(record["R"]) == 5 and len(record["R"][0]) == 5
    assert record["metrics"]["average_accuracy"] == pytest.approx(float(np.mean(record["R"][-1])))
    assert record["metrics"] == run_metrics(record["R"], record["curve"])
    assert lines[0]["record"]["curve"][0]["step"] == 3  # same batches and weights: the paired design's first eval
    summary = json.loads((out / "p_task.json").read_text())
    assert summary["seeds"] == [12345, 12346] and set(summary["summary"]) == {"none", "ewc"}
    mean = summary["summary"]["ewc"]["average_accuracy"]["mean"]
    assert mean == pytest.approx(np.mean([e["record"]["metrics"]["average_accuracy"] for e in lines[1::2]]))
    table = (out / "p_task.md").read_text()
    assert "| ewc |" in table and "98.64 ± 0.22 [98.18, 99.10]" in table and "(recalled)" in table
    assert (out / "p_task.png").stat().st_size > 0

    calls: list[str] = []
    real = protocol.run_unit
    monkeypatch.setattr(protocol, "run_unit", lambda **kw: calls.append(kw["config"]["strategies"][0]) or real(**kw))
    assert protocol.main(argv) == 0 and calls == []  # every unit is in the ledger: nothing runs again
    ledger.write_text("\n".join(ledger.read_text().splitlines()[:3]) + "\n")
    assert protocol.main(argv) == 0 and calls == ["ewc"]  # only the missing unit
    assert protocol.main([*argv[:-len(TINY)], "--cl_iters=4", *TINY[1:]]) == 2  # other settings: refused


def test_a_report_uses_only_seeds_every_strategy_finished(tmp_path: Path) -> None:
    def entry(strategy: str, seed: int, acc: float) -> dict:
        R = [[acc, acc], [acc, acc]]
        curve = [{"step": t + 1, "task": t, "accuracy": [acc, acc], "loss": [1.0, 1.0]} for t in range(2)]
        return {"key": f"task/{strategy}/{seed}", "kwargs": {}, "record": {"strategy": strategy, "seed": seed,
                "scenario": "task", "R": R, "curve": curve, "seconds": 1.0}}

    ledger = tmp_path / "l.jsonl"
    rows = [entry("none", 1, 0.5), entry("ewc", 1, 0.9), entry("none", 2, 0.7)]  # seed 2 of ewc not finished
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from experiments.continual.published import report

    text = report(ledger, tmp_path, "vandeven2019")
    assert "1 paired seeds" in text and "| none | 50.00 ± 0.00 |" in text and "Every unit ran with" not in text
    text = report(ledger, tmp_path, "vandeven2019", ["--lambda_fisher=0.01"])
    assert text.endswith("Every unit ran with `--lambda_fisher=0.01` added to the protocol's options.")
    assert (tmp_path / "l.md").read_text() == text + "\n"


def test_a_published_figure_becomes_the_t_interval_of_its_mean() -> None:
    from analysis.stats import reported_ci
    from experiments.continual.published import published_cell

    sem = reported_ci(99.12, 0.11, 20, spread_is_sem=True)  # t(0.975, 19) = 2.0930 times the SEM
    assert sem["hi"] - 99.12 == pytest.approx(2.093024 * 0.11, abs=1e-6) and sem["n"] == 20
    std = reported_ci(99.22, 0.21, 10, spread_is_sem=False)  # t(0.975, 9) = 2.2622 times std / sqrt(10)
    assert 99.22 - std["lo"] == pytest.approx(2.262157 * 0.21 / np.sqrt(10), abs=1e-6)
    with pytest.raises(ValueError, match="two runs"):
        reported_ci(1.0, 0.1, 1, spread_is_sem=True)
    # van de Ven & Tolias's online EWC, 99.12 [98.89, 99.35]: an interval above it is apart, one across it is not
    assert published_cell("vandeven2019", "task", "online_ewc", {"lo": 0.9938, "hi": 0.9978}).endswith("apart")
    assert "apart" not in published_cell("vandeven2019", "task", "online_ewc", {"lo": 0.9930, "hi": 0.9978})
    assert published_cell("vandeven2019", "task", "mas") == "–"


def test_a_checkpoint_from_before_the_protocols_is_refused_in_one_line(tmp_path: Path) -> None:
    old = stamp("continual", {"epoch": 1, "model": {}, "config": {"benchmark": "split_mnist", "iters": 2000},
                              "records": [], "runs": {}, "current": None})
    with pytest.raises(UserError) as err:
        resumable_state(tmp_path / "latest.pt", old, {"benchmark": "split_mnist", "protocol": "vandeven2019"})
    assert "before --cl_protocol" in str(err.value) and "\n" not in str(err.value)


def test_the_log_says_where_each_strength_came_from() -> None:
    from modes.continual import resolved_values, strength_sources

    args = config.parse_args(["--mode=continual", "--scenario=class", "--strategies=none,si,mas", "--mas_lambda=3"])
    line = strength_sources(args, resolved_values(args))
    assert line == "strengths (vandeven2019, class scenario): si 0.5 (tuned on validation); mas 3 (--mas_lambda)"
    args = config.parse_args(["--mode=continual", "--scenario=task", "--strategies=ewc", "--cl_strengths=published"])
    assert strength_sources(args, resolved_values(args)).endswith("ewc 1e+07 (untuned: the protocol's table)")


def test_a_reports_strengths_line_tells_the_papers_the_tuned_and_an_options_value_apart() -> None:
    from experiments.continual.published import strengths_line

    def ran(**strengths: float) -> list[dict]:
        return [{"kwargs": {"config": {"strengths": {name: value}}}} for name, value in strengths.items()]

    line = strengths_line(ran(si=5000.0, ewc=1e6, wpl=1e10), "vandeven2019", "domain")
    assert line.endswith("ewc 1e+06 (untuned); si 5000 (tuned; untuned 500); wpl 1e+10 (set by an option; untuned 100000).")
    assert strengths_line([], "vandeven2019", "task").endswith("TUNED_STRENGTHS): none.")
