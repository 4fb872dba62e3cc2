"""experiments.continual.importance_scale: each strategy's pull after the first task, on one shared scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.continual import importance_scale
from family_harness import write_mnist
from test_continual_valid_split import TINY


def test_the_trace_is_the_penalty_scale_times_the_summed_importance_and_matches_ewc(tmp_path: Path,
                                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_mnist(data / "mnist")
    argv = ["--strategies=ewc,si,mas,wpl", f"--data_dir={data}", f"--out={out}", "--", *TINY]
    assert importance_scale.main(argv) == 0
    found = json.loads((out / "importance_scale_task.json").read_text())
    rows = {r["strategy"]: r for r in found["rows"]}
    assert found["seed"] == 12345 and found["extra"] == TINY
    assert rows["ewc"]["strength"] == 1e7 and rows["wpl"]["strength"] == 1e5  # the protocol's task values
    assert rows["si"]["penalty_scale"] == 2 * rows["si"]["strength"]  # SI and MAS write c * sum, EWC and WPL s/2 * sum
    assert rows["mas"]["penalty_scale"] == 2 * rows["mas"]["strength"] and rows["wpl"]["penalty_scale"] == 1e5
    for r in rows.values():
        assert r["importance_sum"] > 0 and r["importance_max"] <= r["importance_sum"]
        assert r["trace"] == pytest.approx(r["penalty_scale"] * r["importance_sum"])
        # the strength that gives EWC's trace: strength * trace(ewc) / trace(it)
        assert r["strength_matching_reference"] * r["trace"] / r["strength"] == pytest.approx(rows["ewc"]["trace"])
    assert rows["ewc"]["strength_matching_reference"] == pytest.approx(1e7)
    assert "| wpl | 1e+05 |" in capsys.readouterr().out
    assert importance_scale.main(argv) == 0  # the same seed, the same batches: the same importances
    assert json.loads((out / "importance_scale_task.json").read_text())["rows"] == found["rows"]


def test_a_strategy_without_importance_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_mnist(tmp_path / "mnist")
    assert importance_scale.main(["--strategies=none", f"--data_dir={tmp_path}", f"--out={tmp_path}", "--", *TINY]) == 2
    assert capsys.readouterr().err.strip() == "error: --strategies=none has no importance to measure"
