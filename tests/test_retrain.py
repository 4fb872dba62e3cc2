"""--mode=retrain on the tiny corpus (and a tiny image folder): artefacts, learning, pruned models, test
perplexity by hand, random architectures, NT-ASGD, resume and --mode=test on a retrain run."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest
import torch
from scipy.stats import chisquare
from torch.nn import functional as F

from modes import builders
import config
import main
from modes import retrain
from conftest import interrupted_copy, metrics_without_timing
from data.text import batchify, build_corpus
from models.rnn import SharedRNN
from models.rnn_arch import RNNArch
from spaces.rnn import RNNSpace, RNNSpaceConfig
from spaces.base import load_shared_weights
from recipes.arch import random_arch
from recipes.rnn import nonmono_trigger
from engine.runlog import RunDir, load_checkpoint
from utils import UserError, seed_everything

CPU = torch.device("cpu")
SMALL = ["--dataset=tiny", "--num_blocks=4", "--retrain_embed=16", "--retrain_hid=16", "--retrain_batch_size=16",
         "--test_batch_size=2", "--retrain_epochs=3", "--save_epoch=1", "--num_gpu=0", "--log_step=2"]


@pytest.fixture(scope="module", autouse=True)
def retrain_mode() -> Iterator[None]:
    """One intra-op thread: these tiny models only pay for thread synchronisation on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def args_for(*argv: str) -> argparse.Namespace:
    return config.parse_args(list(argv))


@pytest.fixture(scope="module")
def retrained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    assert main.main(["--mode=retrain", "--arch=random", *SMALL, f"--data_dir={data_dir}", f"--log_dir={log_dir}",
                      "--comment=random"]) == 0
    return log_dir / "tiny_random"


