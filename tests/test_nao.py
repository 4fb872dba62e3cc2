"""NAO as a sampler (samplers/nao.py, models/nao_codec.py, models/nao_controller.py).

The codec round-trips every cell of small RNN and micro-CNN spaces; the decoder emits only valid
cells whatever its weights; generation returns unseen cells and raises its step as documented; the
controller learns a ranking it is shown; and a tiny ``--sampler=nao`` search on the RNN derives, resumes
exactly, and runs on a micro-CNN.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from cnn_fixtures import SMALL, cifar_files, fake_cifar  # noqa: F401  (fixtures)
from conftest import interrupted_copy, metrics_without_timing
from test_search_plugins import RANDOM, LinearSpace

import main
from models import cnn, rnn_arch
from models.nao_codec import cnn_codec, generic_codec, rnn_codec
from models.nao_controller import NAOController
from samplers import SAMPLERS, NAOSampler
from samplers.nao import pairwise_accuracy

torch.set_num_threads(1)


def all_decisions(sizes: list[int]) -> list[list[int]]:
    return [list(t) for t in itertools.product(*(range(n) for n in sizes))]


# ---------------------------------------------------------------------------------- the codec
def test_rnn_sequence_by_hand() -> None:
    codec = rnn_codec(3, 4)  # tokens: 0 SOS, 1..3 "node" (input, node 0, node 1), 4..7 activations
    assert codec.vocab_size == 8 and codec.length == 6
    assert codec.to_sequence([1, 0, 2, 1, 3]) == [1, 5, 2, 6, 3, 7]
    mask = codec.valid_mask()
    assert mask[0].nonzero().flatten().tolist() == [1] and mask[4].nonzero().flatten().tolist() == [2, 3]
    with pytest.raises(ValueError):
        codec.to_decisions([1, 5, 1, 6, 3, 7])  # node 1 cannot read the input slot's token


@pytest.mark.parametrize("layout", ["rnn", "cnn", "generic"])
def test_every_valid_cell_round_trips(layout: str) -> None:
    if layout == "rnn":
        sizes, codec = rnn_arch.decision_sizes(4, 3), rnn_codec(4, 3)
    elif layout == "cnn":
        sizes, codec = cnn.decision_sizes(1, 2, 3), cnn_codec(1, 2, 3)
    else:
        sizes, codec = [3, 2, 4], generic_codec([3, 2, 4])
    mask = codec.valid_mask()
    cells = all_decisions(sizes)
    seqs = {tuple(codec.to_sequence(d)) for d in cells}
    assert len(seqs) == len(cells) == math.prod(sizes)  # injective
    for d in cells:
        seq = codec.to_sequence(d)
        assert codec.to_decisions(seq) == d and all(mask[t, tok] for t, tok in enumerate(seq))
    # the mask admits exactly these sequences: the valid tokens per position multiply to the number of cells
    assert math.prod(int(row.sum()) for row in mask) == len(cells)


def test_the_decoder_emits_only_valid_cells() -> None:
    torch.manual_seed(3)
    codec = rnn_codec(6, 4)
    controller = NAOController(codec.vocab_size, codec.length, codec.valid_mask(), embed=8, hid=12, mlp_hid=16)
    for _ in range(5):
        with torch.no_grad():
            for p in controller.out.parameters():  # push the logits towards invalid tokens
                p.normal_(0, 10)
        outputs = torch.nn.functional.normalize(torch.randn(32, codec.length // 2, 12), dim=-1)
        for row in controller.decode(outputs, controller.pool(outputs)).tolist():
            rnn_arch.decode(codec.to_decisions(row), list(rnn_arch.ACTIVATIONS))  # raises if not a valid cell


# ---------------------------------------------------------------------------------- the sampler
def nao(space: Any, seed: int = 0, **over: Any) -> NAOSampler:
    values = {"nao_pool": 8, "nao_top_k": 3, "nao_new": 3, "nao_random": 1, "nao_round_every": 1,
              "nao_controller_epochs": 5, "nao_controller_batch": 4, "nao_controller_lr": 1e-3, "nao_controller_l2": 1e-4,
              "nao_controller_clip": 5.0, "nao_mse_weight": 0.8, "nao_lambda": 1.0, "nao_max_passes": 30, "nao_embed": 8,
              "nao_hid": 16, "nao_mlp_layers": 2, "nao_mlp_hid": 16, "nao_weights": "edge", "random_seed": seed}
    values.update(over)
    return SAMPLERS["nao"].build(space, NAOSampler.Config(**values), torch.device("cpu"), None)


class SumSpace(LinearSpace):
    """The held-out error of an architecture is the sum of its tokens (lower is better)."""

    def error(self, arch: Any) -> float:
        return float(sum(arch.tokens))


def test_pairwise_accuracy_by_hand() -> None:
    # pairs with different targets: (0,1) right, (0,2) right, (1,2) wrong; (2,3) has equal targets
    assert pairwise_accuracy([0.1, 0.5, 0.4, 0.9], [1.0, 2.0, 3.0, 3.0]) == pytest.approx(
        (1 + 1 + 0 + 1 + 1) / 5)
    assert math.isnan(pairwise_accuracy([0.1, 0.2], [1.0, 1.0]))


def test_generation_finds_unseen_cells_and_raises_lambda_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = nao(SumSpace(decision_sizes=(4, 4, 4, 4)), nao_lambda=0.5)
    steps: list[float] = []
    move = sampler.controller.move

    def recording(seqs: torch.Tensor, step: float) -> torch.Tensor:
        steps.append(step)
        return move(seqs, step)

    monkeypatch.setattr(sampler.controller, "move", recording)
    new, step, passes = sampler.generate(sampler.pool[:3])
    pool = {tuple(t) for t in sampler.pool}
    assert len(new) == len({tuple(t) for t in new}) and not pool & {tuple(t) for t in new}
    assert steps == [0.5 * k for k in range(1, passes + 1)] and step == steps[-1]
    # an impossible demand stops at the cap: every pass taken, lambda = cap * step
    sampler.cfg = dataclasses.replace(sampler.cfg, nao_new=10**6, nao_max_passes=4)
    steps.clear()
    new, step, passes = sampler.generate(sampler.pool[:3])
    assert passes == 4 and steps == [0.5, 1.0, 1.5, 2.0] and step == 2.0 and len(new) <= 12


def test_the_controller_learns_a_ranking_it_is_shown() -> None:
    """Target: the normalised sum of the tokens. Trained on 60 of the 81 cells of a 3^4 space, the predictor
    orders the 21 held-out cells' pairs correctly at least 80 % of the time, and the loss falls."""
    torch.manual_seed(0)
    codec = generic_codec([3, 3, 3, 3])
    cells = all_decisions([3, 3, 3, 3])
    order = torch.randperm(len(cells), generator=torch.Generator().manual_seed(1)).tolist()
    seqs = torch.tensor([codec.to_sequence(cells[i]) for i in order])
    target = torch.tensor([sum(cells[i]) / 8 for i in order])
    controller = NAOController(codec.vocab_size, codec.length, codec.valid_mask(), embed=16, hid=32, mlp_layers=2, mlp_hid=64)
    optim = torch.optim.Adam(controller.parameters(), lr=3e-3, weight_decay=1e-4)
    first = float(controller.loss(seqs[:60], target[:60], 0.8)[0])
    for epoch in range(150):
        for batch in torch.randperm(60, generator=torch.Generator().manual_seed(epoch)).split(20):
            loss = controller.loss(seqs[batch], target[batch], 0.8)[0]
            optim.zero_grad()
            loss.backward()
            optim.step()
    assert float(controller.loss(seqs[:60], target[:60], 0.8)[0]) < 0.5 * first
    with torch.no_grad():
        predicted = controller.encode(seqs[60:]).predicted.tolist()
    assert pairwise_accuracy(predicted, target[60:].tolist()) >= 0.8


