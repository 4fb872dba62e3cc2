"""compare_runs.py on two small fake search runs and a retrain run: the PNG, the labels and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import compare_runs
import config


def write_run(folder: Path, params: dict, records: list[dict], test: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if test is not None:
        (folder / "test_results.json").write_text(json.dumps(test))
    return folder


def search_records(forgetting: float) -> list[dict]:
    """Per-epoch records with the keys trainer.Trainer writes; validation only every second epoch."""
    records = []
    for epoch in range(4):
        record = {"epoch": epoch, "forgetting_mean_diff": forgetting / (epoch + 1), "forgetting_max_diff": 2 * forgetting,
                  "controller_reward": 0.5 + 0.1 * epoch, "shared_ce": 5.0, "elapsed_s": 10.0 * epoch}
        if epoch % 2:
            record["valid_ppl"] = 400.0 - 50 * epoch
        records.append(record)
    return records


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    base = vars(config.parse_args([]))
    wpl = write_run(tmp_path / "ptb_wpl", {**base, "alpha_fisher": 60.0, "comment": "wpl", "log_dir": "/a"},
                    search_records(0.5), {"test_ppl": 250.0})
    plain = write_run(tmp_path / "ptb_nowpl", {**base, "alpha_fisher": 0.0, "comment": "nowpl", "log_dir": "/b"},
                      search_records(1.5))
    return [wpl, plain]


def test_png_labels_and_table(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import imageio.v3 as iio

    output = tmp_path / "out" / "report.png"
    assert compare_runs.main([*map(str, runs), "--output", str(output)]) == 0
    image = iio.imread(output)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 600
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| run | epochs | forgetting mean") and len(table) == 4  # header, rule, two runs
    wpl, plain = table[2], table[3]
    # labelled by what differs (alpha_fisher), not by comment or log_dir
    assert wpl.startswith("| alpha_fisher=60 | 4 | 0.125 | 1 | 0.8 | valid_ppl 250 | test_ppl 250 |")
    assert plain.startswith("| alpha_fisher=0 | 4 | 0.375 | 3 | 0.8 | valid_ppl 250 | – |")
    assert "comment" not in wpl and "log_dir" not in wpl


def test_labels_fall_back_to_directory_names(runs: list[Path], tmp_path: Path) -> None:
    loaded = [compare_runs.load_run(p) for p in runs]
    assert compare_runs.run_labels(loaded) == ["alpha_fisher=60", "alpha_fisher=0"]
    twin = write_run(tmp_path / "ptb_twin", json.loads((runs[0] / "params.json").read_text()), search_records(0.5))
    labels = compare_runs.run_labels([loaded[0], compare_runs.load_run(twin)])
    assert labels == ["ptb_wpl", "ptb_twin"]  # identical configurations


def test_a_retrain_run_draws_beside_a_search(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = vars(config.parse_args(["--mode=retrain"]))
    records = [{"epoch": e, "train_loss": 5.0 - e, "valid_ppl": 300.0 - 10 * e, "averaging": False} for e in range(3)]
    retrained = write_run(tmp_path / "ptb_final", base, records, {"test_ppl": 270.0, "params": 1234})
    assert compare_runs.main([str(runs[0]), str(retrained), "--output", str(tmp_path / "r.png")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert rows[0].startswith("| alpha_fisher=60, mode=train |")
    assert rows[1] == "| alpha_fisher=1, mode=retrain | 3 | – | – | – | valid_ppl 280 | test_ppl 270 | 1234 |"
    assert (tmp_path / "r.png").is_file()


def test_missing_run_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_runs.main([str(tmp_path / "nope"), "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: run directory {tmp_path / 'nope'} does not exist\n"
    (tmp_path / "empty").mkdir()
    assert compare_runs.main([str(tmp_path / "empty")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_strict_options(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare_runs.main([str(runs[0]), "--ouput=r.png"])
    assert exit_info.value.code == 2
    assert "did you mean --output" in capsys.readouterr().err


def test_a_stop_while_drawing_keeps_the_previous_picture(runs: list[Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal

    from matplotlib.figure import Figure

    output = tmp_path / "out" / "report.png"
    output.parent.mkdir()
    output.write_bytes(b"the previous picture")
    real = Figure.savefig

    def interrupted(self, target, **kwargs):  # type: ignore[no-untyped-def]
        real(self, target, **kwargs)  # half the work done, then a scheduler's SIGTERM lands
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Figure, "savefig", interrupted)
    assert compare_runs.main([*map(str, runs), "--output", str(output)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "stopped by SIGTERM: no picture written"
    assert output.read_bytes() == b"the previous picture" and [p.name for p in output.parent.iterdir()] == ["report.png"]