def test_run_leaves_every_artefact(retrained: Path) -> None:
    params = json.loads((retrained / "params.json").read_text())
    assert params["mode"] == "retrain" and params["retrain_epochs"] == 3
    records = [json.loads(line) for line in (retrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        for key in ("train_loss", "train_ppl", "lr", "valid_ppl", "valid_nll", "best_valid_ppl", "best_epoch", "averaging"):
            assert key in r, key
        assert r["lr"] == 20.0 and not r["averaging"]  # nonmono 5 cannot trigger within 3 epochs
    assert records[-1]["best_valid_ppl"] == min(r["valid_ppl"] for r in records)
    checkpoints = sorted(p.name for p in (retrained / "checkpoints").glob("*.pt"))
    assert checkpoints == ["best.pt", "epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt", "latest.pt"]
    assert load_checkpoint(retrained / "checkpoints" / "latest.pt", CPU)["kind"] == "retrain"
    assert any((retrained / "networks").glob("arch.*"))
    assert "retrain epoch" in (retrained / "train.log").read_text()
    result = json.loads((retrained / "test_results.json").read_text())
    assert result["epochs"] == 3 and result["weights"] == "retrained"
    assert result["valid_ppl"] == records[-1]["best_valid_ppl"] and result["best_epoch"] == records[-1]["best_epoch"]
    # parameters of the pruned cell: tied embedding/decoder, node 0's two matrices and input biases, 3 edges x
    # (W^c, W^h), the output batch norm's scale and shift, decoder bias
    ntokens, h = 42, 16
    assert result["params"] == ntokens * h + 2 * (2 * h * h) + 2 * h + 3 * 2 * h * h + 2 * h + ntokens


def test_arch_json_is_the_seeded_random_architecture(retrained: Path, data_dir: Path) -> None:
    saved = json.loads((retrained / "arch.json").read_text())
    assert saved["source"] == "random (seed 12345)"
    space, _, _ = builders.build_fixed(args_for(*SMALL, f"--data_dir={data_dir}"), saved["arch"], CPU)
    assert random_arch(space, 12345).to_dict() == saved["arch"]


def test_retraining_lowers_the_validation_loss(retrained: Path, data_dir: Path) -> None:
    """The run's best validation perplexity against the same seeded model before its first step."""
    args = args_for(*SMALL, f"--data_dir={data_dir}")
    seed_everything(args.random_seed)  # as mode_retrain does before building: the same initial weights
    space, model, arch = builders.build_fixed(args, None, CPU)
    start = space.evaluate(arch, "valid", model=model)["valid_ppl"]
    best = json.loads((retrained / "test_results.json").read_text())["valid_ppl"]
    assert start == pytest.approx(42, rel=0.05)  # untrained: about uniform over the 42 words
    assert best < 0.95 * start


def test_test_perplexity_is_exp_of_the_mean_nll_by_hand(retrained: Path, data_dir: Path) -> None:
    best = load_checkpoint(retrained / "checkpoints" / "best.pt", CPU)
    corpus = build_corpus(data_dir / "tiny")
    model = SharedRNN(corpus.ntokens, 16, 16, 4)
    arch = RNNArch.from_dict(best["arch"])
    load_shared_weights(model.prune_to(arch), best["model"])
    data = batchify(corpus.test, 2)  # --test_batch_size=2
    model.eval()
    with torch.no_grad():  # the whole split as one sequence per column, state carried through
        out = model(data[:-1], model.init_hidden(2), arch)
        nll = F.cross_entropy(out.logits.flatten(0, 1), data[1:].flatten(), reduction="sum")
    result = json.loads((retrained / "test_results.json").read_text())
    assert result["test_tokens"] == data[1:].numel()
    assert result["test_ppl"] == pytest.approx(math.exp(float(nll) / data[1:].numel()), rel=1e-5)


def test_mode_test_reevaluates_a_retrain_run(retrained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = json.loads((retrained / "test_results.json").read_text())
    (retrained / "test_results.json").unlink()
    assert retrain.is_retrain_run(str(retrained)) and retrain.is_retrain_run(str(retrained / "checkpoints" / "best.pt"))
    argv = ["--mode=test", f"--load_path={retrained}", "--num_gpu=0"]
    retrain.mode_test_retrained(args_for(*argv), config.explicit_options(argv), CPU)
    after = json.loads((retrained / "test_results.json").read_text())
    assert after["test_ppl"] == pytest.approx(before["test_ppl"], rel=1e-6) and after["params"] == before["params"]
    assert "test_ppl" in capsys.readouterr().out


def test_resume_equals_uninterrupted(retrained: Path, data_dir: Path) -> None:
    resumed = interrupted_copy(retrained, "tiny_resumed")
    assert main.main(["--mode=retrain", *SMALL, f"--data_dir={data_dir}", f"--log_dir={retrained.parent}",
                      "--comment=resumed", "--resume=True"]) == 0


    assert metrics_without_timing(resumed) == metrics_without_timing(retrained)
    test = [json.loads((run / "test_results.json").read_text())["test_ppl"] for run in (retrained, resumed)]
    assert test[0] == pytest.approx(test[1], rel=1e-6)


def test_signal_with_save_on_signal_saves_after_the_step_under_way(data_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from recipes.loop import Retrainer

    original, steps = Retrainer._log_step, []

    def signal_at_step_3(self: Retrainer, loss: torch.Tensor) -> None:
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, loss)

    command = ["--mode=retrain", "--arch=random", *SMALL, f"--data_dir={data_dir}", f"--log_dir={tmp_path}",
               "--comment=sig", "--save_on_signal=True"]
    with monkeypatch.context() as m:
        m.setattr(Retrainer, "_log_step", signal_at_step_3)
        assert main.main(command) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT: ") and "latest.pt holds epoch 0 up to step 3; a resume from it restarts" in last
    state = load_checkpoint(tmp_path / "tiny_sig" / "checkpoints" / "latest.pt", CPU)
    assert state["mid_epoch"] and (state["epoch"], state["step"], state["metrics_lines"]) == (0, 3, 0)
    assert main.main([*command, "--resume=True"]) == 0
    assert [r["epoch"] for r in metrics_without_timing(tmp_path / "tiny_sig")] == [0, 1, 2]


def test_existing_run_and_missing_architecture_are_clear_errors(retrained: Path, data_dir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    common = [*SMALL, f"--data_dir={data_dir}", f"--log_dir={retrained.parent}"]
    assert main.main(["--mode=retrain", "--arch=random", *common, "--comment=random"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main.main(["--mode=retrain", *common, "--comment=noarch"]) == 2
    err = capsys.readouterr().err
    assert "needs --arch=FILE, --arch=random or --load_path" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ unit level
def test_random_arch_is_uniform_over_choices_and_reproducible(data_dir: Path) -> None:
    space = RNNSpace(build_corpus(data_dir / "tiny"), config.defaults(RNNSpaceConfig, num_blocks=4, shared_embed=4, shared_hid=4, batch_size=4), CPU)
    assert random_arch(space, 7) == random_arch(space, 7)
    assert len({str(random_arch(space, seed)) for seed in range(20)}) > 15
    samples = torch.tensor([space.encode(random_arch(space, seed)) for seed in range(3000)])
    for position, size in enumerate(space.decision_sizes):  # each decision: counts of its choices
        counts = torch.bincount(samples[:, position], minlength=size)
        assert len(counts) == size
        if size == 1:  # node 1 can only read node 0
            continue
        assert chisquare(counts.numpy()).pvalue > 1e-3, (position, counts.tolist())


def test_nt_asgd_trigger() -> None:
    history = [50.0, 40.0, 35.0, 36.0, 37.0, 38.0, 39.0]
    assert not nonmono_trigger(history[:5], 60.0, 5)  # not enough epochs yet
    assert nonmono_trigger(history, 40.1, 5)  # worse than the best before the last 5 (40)
    assert not nonmono_trigger(history, 39.9, 5)
    assert not nonmono_trigger(history, 99.0, 0)  # 0 disables averaging


def test_averaged_weights_are_validated_and_kept(data_dir: Path, tmp_path: Path) -> None:
    args = args_for(*SMALL, f"--data_dir={data_dir}", "--use_tensorboard=False")
    seed_everything(0)
    trainer = builders.build_retrainer(args, None, CPU, RunDir(tmp_path, use_tensorboard=False))
    trainer.start_averaging()
    steps = trainer.step
    trainer.train_epoch(0)
    assert int(trainer.averaged.n_averaged) == trainer.step - steps > 1
    raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    averaged = trainer.averaged.module.state_dict()
    assert not torch.equal(raw["w_x0"], averaged["w_x0"])
    result = trainer.evaluate("valid")
    assert trainer.space.model is trainer.model  # restored after validating
    trainer.space.model.load_state_dict(averaged)
    assert trainer.space.evaluate(trainer.arch, "valid")["valid_ppl"] == pytest.approx(result["valid_ppl"], rel=1e-6)
    trainer.space.model.load_state_dict(raw)
    trainer.best = {"epoch": 0, "score": result["valid_ppl"]}
    assert torch.equal(trainer.best_state()["model"]["w_x0"], averaged["w_x0"])
    state = trainer.state_dict()
    trainer.averaged = None
    trainer.load_state_dict(state)
    assert torch.equal(trainer.averaged.module.state_dict()["w_x0"], averaged["w_x0"])


def test_typed_retrain_configs_come_from_the_options() -> None:
    rnn = builders.retrain_config(args_for("--mode=retrain"))
    assert (rnn.epochs, rnn.bptt, rnn.nonmono, rnn.save_epoch) == (500, 35, 5, 5)  # AWD-LSTM's 500 epochs by default
    cnn = builders.retrain_config(args_for("--mode=retrain", "--network_type=micro_cnn"))
    assert (cnn.epochs, cnn.cutout, cnn.aux_weight) == (600, 16, 0.4)  # DARTS's
    assert builders.retrain_config(args_for("--retrain_epochs=7")).epochs == 7
    spec = builders.retrain_optim_spec(args_for("--network_type=micro_cnn"))
    assert (spec.lr, spec.lr_min, spec.weight_decay, spec.schedule, spec.nesterov) == (0.025, 0.0, 3e-4, "cosine", True)
    sizes = builders.retrain_sizes(args_for("--network_type=micro_cnn", "--cnn_num_modules=3", "--retrain_filters=36"))
    assert (sizes.cnn_final_filter_size, sizes.test_batch_size) == (144, 96)  # doubled at each of 2 reductions
    with pytest.raises(UserError, match="--retrain_embed == --retrain_hid"):
        builders.retrain_sizes(args_for("--retrain_embed=8", "--retrain_hid=16"))


def test_search_run_configuration_is_inherited(tmp_path: Path) -> None:
    search = tmp_path / "tiny_search"
    search.mkdir()
    (search / "params.json").write_text(json.dumps({**vars(args_for()), "num_blocks": 3, "shared_dropout": 0.1,
                                                    "dataset": "tiny", "comment": "search", "shared_lr": 1.0}))
    arch = {"type": "rnn", "activations": ["tanh", "ReLU", "tanh"], "parents": [0, 1]}
    (search / "best_arch.json").write_text(json.dumps({"arch": arch, "score": 10.0}))
    argv = ["--mode=retrain", f"--load_path={search}", "--shared_dropout=0.3"]
    explicit = config.explicit_options(argv)
    args = retrain.with_search_config(args_for(*argv), explicit)
    args, chosen, source = retrain.choose_arch(args, explicit)
    assert chosen == arch and source == str(search / "best_arch.json")
    assert (args.num_blocks, args.dataset, args.shared_dropout) == (3, "tiny", 0.3)  # the command line wins
    assert args.comment == "" and args.shared_lr == 20.0  # naming and search-only options are not inherited
    bare = tmp_path / "bare.json"  # a bare dict elsewhere: its shape still sets the node count
    bare.write_text(json.dumps({**arch, "activations": ["tanh"] * 5, "parents": [0, 0, 1, 2]}))
    args, chosen, _ = retrain.choose_arch(args_for(f"--arch={bare}"), set())
    assert (args.network_type, args.num_blocks) == ("rnn", 5) and len(chosen["parents"]) == 4


# --------------------------------------------------------------------------------------- CNN
def write_images(folder: Path) -> Path:
    """Two classes of 8x8 colour images; class 1 has a bright square in the middle."""
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 24), ("test", 8)):
        for label in range(2):
            directory = folder / split / f"class{label}"
            directory.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                image = torch.randint(0, 100, (3, 8, 8), generator=generator, dtype=torch.uint8)
                image[:, 2:6, 2:6] += 150 * label
                write_png(image, str(directory / f"{k}.png"))
    return folder


CNN = ["--network_type=micro_cnn", "--dataset=images", "--num_blocks=2", "--cnn_num_modules=2", "--retrain_layers=1",
       "--retrain_filters=6", "--retrain_cnn_batch_size=8", "--valid_size=8", "--retrain_epochs=2",
       "--retrain_cutout=4", "--num_workers=0", "--num_gpu=0", "--log_step=0", "--use_tensorboard=False",
       "--shared_cnn_types=identity,max3x3,depthwise_3x3"]


def test_cnn_retrain_end_to_end(tmp_path: Path) -> None:
    write_images(tmp_path / "data" / "images")
    common = [*CNN, f"--data_dir={tmp_path / 'data'}", f"--log_dir={tmp_path / 'logs'}"]
    assert main.main(["--mode=retrain", "--arch=random", *common, "--comment=cnn"]) == 0
    run = tmp_path / "logs" / "images_cnn"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["lr"] == 0.025 and records[1]["lr"] == pytest.approx(0.0125)  # cosine over 2 epochs
    assert all("train_acc" in r and "valid_acc" in r for r in records)
    result = json.loads((run / "test_results.json").read_text())
    assert result["test_images"] == 16 and 0 <= result["test_acc"] <= 100 and result["params"] > 0
    state = load_checkpoint(run / "checkpoints" / "best.pt", CPU)
    assert any(k.startswith("aux.") for k in state["model"])  # the auxiliary head trained (weight 0.4)


@pytest.mark.parametrize("preset", ["paper", "enas"])
def test_pruned_cnn_computes_the_shared_function(tmp_path: Path, preset: str) -> None:
    write_images(tmp_path / "images")
    args = args_for(*CNN, f"--data_dir={tmp_path}", "--retrain_aux_weight=0", f"--preset={preset}")
    torch.manual_seed(0)
    shared_space = builders.build_space(builders.retrain_sizes(args), CPU)
    arch = random_arch(shared_space, 3)
    _, fixed, fixed_arch = builders.build_fixed(args, arch.to_dict(), CPU)
    assert fixed_arch == arch
    load_shared_weights(fixed.net, shared_space.model.state_dict())
    images = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    shared_space.model.eval()
    fixed.eval()
    with torch.no_grad():
        assert torch.equal(shared_space.model(images, arch), fixed(images, arch))
    kept = sum(p.numel() for p in fixed.parameters())
    assert kept < sum(p.numel() for p in shared_space.model.parameters())