def test_a_round_keeps_the_best_adds_new_and_random_and_resumes_exactly() -> None:
    space = SumSpace(decision_sizes=(4, 4, 4, 4))
    a = nao(space, seed=2)
    before = [list(t) for t in a.pool]
    record = a.learn(0)
    best_old = sorted(before, key=sum)[:8 - record["nao_new_archs"] - record["nao_random_archs"]]
    assert a.pool[:len(best_old)] == best_old and len(a.pool) == 8
    assert record["nao_pool_best_loss"] == min(sum(t) for t in before) and "nao_predictor_heldout_pairwise_acc" not in record
    assert a.losses.count(None) == record["nao_new_archs"] + record["nao_random_archs"]
    scored: list[Any] = []
    arch, error = a.derive(1, lambda arch: scored.append(arch) or space.error(arch))  # right after the round
    assert len(scored) == record["nao_new_archs"] + record["nao_random_archs"]  # the kept members' losses are today's
    assert error == min(sum(t) for t in a.pool) and list(arch.tokens) in a.pool
    a.sample(1)  # a shared step would follow: every member is measured again
    scored.clear()
    assert a.derive(1, lambda arch: scored.append(arch) or space.error(arch))[1] == error and len(scored) == 8
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    ahead = (a.learn(1), a.sample(6), a.pool)
    b = nao(space, seed=99)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    again = (b.learn(1), b.sample(6), b.pool)
    assert json.dumps(again, default=str) == json.dumps(ahead, default=str)
    assert 0 <= again[0]["nao_predictor_heldout_pairwise_acc"] <= 1  # the second round has held-out members


# ---------------------------------------------------------------------------------- end to end
NAO = [*[a for a in RANDOM if not a.startswith("--sampler")], "--sampler=nao", "--max_epoch=3", "--nao_pool=6",
       "--nao_top_k=2", "--nao_new=2", "--nao_random=1", "--nao_round_every=1", "--nao_controller_epochs=3",
       "--nao_embed=8", "--nao_hid=8", "--nao_mlp_hid=8"]


