"""The EWC lambda study: paired tables from the ledger, the statistics against hand computation, a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from experiments.continual import protocol
from experiments.continual import ewc_lambda as study
from family_harness import write_mnist

TINY = ["--cl_iters=3", "--cl_eval_every=3", "--cl_hidden=8", "--importance_samples=16"]


def entry(loss: float, acc: float = 0.5) -> dict[str, Any]:
    return {"record": {"metrics": {"integrated_loss": loss, "average_accuracy": acc, "forgetting": 1 - acc}}}


def test_lambdas_have_one_spelling_and_must_be_usable() -> None:
    assert [study.canonical(x) for x in ("0", "1e4", "10000", "2.5e-3")] == ["0", "10000", "10000", "0.0025"]
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError):
            study.canonical(bad)


def test_only_seeds_every_lambda_finished_are_paired() -> None:
    ledger = {"lambda/0/s0": entry(3.0), "lambda/1/s0": entry(2.0), "lambda/0/s1": entry(5.0),
              "lambda/1/s1": entry(3.0), "lambda/0/s2": entry(9.0)}  # seed 2 lacks lambda 1
    assert study.table(ledger, ["0", "1"], "integrated_loss") == {"0": [3.0, 5.0], "1": [2.0, 3.0]}


def test_the_statistics_match_hand_computation() -> None:
    # integrated loss at three paired seeds; lambda 1 is lambda 0 minus 1, 2, 3 (mean -2, sd 1)
    losses = {"0": [4.0, 6.0, 8.0], "1": [3.0, 4.0, 5.0], "10": [3.0, 4.0, 5.0]}
    ledger = {f"lambda/{lam}/s{k}": entry(v, acc=0.1 * k) for lam, vs in losses.items() for k, v in enumerate(vs)}
    found = study.summary(ledger, ["0", "1", "10"])
    assert found["seeds"] == 3
    t975 = 4.302652729911275  # t quantile, 2 degrees of freedom
    t80 = 1.0606601717798212  # t quantile at 0.8, 2 degrees of freedom
    step, flat = found["neighbours"]["steps"]
    assert (step["lower"], step["higher"]) == ("0", "1")
    assert step["mean"] == pytest.approx(-2.0)
    assert step["hi"] - step["mean"] == pytest.approx(t975 * 1 / math.sqrt(3))
    assert flat["mean"] == 0.0 and flat["lo"] == flat["hi"] == 0.0  # identical paired values: no spread
    # the steps' differences (-1, -2, -3) and (0, 0, 0): pooled variance (2 + 0) / 4
    assert found["neighbours"]["difference_sd"] == pytest.approx(math.sqrt(0.5))
    assert found["neighbours"]["detectable_effect"] == pytest.approx((t975 + t80) * math.sqrt(0.5) / math.sqrt(3))
    sweep = found["sweep"]
    # pooled SD at one lambda: variances 4, 1, 1 with 2 degrees of freedom each
    assert sweep["noise_floor"] == pytest.approx(math.sqrt((4 + 1 + 1) / 3))
    # paired differences to lambda 0: (-1, -2, -3) twice, sd 1 both times
    assert sweep["paired_difference_sd"] == pytest.approx(1.0)
    assert sweep["detectable_effect"] == pytest.approx((t975 + t80) / math.sqrt(3))
    rows = {r["name"]: r for r in sweep["rows"]}
    assert rows["ewc_lambda=0"]["mean"] == pytest.approx(6.0)
    assert rows["ewc_lambda=1"]["extras"]["average_accuracy"]["mean"] == pytest.approx(0.1)
    assert sweep["best"] in ("ewc_lambda=1", "ewc_lambda=10")


def test_a_tiny_study_end_to_end_paired_and_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_mnist(data / "mnist")
    out = tmp_path / "out"
    argv = ["--lambdas=0,1e3", "--seeds=2", f"--data_dir={data}", f"--out={out}", "--", *TINY]
    assert study.main(argv) == 0
    lines = [json.loads(line) for line in (out / "ewc_lambda.jsonl").read_text().splitlines()]
    assert [e["key"] for e in lines] == ["lambda/0/s0", "lambda/1000/s0", "lambda/0/s1", "lambda/1000/s1"]
    assert [e["kwargs"]["config"]["strengths"] for e in lines[:2]] == [{"ewc": 0.0}, {"ewc": 1000.0}]
    assert lines[0]["kwargs"]["benchmark"] == "seq_mnist_0-2_3-5"
    # the first task has no anchor yet, so a seed's curve over it is the same whatever lambda is
    first = [[c for c in e["record"]["curve"] if c["task"] == 0] for e in lines[:2]]
    assert first[0] == first[1]
    assert lines[0]["record"]["curve"] != lines[2]["record"]["curve"]  # another seed: other weights and batches
    found = json.loads((out / "ewc_lambda.json").read_text())
    assert found["values"]["1000"] == [lines[1]["record"]["metrics"]["integrated_loss"],
                                       lines[3]["record"]["metrics"]["integrated_loss"]]
    assert "| 0 → 1000 |" in (out / "ewc_lambda.md").read_text() and (out / "ewc_lambda.png").stat().st_size > 0

    calls: list[float] = []
    real = protocol.run_unit
    monkeypatch.setattr(protocol, "run_unit", lambda **kw: calls.append(kw["config"]["strengths"]["ewc"]) or real(**kw))
    assert study.main(argv) == 0 and calls == []  # every unit is in the ledger: nothing runs again
    ledger = out / "ewc_lambda.jsonl"
    ledger.write_text("\n".join(ledger.read_text().splitlines()[:3]) + "\n")
    assert study.main(argv) == 0 and calls == [1000.0]  # only the missing unit
