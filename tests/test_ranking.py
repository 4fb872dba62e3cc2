"""The ranking benchmark (issue 25): the 32-cell space, tau / rho / regret by hand, a tiny run read back, resume, bad truths."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import main
from analysis.stats import rank_agreement, top_k_regret
from experiments.ranking import options, protocol, report
from experiments.workers import read_ledger
from spaces.rnn32 import DECISION_SIZES, all_cells, cell_id
from models.rnn_arch import RNNArch
from utils import UserError

TINY = ["--mode=ranking", "--ranking_size=tiny", "--dataset=tiny", "--workers=1", "--truth_seeds=2", "--ranking_seeds=2",
        "--ranking_variants=random:none,random:fisher", "--num_gpu=0"]


def test_the_space_has_exactly_32_distinct_cells_with_stable_ids() -> None:
    cells = all_cells()
    assert len(cells) == 32 and len(set(cells)) == 32
    assert math.prod(DECISION_SIZES) == 32
    assert all(c.activations[0] == "tanh" and c.parents[0] == 0 and c.num_nodes == 3 for c in cells)
    assert {c.parents[1] for c in cells} == {0, 1}
    assert {a for c in cells for a in c.activations[1:]} == {"tanh", "ReLU", "sigmoid", "identity"}
    assert cell_id(cells[0]) == "c00" and cell_id(cells[31]) == "c31"
    assert cells[0] == RNNArch(("tanh", "tanh", "tanh"), (0, 0))  # the id order: act1, parent2, act2
    assert cells[1] == RNNArch(("tanh", "tanh", "ReLU"), (0, 0))
    assert cells[4] == RNNArch(("tanh", "tanh", "tanh"), (0, 1))
    assert cells[8] == RNNArch(("tanh", "ReLU", "tanh"), (0, 0))
    with pytest.raises(ValueError, match="not in the 32-cell space"):
        cell_id(RNNArch(("ReLU", "tanh", "tanh"), (0, 1)))


def test_kendall_spearman_and_regret_against_hand_computations() -> None:
    # 4 items, one swapped pair: 5 concordant, 1 discordant of 6 pairs -> tau = 4/6; rho = 1 - 6*2/(4*15) = 0.8
    r = rank_agreement([1, 2, 3, 4], [1, 3, 2, 4])
    assert r["tau"] == pytest.approx(4 / 6) and r["rho"] == pytest.approx(0.8)
    # ties (tau-b): x = [1, 2, 2, 3], y = [1, 2, 3, 4]: C = 5, D = 0, one tie in x:
    # tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = 5 / sqrt((6 - 1) * 6)
    assert rank_agreement([1, 2, 2, 3], [1, 2, 3, 4])["tau"] == pytest.approx(5 / math.sqrt(30))
    # pairing matters: the same values listed under other ids give another tau
    assert rank_agreement([3, 1, 2], [30, 10, 20])["tau"] == pytest.approx(1.0)
    assert math.isnan(rank_agreement([1, 1, 1], [1, 2, 3])["tau"])
    truth = [10.0, 12.0, 11.0, 15.0]
    assert top_k_regret([4, 1, 2, 3], truth, 1) == pytest.approx(2.0)  # picks item 1 (12), best is 10
    assert top_k_regret([4, 1, 2, 3], truth, 2) == pytest.approx(1.0)  # items 1, 2: best of them 11
    assert top_k_regret([4, 1, 2, 3], truth, 4) == 0.0
    assert top_k_regret([1, 1, 2, 3], truth, 1) == 0.0  # a tie in the search's scores: the first listed wins


def test_paired_differences_per_sampler_and_with_the_samplers_pooled() -> None:
    def run(tau: float) -> list[dict[str, float]]:
        return [{"tau": 0.0, "regret1": 9.0, "regret5": 9.0, "median_log_ppl": 6.0},
                {"tau": tau, "regret1": 10 * tau, "regret5": 0.0, "median_log_ppl": 6 + tau}]

    runs = {"random:none": {1: run(0.5), 2: run(0.1)}, "random:fisher": {1: run(0.2), 2: run(0.0)},
            "reinforce:none": {1: run(0.4), 2: run(0.5), 3: run(0.9)}, "reinforce:fisher": {1: run(0.4), 2: run(0.2)}}
    variants = [("random", "none"), ("random", "fisher"), ("reinforce", "none"), ("reinforce", "fisher")]
    out = report.paired(runs, variants)
    # last epoch only; seed 3 has no fisher run, so it is no pair
    assert out["random:fisher - random:none"]["tau"]["mean"] == pytest.approx((-0.3 - 0.1) / 2)
    assert out["reinforce:fisher - reinforce:none"]["tau"]["mean"] == pytest.approx((0.0 - 0.3) / 2)
    pooled = out["fisher - none, samplers pooled"]
    assert pooled["seeds"] == ["random/1", "random/2", "reinforce/1", "reinforce/2"]
    assert pooled["tau"]["mean"] == pytest.approx((-0.3 - 0.1 + 0.0 - 0.3) / 4)
    assert pooled["regret1"]["mean"] == pytest.approx(10 * (-0.3 - 0.1 + 0.0 - 0.3) / 4)
    assert pooled["median_log_ppl"]["mean"] == pytest.approx((-0.3 - 0.1 + 0.0 - 0.3) / 4)
    # samplers against each other with the same importance, paired by seed (seed 3 has no random run)
    assert out["reinforce:none - random:none"]["tau"]["mean"] == pytest.approx(((0.4 - 0.5) + (0.5 - 0.1)) / 2)
    assert out["reinforce:fisher - random:fisher"]["seeds"] == ["fisher/1", "fisher/2"]
    assert out["reinforce:fisher - random:fisher"]["tau"]["mean"] == pytest.approx(((0.4 - 0.2) + (0.2 - 0.0)) / 2)
    # one sampler: nothing to pool, no sampler to compare
    assert set(report.paired(runs, variants[:2])) == {"random:fisher - random:none"}


def test_the_option_table_names_the_protocol_sizes() -> None:
    assert set(options.SIZES) == set(protocol.SIZES)


def run(tmp_path: Path, data_dir: Path, *extra: str) -> int:
    return main.main([*TINY, f"--data_dir={data_dir}", f"--log_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    logs = tmp_path_factory.mktemp("ranking")
    assert run(logs, data_dir, "--comment=a") == 0
    return logs / "ranking_a"


def test_a_tiny_ranking_run_writes_results_that_read_back(tiny_run: Path) -> None:
    results = json.loads((tiny_run / "ranking_results.json").read_text())
    assert len(results["truth"]["valid_ppl"]) == 32 and results["truth"]["ceiling"]["seeds"] == 2
    for name in ("random:none", "random:fisher"):
        variant = results["variants"][name]
        assert variant["seeds"] == [12345, 12346] and len(variant["per_epoch"]) == 2
        assert -1.0 <= variant["per_epoch"][-1]["tau"]["mean"] <= 1.0
    truth = protocol.load_truth(tiny_run / "ground_truth.json")
    assert [len(truth["cells"][f"c{i:02d}"]["runs"]) for i in range(32)] == [2] * 32
    # the table's tau is the stats module's, on the per-cell values of the last epoch
    search = next(e["record"] for e in read_ledger(tiny_run / "search.jsonl").values()
                  if e["record"]["sampler"] == "random" and e["record"]["importance"] == "none" and e["record"]["seed"] == 12345)
    tau = rank_agreement(search["epochs"][-1]["valid_ppl"], results["truth"]["valid_ppl"])["tau"]
    assert results["runs"]["random:none"]["12345"][-1]["tau"] == pytest.approx(tau)
    assert (tiny_run / "ranking.png").stat().st_size > 1000 and "Kendall tau" in (tiny_run / "ranking.md").read_text()


def test_a_run_is_refused_without_resume_and_a_resume_after_a_kill_equals_the_whole_run(
        tiny_run: Path, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tiny_run.parent
    assert run(logs, data_dir, "--comment=a") == 2
    assert "pass --resume=True" in capsys.readouterr().err
    killed = logs / "ranking_killed"
    shutil.copytree(tiny_run, killed)  # as a kill -9 would leave it: a third of each ledger, a torn line
    for ledger in ("truth.jsonl", "search.jsonl"):
        lines = (killed / ledger).read_text().splitlines()
        (killed / ledger).write_text("\n".join(lines[: len(lines) // 3]) + "\n" + lines[-1][:30])
    for name in ("ranking_results.json", "ground_truth.json", "ranking.md", "ranking.png"):
        (killed / name).unlink()
    assert run(logs, data_dir, "--comment=killed", "--resume=True") == 0
    whole = json.loads((tiny_run / "ranking_results.json").read_text())
    resumed = json.loads((killed / "ranking_results.json").read_text())
    assert resumed["runs"] == whole["runs"] and resumed["truth"] == whole["truth"]
    assert run(logs, data_dir, "--comment=killed", "--resume=True", "--shared_lr=10") == 2
    assert "was started with other options" in capsys.readouterr().err
    before = (killed / "search.jsonl").read_text()
    assert run(logs, data_dir, "--comment=killed", "--resume=True", "--ranking_stage=search",
               "--ranking_variants=random:none,random:fisher,random:l2") == 0  # a variant added: only its units run
    after = (killed / "search.jsonl").read_text()
    assert after.startswith(before) and [json.loads(line)["key"] for line in after[len(before):].splitlines()] == [
        "search/random:l2/s12345", "search/random:l2/s12346"]
    assert json.loads((killed / "ranking.json").read_text())["variants"][-1] == "random:l2"


def bad_truth(tmp_path: Path, good: Path, edit: str) -> Path:
    doc = json.loads(good.read_text())
    if edit == "nan":
        doc["cells"]["c03"]["runs"][0]["valid_ppl"] = float("nan")
    elif edit == "31 cells":
        del doc["cells"]["c31"]
    elif edit == "kind":
        doc["kind"] = "something else"
    elif edit == "seeds":
        doc["cells"]["c05"]["runs"] = doc["cells"]["c05"]["runs"][:1]
    path = tmp_path / f"{edit}.json"
    path.write_text(json.dumps(doc) if edit != "corrupt" else good.read_text()[:100])
    return path


@pytest.mark.parametrize("edit, message", [("nan", "not a finite perplexity"), ("31 cells", "not the 32 cells"),
                                          ("kind", "not a ground truth"), ("seeds", "every cell needs the same seeds"),
                                          ("corrupt", "ground-truth file")])
def test_a_corrupt_or_mismatched_ground_truth_is_one_clear_line(tiny_run: Path, tmp_path: Path, edit: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        protocol.load_truth(bad_truth(tmp_path, tiny_run / "ground_truth.json", edit))
    other = {**protocol.options_for("tiny", type("A", (), {"dataset": "tiny", "data_dir": "", "shared_lr": 20.0,
                                                            "shared_dropout": 0.4, "preset": "paper"})()), "max_epoch": 9}
    with pytest.raises(UserError, match="trained with max_epoch=2, this run uses 9"):
        protocol.load_truth(tiny_run / "ground_truth.json", other)


def test_bad_variants_are_one_line() -> None:
    with pytest.raises(UserError, match="not sampler:importance"):
        protocol.parse_variants(["random:ewc"])
    with pytest.raises(UserError, match="repeated"):
        protocol.parse_variants(["random:none", "random:none"])


def test_nao_searches_the_32_cells_with_its_pool_scaled_to_the_space(data_dir: Path) -> None:
    from experiments.ranking.run import search_and_rank

    opts = {**protocol.SIZES["tiny"], "dataset": "tiny", "data_dir": str(data_dir)}
    unit = protocol.search_units(opts, [("nao", "fisher")], [3])[0]
    assert unit.kwargs["options"]["nao_pool"] == 8  # NAO-WS's pool of 1000 does not fit 32 cells
    record = search_and_rank(**unit.kwargs)
    assert [len(e["valid_ppl"]) for e in record["epochs"]] == [32, 32]
    assert all(math.isfinite(p) for e in record["epochs"] for p in e["valid_ppl"])


def test_the_end_point_probe_scores_the_last_steps_at_the_annealed_lr(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import probe_endpoint

    probe_endpoint.main(["--size=tiny", "--last=2", f"--data_dir={data_dir}", "--dataset=tiny", "--anneal=0.5"])
    lines = capsys.readouterr().out.splitlines()
    # tiny: 2 epochs of 2 shared steps; steps 3 and 4 start at epochs 1 and 1.5 of 2, the last half annealed
    assert [line.split(": ")[1].split(" train")[0] for line in lines] == ["step 3/4 lr 20.00", "step 4/4 lr 10.00"]
    assert all(math.isfinite(float(line.rsplit(" ", 1)[1])) for line in lines)


def test_a_diverged_cell_is_null_in_the_ledger_and_ranks_last_in_the_report() -> None:
    from experiments.ranking.run import finite_or_none

    assert [finite_or_none(v) for v in (3.5, math.inf, math.nan)] == [3.5, None, None]
    truth = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    search = {"epochs": [{"valid_ppl": [20.0, None, 22.0, 23.0, 24.0, 25.0], "forgetting_mean_diff": None},
                         {"valid_ppl": [20.0, 21.0, 22.0, 23.0, 24.0, 25.0], "forgetting_mean_diff": 0.5}]}
    rows = report.per_run(search, truth)
    # epoch 0: cell 1 diverged and ranks last: its 4 pairs with cells 2-5 disagree, the other 11 of 15 agree
    assert rows[0]["tau"] == pytest.approx((11 - 4) / 15) and math.isnan(rows[0]["diff"])
    assert rows[0]["regret1"] == 0.0 and rows[1]["tau"] == pytest.approx(1.0) and rows[1]["diff"] == 0.5
    assert rows[1]["stability"] == pytest.approx((11 - 4) / 15)  # against epoch 0's order, the null ranked last
    # the shared weights' level: the median cell, the diverged one counted as the worst (23, 24 in the middle)
    assert [r["median_log_ppl"] for r in rows] == pytest.approx([math.log(23 * 24) / 2, math.log(22 * 23) / 2])


def test_the_wpl_step_probe_measures_the_penalty_against_the_loss(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import probe_wpl_step

    result = probe_wpl_step.main(["--size=tiny", "--epochs=2", f"--data_dir={data_dir}", "--dataset=tiny"])
    rows = result["rows"]
    # tiny: 2 epochs x 2 architectures x 2 batches, every one penalised (WPL from the first epoch)
    assert len(rows) == 8 and len(result["shared_ce"]) == 2
    # an architecture's first batch starts at its anchor: nothing to pull back; the second of a later
    # architecture has moved from it where an earlier one built an importance
    assert [r["penalty_grad"] for r in rows[0::2]] == [0.0] * 4 and rows[-1]["penalty_grad"] > 0
    assert all(r["loss_grad"] > 0 and 0 <= r["unstable"] <= 1 and r["clipped"] in (0.0, 1.0) for r in rows)
    assert "penalty_to_loss: median" in capsys.readouterr().out


def test_the_wpl_step_probe_summary_is_the_order_statistics() -> None:
    from benchmarks.probe_wpl_step import FIELDS, summarise

    rows = [{f: float(v) for f in FIELDS} for v in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]
    rows[0]["penalty_to_loss"] = math.nan  # a batch with no loss gradient: left out
    s = summarise(rows)
    assert s["loss_grad"] == {"median": 5.5, "p90": pytest.approx(9.1), "max": 10.0, "mean": 5.5}
    assert s["penalty_to_loss"]["median"] == 6.0 and s["penalty_to_loss"]["mean"] == 6.0


def test_the_wpl_step_probe_bounds_the_stiffness_by_the_fisher_clip(data_dir: Path) -> None:
    from benchmarks import probe_wpl_step

    rows = probe_wpl_step.main(["--size=tiny", "--epochs=2", "--clip=0.001", f"--data_dir={data_dir}", "--dataset=tiny"])["rows"]
    # compound arithmetic: each stored Fisher tensor has norm <= clip * alpha = 0.06, so no entry is above it and
    # lr * F <= 20 * 0.06 = 1.2: below SGD's stability bound of 2 everywhere
    assert max(r["stiffness"] for r in rows) <= 20 * 0.001 * 60 * (1 + 1e-6)
    assert max(r["unstable"] for r in rows) == 0.0


def test_another_fisher_clip_is_its_own_run_scored_against_the_same_ground_truth(
        tiny_run: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tiny_run.parent
    assert run(logs, data_dir, "--comment=a", "--resume=True", "--ranking_fisher_clip=0.001") == 2
    assert "was started with other options" in capsys.readouterr().err  # the clip is part of the protocol
    assert run(logs, data_dir, "--comment=clip", "--ranking_fisher_clip=0.001", "--ranking_stage=search",
               "--ranking_variants=random:fisher", f"--ranking_truth={tiny_run / 'ground_truth.json'}") == 0
    entries = read_ledger(logs / "ranking_clip" / "search.jsonl")
    assert sorted(entries) == ["search/random:fisher/s12345", "search/random:fisher/s12346"]
    assert {e["kwargs"]["options"]["fisher_clip_by_norm"] for e in entries.values()} == {0.001}
    assert run(logs, data_dir, "--comment=clip", "--resume=True", "--ranking_fisher_clip=0.001", "--ranking_stage=report",
               "--ranking_variants=random:fisher", f"--ranking_truth={tiny_run / 'ground_truth.json'}") == 0
    assert json.loads((logs / "ranking_clip" / "ranking_results.json").read_text())["variants"]["random:fisher"]["seeds"] == [
        12345, 12346]