def test_nao_search_trains_derives_and_resumes_identically(data_dir: Path, tmp_path: Path) -> None:
    argv = [*NAO, f"--data_dir={data_dir}", f"--log_dir={tmp_path}"]
    assert main.main([*argv, "--comment=full"]) == 0
    run = tmp_path / "tiny_full"
    records = metrics_without_timing(run)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(r["nao_lambda"] == r["nao_passes"] >= 1 and r["nao_round"] == r["epoch"] for r in records)
    assert sum(r["nao_new_archs"] for r in records) >= 1
    assert records[2]["shared_wpl"] > 0 and "forgetting_mean_diff" in records[2]  # WPL and its Diff. with NAO
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert len(state["sampler"]["pool"]) == 6 and state["sampler"]["rounds"] == 3
    assert records[2]["derived_arch"] in [{"type": "rnn", **_rnn(t)} for t in state["sampler"]["pool"]]  # the pool's best
    assert json.loads((run / "best_arch.json").read_text())["arch"]["type"] == "rnn"

    copy = interrupted_copy(run, "tiny_again")  # stopped (kill -9) right after epoch 0, then resumed
    assert main.main([*argv, "--comment=again", "--resume=True"]) == 0
    assert metrics_without_timing(copy) == records
    again = torch.load(copy / "checkpoints" / "latest.pt", weights_only=True)["sampler"]
    assert again["pool"] == state["sampler"]["pool"] and again["losses"] == state["sampler"]["losses"]

    assert main.main(["--mode=derive", f"--load_path={run}", f"--data_dir={data_dir}"]) == 0
    derived = json.loads((run / "derived_arch.json").read_text())
    assert derived["arch"]["type"] == "rnn"
    assert main.main(["--mode=retrain", f"--load_path={run}", f"--data_dir={data_dir}", f"--log_dir={tmp_path}",
                      "--comment=retrained", "--retrain_epochs=1", "--retrain_embed=8", "--retrain_hid=8",
                      "--retrain_batch_size=4", "--retrain_bptt=5", "--num_gpu=0", "--use_tensorboard=False"]) == 0


def _rnn(tokens: list[int]) -> dict[str, Any]:
    arch = rnn_arch.decode(tokens, list(rnn_arch.ACTIVATIONS))
    return {"activations": list(arch.activations), "parents": list(arch.parents)}


def test_nao_searches_a_tiny_micro_cnn(fake_cifar: Path, tmp_path: Path) -> None:
    argv = ["--network_type=micro_cnn", "--dataset=cifar10", "--num_blocks=2", f"--data_dir={fake_cifar}", *SMALL,
            f"--log_dir={tmp_path}", "--comment=nao", "--sampler=nao", "--nao_size=small", "--nao_pool=5",
            "--nao_top_k=2", "--nao_new=2", "--nao_random=1", "--nao_controller_epochs=2", "--nao_round_every=1",
            "--use_tensorboard=False"]
    assert main.main(argv) == 0
    records = metrics_without_timing(tmp_path / "cifar10_nao")
    assert [r["epoch"] for r in records] == [0, 1] and "valid_acc" in records[1]
    assert all(r["nao_random_archs"] == 1 and 0 <= r["nao_pool_best_loss"] <= 100 for r in records)  # error %
    pool = torch.load(tmp_path / "cifar10_nao" / "checkpoints" / "latest.pt", weights_only=True)["sampler"]["pool"]
    assert len(pool) == 5 and len({tuple(t) for t in pool}) == 5


@pytest.mark.parametrize("line, says", [
    ("--nao_pool=4 --nao_top_k=5", "--nao_top_k=5 is above --nao_pool=4"),
    ("--nao_new=0", "--nao_new=0: must be an integer >= 1"),
    ("--nao_max_passes=0", "--nao_max_passes=0: must be an integer >= 1"),
    ("--nao_pool=10 --nao_top_k=2 --nao_new=8 --nao_random=2", "must stay below --nao_pool=10"),
])
def test_bad_nao_values_are_one_line(line: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.main([f"--log_dir={tmp_path}", "--num_gpu=0", "--sampler=nao", *line.split()])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


def test_per_activation_weights_are_refused_in_one_line(data_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main.main([*NAO, f"--data_dir={data_dir}", f"--log_dir={tmp_path}", "--nao_weights=activation"])
    err = capsys.readouterr().err
    assert code != 0 and "--nao_weights=activation" in err and "Traceback" not in err


def test_the_round_benchmark_runs_at_the_small_size(tmp_path: Path) -> None:
    from benchmarks import bench_nao

    out = bench_nao.main(["--size", "small", "--reps", "1", "--json", str(tmp_path / "nao.json")])
    assert out["pool"] == 40 and out["controller_params"] == 311_818  # NAO-WS: about 0.31M
    assert json.loads((tmp_path / "nao.json").read_text())["round_train_s_cpu"] > 0
