"""The ablation's arms mean what they say: where B starts from, what stays frozen, what runs beside B's paths,
and the ablation's ledger repeats the measurement's seeds exactly."""

from __future__ import annotations

import json
from pathlib import Path as FilePath

import pytest
import torch

from experiments.pathnet import ablation, measure
from experiments.pathnet.transfer import run_pair, start_of_b
from models.pathnet import Path, PathNet
from tests.test_pathnet_styles import easy_task
from utils import UserError

TINY = ["--pathnet_units=4", "--pathnet_modules=4", "--pathnet_active=2", "--pathnet_population=4",
        "--pathnet_batches=2", "--pathnet_max_generations=3"]


def nets() -> tuple[PathNet, PathNet, Path]:
    """A's network (as if trained: its own draw), a fresh one (another draw) and A's path."""
    net_a, fresh = PathNet(6, 2, 4, 3, [2, 2]), PathNet(6, 2, 4, 3, [2, 2])
    everything = torch.ones(2, 4, dtype=torch.bool)
    net_a.reset_modules(everything, torch.Generator().manual_seed(1))
    fresh.reset_modules(everything, torch.Generator().manual_seed(2))
    return net_a, fresh, Path(((0, 2), (1,)))


def layers(net: PathNet) -> list[torch.Tensor]:
    return [*net.weights, *net.biases]


def test_keep_starts_b_from_a_weights_everywhere_and_pathnet_reinitialises_the_rest() -> None:
    net_a, fresh, path_a = nets()
    on = net_a.mask(path_a)
    keep, always = start_of_b("keep", net_a, fresh, path_a, frozen_active=False)
    assert always is None and torch.equal(keep.frozen, on)
    assert all(torch.equal(k, a) for k, a in zip(layers(keep), layers(net_a)))  # nothing re-initialised
    pathnet, _ = start_of_b("pathnet", net_a, fresh, path_a, frozen_active=False)
    assert torch.equal(pathnet.frozen, on)
    for l in range(2):
        for got, a, f in ((pathnet.weights[l], net_a.weights[l], fresh.weights[l]),
                          (pathnet.biases[l], net_a.biases[l], fresh.biases[l])):
            assert torch.equal(got[on[l]], a[on[l]])  # A's path: A's weights
            assert torch.equal(got[~on[l]], f[~on[l]]) and not torch.equal(got[~on[l]], a[~on[l]])  # the rest: fresh
    assert keep.weights[0] is not net_a.weights[0]  # a copy: B's training leaves A's network alone


def test_which_variants_run_a_frozen_path_beside_b() -> None:
    net_a, fresh, path_a = nets()
    assert start_of_b("pathnet_active", net_a, fresh, path_a, frozen_active=False)[1] == path_a
    assert start_of_b("pathnet", net_a, fresh, path_a, frozen_active=False)[1] is None
    assert start_of_b("keep", net_a, fresh, path_a, frozen_active=True)[1] == path_a  # the TF style keeps its own
    scratch, always = start_of_b("scratch", net_a, fresh, path_a, frozen_active=True)
    assert always is None and not scratch.frozen.any()
    with pytest.raises(UserError, match="unknown 'reuse'"):
        start_of_b("reuse", net_a, fresh, path_a, frozen_active=False)


def test_frozen_arms_keep_task_a_exactly_through_b() -> None:
    from experiments.pathnet.tournament import TournamentConfig
    from experiments.pathnet.transfer import NetConfig

    net = NetConfig(2, 4, 6, 2, "sum", 1.0, 2)
    evolution = TournamentConfig(6, 3, 16, 0.5, 0.95, 20, 0.02, "wrap", converge_window=2)
    tasks = {"1v3": easy_task("1v3", 0, 1), "1v2": easy_task("1v2", 3, 2)}
    result = run_pair(tasks, ("1v3", "1v2"), 7, ["keep", "pathnet_active"], net, evolution)
    for variant in ("keep", "pathnet_active"):
        assert result["variants"][variant]["A_accuracy_after"] == result["A_test_accuracy"]


def test_the_ablation_ledger_repeats_the_measurements_seeds(tmp_path: FilePath, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.pathnet import transfer

    tasks = {"1v3": easy_task("1v3", 0, 1), "1v2": easy_task("1v2", 1, 2)}
    monkeypatch.setattr(transfer, "binary_tasks", lambda data_dir, names, raw=False: tasks)
    ledger = tmp_path / "ablation.jsonl"
    argv = ["--arms=paper,paper_tf_rule", "--seeds=2", f"--ledger={ledger}", f"--out={tmp_path}", "--", *TINY]
    assert ablation.main(argv) == 0
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["key"] for e in entries] == ["paper/1v3->1v2/s0", "paper/1v3->1v2/s1", "paper_tf_rule/1v3->1v2/s0",
                                           "paper_tf_rule/1v3->1v2/s1"]
    assert entries[2]["kwargs"]["extra"][:3] == ["--pathnet_max_generations=1000", "--pathnet_converge=0.99",
                                                 "--pathnet_converge_window=1"]
    # The paper arm's scratch and pathnet runs are the measurement's own unit of that seed.
    same = measure.measure_unit("paper", "1v3,1v2", measure.BASE_SEED + 1, "unused",
                                        ["--pathnet_max_generations=1000", *TINY])
    for variant in ("scratch", "pathnet"):
        assert entries[1]["record"]["variants"][variant] | {"seconds": 0} == same["variants"][variant] | {"seconds": 0}
    rows = json.loads((tmp_path / "pathnet_ablation.json").read_text())["summary"]
    keep = next(r for r in rows if r["arm"] == "paper" and r["variant"] == "keep")
    gens = [e["record"]["variants"] for e in entries[:2]]
    assert keep["speedup"]["ratio"] == pytest.approx(sum(g["scratch"]["generations"] for g in gens)
                                                     / sum(g["keep"]["generations"] for g in gens))
    assert "| paper | 1v3->1v2 | keep | 2 |" in (tmp_path / "pathnet_ablation.md").read_text()
    assert (tmp_path / "pathnet_ablation.png").stat().st_size > 0
    assert ablation.main(argv) == 0 and [json.loads(line) for line in ledger.read_text().splitlines()] == entries
