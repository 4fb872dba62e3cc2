"""End to end: the paper's RNN command (shrunk) on a tiny corpus, its artefacts, modes and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import config
import generate_gif
import main
from modes.builders import build_trainer
from conftest import interrupted_copy, metrics_without_timing, paper_rnn_args
from spaces.base import Loss
from engine import NonFiniteLoss

SMALL = ["--dataset=tiny", "--max_epoch=3", "--shared_max_step=3", "--num_batch_per_iter=2", "--controller_max_step=2",
         "--start_using_fisher=0", "--start_training_controller=0", "--save_epoch=1", "--shared_embed=16",
         "--shared_hid=16", "--batch_size=4", "--test_batch_size=2", "--num_blocks=4", "--derive_num_sample=3",
         "--num_gpu=0", "--forgetting_eval_batches=2"]
TAGS = ["shared/loss", "shared/ce", "shared/wpl", "shared/ppl", "shared/lr", "wpl/alpha", "wpl/fisher_norm",
        "wpl/fisher_max", "controller/reward", "controller/entropy", "controller/baseline", "controller/adv",
        "controller/loss", "forgetting/mean_diff", "forgetting/max_diff", "forgetting/std_diff", "eval/valid_ppl"]


def run_main(*args: str) -> int:
    return main.main(list(args))


@pytest.fixture(scope="module")
def search(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    assert run_main(*paper_rnn_args(), *SMALL, f"--data_dir={data_dir}", f"--log_dir={log_dir}") == 0
    return log_dir / "tiny_rnn-train"


def test_run_leaves_every_artefact(search: Path) -> None:
    params = json.loads((search / "params.json").read_text())
    assert params["alpha_fisher"] == 60.0 and params["max_epoch"] == 3 and params["reward_c"] == 80.0
    assert "epoch" in (search / "train.log").read_text()
    assert (search / "checkpoints" / "latest.pt").is_file()
    assert sorted(p.name for p in (search / "checkpoints").glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    drawings = sorted(p.name for p in (search / "networks").glob("*.png"))
    assert "0002-derived.png" in drawings and "0002-sampled.png" in drawings
    best = json.loads((search / "best_arch.json").read_text())
    assert best["arch"]["type"] == "rnn" and len(best["arch"]["activations"]) == 4


def test_metrics_jsonl_has_one_record_per_epoch(search: Path) -> None:
    records = [json.loads(line) for line in (search / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        for key in ("shared_loss", "shared_ce", "shared_wpl", "alpha", "controller_reward", "controller_entropy",
                    "forgetting_mean_diff", "forgetting_max_diff", "forgetting_std_diff", "forgetting_mean_diff_ci95",
                    "valid_ppl", "best_arch", "elapsed_s", "wpl_ce_ratio", "fisher_norm", "fisher_max"):
            assert key in r, key
        assert r["alpha"] == 60.0
        assert r["shared_loss"] == pytest.approx(r["shared_ce"] + r["shared_wpl"], rel=1e-5)
    assert max(r["shared_wpl"] for r in records[1:]) > 0  # WPL is on from epoch 0
    assert all(r["fisher_norm"] > 0 for r in records)


def test_tensorboard_tags_read_back(search: Path) -> None:
    events = EventAccumulator(str(search), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(TAGS) <= scalars, set(TAGS) - scalars
    assert {"networks/derived", "networks/sampled"} <= set(events.Tags()["images"])
    assert len(events.Scalars("shared/loss")) == 9  # 3 epochs x 3 shared steps


def test_derive_test_and_gif(search: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (search / "best_arch.json").unlink()
    assert run_main("--mode=derive", f"--load_path={search}", "--derive_num_sample=4") == 0
    best = json.loads((search / "best_arch.json").read_text())
    assert best["metric"] == "valid_ppl" and best["score"] > 1
    assert run_main("--mode=test", f"--load_path={search}", "--test_batch_size=3") == 0
    result = json.loads((search / "test_results.json").read_text())
    assert result["arch"] == best["arch"] and 1 < result["test_ppl"] < 100
    assert "test_ppl" in capsys.readouterr().out
    gif = tmp_path / "sample.gif"
    assert generate_gif.main([f"--model_name={search.name}", f"--log_dir={search.parent}", f"--output={gif}", "--title=t"]) == 0
    import imageio.v3 as iio

    assert iio.imread(gif).shape[0] == 3  # one frame per derived drawing


def test_a_stopped_gif_writes_nothing(search: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal

    real = generate_gif.render_frames

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        frames = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once the frames are drawn, before the file is written
        return frames

    monkeypatch.setattr(generate_gif, "render_frames", interrupted)
    gif = tmp_path / "stopped.gif"
    assert generate_gif.main([f"--model_name={search.name}", f"--log_dir={search.parent}", f"--output={gif}"]) == 130
    assert capsys.readouterr().err.strip() == "stopped by SIGINT: no GIF written" and list(tmp_path.iterdir()) == []


def test_derive_never_replaces_a_better_best_arch(search: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "derived"
    shutil.copytree(search, run)
    better = {"arch": json.loads((run / "best_arch.json").read_text())["arch"], "score": 1.0, "metric": "valid_ppl"}
    (run / "best_arch.json").write_text(json.dumps(better))
    assert run_main("--mode=derive", f"--load_path={run}", "--derive_num_sample=3") == 0
    derived = json.loads((run / "derived_arch.json").read_text())
    assert json.loads((run / "best_arch.json").read_text()) == better  # a perplexity of 1 cannot be beaten
    assert derived["metric"] == "valid_ppl" and derived["score"] > 1
    out = capsys.readouterr().out
    assert f"best_arch.json kept: its valid_ppl 1.0000 is at least as good as the derived cell's {derived['score']:.4f}" in out

    (run / "best_arch.json").write_text(json.dumps({**better, "score": 1e9}))
    assert run_main("--mode=derive", f"--load_path={run}", "--derive_num_sample=3") == 0
    assert json.loads((run / "best_arch.json").read_text()) == json.loads((run / "derived_arch.json").read_text())
    assert "best_arch.json replaced: valid_ppl 1000000000.0000 ->" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--dataset=nothing_here"], "no dataset folder"),  # missing data
    (["--test_batch_size=100000"], "too few for batch size 100000"),  # a value only the loaded data refutes
])
def test_a_run_that_never_starts_leaves_nothing(data_dir: Path, tmp_path: Path, extra: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    assert run_main(*SMALL, f"--data_dir={data_dir}", f"--log_dir={logs}", *extra) == 2
    assert message in capsys.readouterr().err
    assert not logs.exists()  # no empty run directory, no empty log_dir


def test_a_refused_resume_ends_the_runs_log_with_the_error(search: Path, tmp_path: Path, data_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "tiny_again"
    shutil.copytree(search, run)
    assert run_main(*SMALL, f"--data_dir={data_dir}", f"--log_dir={tmp_path}", "--comment=again", "--resume=True",
                    "--shared_embed=32", "--shared_hid=32") == 2
    err = capsys.readouterr().err.strip()
    assert "another shape" in err
    assert (run / "train.log").read_text().splitlines()[-1].endswith(err)  # the same line, also in the log
    assert (run / "checkpoints" / "latest.pt").is_file()  # an existing run is never removed


def test_resume_equals_uninterrupted(search: Path, data_dir: Path) -> None:
    resumed = interrupted_copy(search, "tiny_resumed")
    assert run_main(*paper_rnn_args(), *SMALL, f"--data_dir={data_dir}", f"--log_dir={search.parent}",
                    "--comment=resumed", "--resume=True") == 0


    assert metrics_without_timing(resumed) == metrics_without_timing(search)


def test_existing_run_without_resume_is_refused(search: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main(*paper_rnn_args(), *SMALL, f"--data_dir={data_dir}", f"--log_dir={search.parent}")
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Traceback" not in err


def test_corrupt_checkpoint_is_a_clear_error(search: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_main("--mode=derive", f"--load_path={bad}", "--num_gpu=0") == 2
    err = capsys.readouterr().err
    assert "unreadable or corrupt" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["--mode=test"], "needs --load_path"),
    (["--mode=derive", "--load_path=/nonexistent/run"], "does not exist"),
])
def test_bad_mode_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(*argv, "--num_gpu=0") == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--dataset=nothing_here", f"--data_dir={tmp_path}", f"--log_dir={tmp_path}", "--num_gpu=0") == 2
    err = capsys.readouterr().err
    assert "no dataset folder" in err and err.count("\n") == 1


def test_offline_ptb_download_names_the_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import urllib.request

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert run_main("--dataset=ptb", f"--data_dir={tmp_path}", f"--log_dir={tmp_path}", "--num_gpu=0") == 2
    err = capsys.readouterr().err
    assert "train.txt is missing" in err and "ptb.train.txt" in err


def test_non_finite_losses_stop_the_run(data_dir: Path, tmp_path: Path) -> None:
    args = config.parse_args([*SMALL, f"--data_dir={data_dir}", f"--log_dir={tmp_path}"])
    trainer = build_trainer(args, torch.device("cpu"), None)
    nan = torch.tensor(float("nan"), requires_grad=True)
    trainer.space.train_loss = lambda arch: Loss(nan, nan, None)  # type: ignore[method-assign]
    before = [p.detach().clone() for p in trainer.space.model.parameters()]
    with pytest.raises(NonFiniteLoss, match="10 non-finite shared-step loss values in a row"):
        trainer.train()
    assert trainer.nonfinite_total == 10
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.space.model.parameters()))


def test_forgetting_mode_writes_results(search: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--mode=forgetting", f"--load_path={search}", "--forgetting_models=3", "--num_gpu=0") == 0
    results = json.loads((search / "forgetting_results.json").read_text())
    assert results["num_models"] == 3 and results["arch_source"] == "controller" and results["alpha"] == 60.0
    assert results["noise_floor"]["max_abs"] == 0.0
    assert set(results["variants"]) == {"none", "compound", "loss"}
    hashes = {(v["start_weights_sha1"], v["batches_sha1"]) for v in results["variants"].values()}
    assert len(hashes) == 1
    for v in results["variants"].values():
        assert len(v["err1"]) == len(v["err2"]) == len(v["diff"]) == 3
        assert v["diff"] == pytest.approx([b - a for a, b in zip(v["err1"], v["err2"])])
        lo, hi = v["mean_diff_ci95"]
        assert lo <= v["mean_diff"] <= hi
        assert "paired_vs_none" in v and v["final_mean_error"] > 0
    assert results["variants"]["none"]["wpl_ce_ratio"] == 0 < results["variants"]["loss"]["wpl_ce_ratio"]
    assert (search / "forgetting.png").stat().st_size > 1000
    assert "| compound |" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["paper", "enas"])
def test_paper_command_runs_with_either_preset(preset: str, data_dir: Path, tmp_path: Path) -> None:
    small = [a for a in SMALL if not a.startswith("--max_epoch")] + ["--max_epoch=1", "--use_tensorboard=False"]
    assert run_main(*paper_rnn_args(), *small, f"--preset={preset}", f"--data_dir={data_dir}", f"--log_dir={tmp_path}") == 0
    run = tmp_path / "tiny_rnn-train"
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    has_norm = any(k.startswith("output_norm.") for k in state["model"])
    assert has_norm == (preset == "paper") and ("b_x0" in state["model"]) == (preset == "paper")
    assert state["config"]["shared_wdrop_scope"] == ("node0" if preset == "paper" else "all")
    assert json.loads((run / "params.json").read_text())["preset"] == preset
