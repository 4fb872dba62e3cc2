"""NAO vs NAO + WPL (issue 26, item 5): a tiny protocol through main.py, resume after a kill, the paired design,
bad options in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import main
from experiments.nao_wpl import options, protocol, report
from experiments.nao_wpl.run import build
from experiments.workers import read_ledger

TINY = ["--mode=nao_wpl", "--nao_wpl_size=tiny", "--dataset=tiny", "--workers=1", "--nao_wpl_seeds=2",
        "--nao_wpl_dropouts=0,0.5", "--num_gpu=0"]


def run(logs: Path, data_dir: Path, *extra: str) -> int:
    """main.py's exit status (a value refused while parsing exits through argparse)."""
    try:
        return main.main([*TINY, f"--data_dir={data_dir}", f"--log_dir={logs}", *extra])
    except SystemExit as stop:
        return int(stop.code or 0)


def untimed(runs: dict) -> dict:
    """Every unit's epochs without their timings (``train_s``, ``eval_s``)."""
    return {d: {v: {s: [{k: x for k, x in e.items() if not k.endswith("_s")} for e in epochs]
                    for s, epochs in seeds.items()} for v, seeds in variants.items()} for d, variants in runs.items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    logs = tmp_path_factory.mktemp("nao_wpl")
    assert run(logs, data_dir, "--comment=a") == 0
    return logs / "nao_wpl_a"


def test_the_option_table_names_the_protocol_sizes() -> None:
    assert set(options.SIZES) == set(protocol.SIZES)


def test_a_tiny_protocol_writes_its_ledger_results_table_and_picture(tiny_run: Path) -> None:
    ledger = read_ledger(tiny_run / "units.jsonl")
    assert sorted(ledger) == sorted(f"{v}/d{d}/s{s}" for v in ("nao", "nao_wpl") for d in ("0", "0.5")
                                    for s in (12345, 12346))
    results = json.loads((tiny_run / "nao_wpl_results.json").read_text())
    for dropout in ("0", "0.5"):
        entry = results["dropouts"][dropout]
        assert entry["pairs"] == [12345, 12346] and entry["paper_final_ppl"]["nao"] > entry["paper_final_ppl"]["nao_wpl"]
        for variant in ("nao", "nao_wpl"):
            per_epoch = entry["variants"][variant]["per_epoch"]
            assert len(per_epoch) == 2 and per_epoch[-1]["valid_ppl"]["n"] == 2
        # the paired difference is the stats module's, on the units' last-epoch perplexities
        last = {v: [ledger[f"{v}/d{dropout}/s{s}"]["record"]["epochs"][-1]["valid_ppl"] for s in (12345, 12346)]
                for v in ("nao", "nao_wpl")}
        expected = sum(a - b for a, b in zip(last["nao_wpl"], last["nao"])) / 2
        assert entry["paired"]["valid_ppl"]["mean"] == pytest.approx(expected)
    record = ledger["nao_wpl/d0.5/s12345"]["record"]["epochs"][-1]
    assert record["valid_ppl"] > 1 and "forgetting_mean_diff" in record and "best_arch" in record
    assert "WPL - NAO" in (tiny_run / "nao_wpl.md").read_text()
    assert (tiny_run / "nao_wpl.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_is_refused_without_resume_and_a_resume_after_a_kill_skips_finished_units(
        tiny_run: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tiny_run.parent
    assert run(logs, data_dir, "--comment=a") == 2
    assert "pass --resume=True" in capsys.readouterr().err
    killed = logs / "nao_wpl_killed"
    shutil.copytree(tiny_run, killed)  # as a kill -9 would leave it: 3 of 8 units and a torn line
    lines = (killed / "units.jsonl").read_text().splitlines()
    (killed / "units.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    for name in ("nao_wpl_results.json", "nao_wpl.md", "nao_wpl.png"):
        (killed / name).unlink()
    assert run(logs, data_dir, "--comment=killed", "--resume=True") == 0
    after = (killed / "units.jsonl").read_text().splitlines()
    assert after[:3] == lines[:3] and len(after) == 8  # the finished units were kept, not run again
    whole = json.loads((tiny_run / "nao_wpl_results.json").read_text())
    resumed = json.loads((killed / "nao_wpl_results.json").read_text())
    assert untimed(resumed["runs"]) == untimed(whole["runs"])  # a unit's record does not depend on when it ran
    assert run(logs, data_dir, "--comment=killed", "--resume=True", "--shared_lr=10") == 2
    assert "was started with other options" in capsys.readouterr().err
    assert run(logs, data_dir, "--comment=killed", "--resume=True", "--nao_wpl_dropouts=0,0.5,0.25") == 0
    added = [json.loads(line)["key"] for line in (killed / "units.jsonl").read_text().splitlines()[8:]]
    assert sorted(added) == sorted(f"{v}/d0.25/s{s}" for v in ("nao", "nao_wpl") for s in (12345, 12346))


def test_both_variants_of_a_seed_start_from_the_same_weights_and_pool(data_dir: Path) -> None:
    opts = {**protocol.SIZES["tiny"], "dataset": "tiny", "data_dir": str(data_dir), "shared_lr": 20.0}
    plain, wpl, other = build("nao", 0.5, 7, opts), build("nao_wpl", 0.5, 7, opts), build("nao", 0.5, 8, opts)
    assert plain.reg is None and wpl.reg is not None and wpl.reg.cfg.alpha_fisher > 0  # type: ignore[attr-defined]
    a, b, c = (t.space.model.state_dict() for t in (plain, wpl, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # another seed, other weights
    assert plain.sampler.pool == wpl.sampler.pool  # type: ignore[attr-defined]


@pytest.mark.parametrize("flag, message", [
    ("--nao_wpl_dropouts=0,1.5", "not an output dropout in [0, 1)"),
    ("--nao_wpl_dropouts=0,x", "not an output dropout in [0, 1)"),
    ("--nao_wpl_dropouts=0.5,0.5", "a dropout is repeated"),
    ("--nao_wpl_seeds=1", "needs at least 2 seeds"),
    ("--nao_wpl_seeds=0", "--nao_wpl_seeds"),
    ("--nao_wpl_size=huge", "--nao_wpl_size"),
])
def test_bad_option_values_are_one_clear_line(tmp_path: Path, data_dir: Path, flag: str, message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, data_dir, "--comment=bad", flag) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nao_wpl_bad").exists()


def test_the_options_are_refused_by_other_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--mode=train", "--nao_wpl_seeds=3", f"--log_dir={tmp_path}"]) == 2
    assert "--mode=train does not read --nao_wpl_seeds" in capsys.readouterr().err


def test_a_diverged_seed_is_left_out_of_the_paired_figures_and_counted() -> None:
    def unit(variant: str, seed: int, last: float | None) -> dict:
        epochs = [{"epoch": 0, "valid_ppl": 900.0, "forgetting_mean_diff": 0.1},
                  {"epoch": 1, "valid_ppl": last, "forgetting_mean_diff": 0.2 if last else None}]
        if last is None:
            epochs[1]["diverged"] = True
        return {"variant": variant, "dropout": 0.0, "seed": seed, "epochs": epochs}

    records = [unit("nao", s, 800.0 + s) for s in (1, 2, 3)] + [unit("nao_wpl", 1, 700.0), unit("nao_wpl", 2, None),
                                                                 unit("nao_wpl", 3, 650.0)]
    entry = report.summarise(records, [0.0], wpl_from=1)["dropouts"]["0"]
    assert entry["pairs"] == [1, 3] and entry["pairs_left_out"] == [2]
    assert entry["paired"]["valid_ppl"]["mean"] == pytest.approx(((700 - 801) + (650 - 803)) / 2)
    assert entry["variants"]["nao_wpl"]["diverged"] == [2]
    assert "dropout 0: [2]" in report.markdown({"dropouts": {"0": entry}})


@pytest.mark.parametrize("size", sorted(protocol.SIZES))
def test_every_size_names_only_existing_options_and_a_valid_pool(size: str) -> None:
    import config
    from samplers.nao import NAOConfig, check_config
    from spaces.base import pick
    from experiments.search_unit import unit_args

    known = set(vars(config.build_parser().parse_args([])))
    table = protocol.SIZES[size]
    assert set(table) - known == set(protocol.PROTOCOL_KEYS) & set(table)
    args = unit_args({k: v for k, v in table.items() if k not in protocol.PROTOCOL_KEYS}, 1, network_type="rnn")
    check_config(pick(NAOConfig, args))
    assert table["alpha_fisher"] > 0 and table["num_batch_per_iter"] >= 2  # WPL's penalty needs a second batch
