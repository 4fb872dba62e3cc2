"""Sweeps: the narrowing search, the statistics, resuming after kill -9, workers sharing one study."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

from analysis.stats import best_stability, detectable_effect, noise_floor, paired_bootstrap
from experiments.sweep.protocol import Runner, SweepConfig, grid_settings, run_grid, run_narrowing, spaced
from experiments.sweep.evaluate import known_direction, resolve
from experiments.sweep.report import markdown, summarise
from experiments.sweep.study import Study, default_storage, setting_key
import sweep
from utils import UserError

ROOT = Path(__file__).resolve().parent.parent


def config(**kw: object) -> SweepConfig:
    base = dict(strategy="narrowing", settings=(), param="x", low_range=(0.0, 1.0), high_range=(8.0, 10.0), num_steps=5,
                threshold=0.1, spacing="linear", trials=3, seeds=(0,), minimize=True, workers=1)
    base.update(kw)
    return SweepConfig(**base)  # type: ignore[arg-type]


def test_narrowing_on_a_noisy_quadratic_shrinks_as_specified_and_ends(tmp_path: Path) -> None:
    calls: list[tuple[float, int]] = []

    def quadratic(setting: dict[str, str], seed: int | None) -> float:
        x = float(setting["x"])
        calls.append((x, seed))
        noise = np.random.default_rng([seed, int(x * 1e6)]).normal(0, 0.01)  # a fixed base model per seed
        return (x - 3.0) ** 2 + noise

    runner = Runner(Study(default_storage(tmp_path), "q", True), quadratic, 1)
    found = run_narrowing(runner, config(), base_seed=10)
    assert len(found["trials"]) == 3
    for trial in found["trials"]:
        assert trial["seed"] == 10 + trial["trial"]  # every step of a trial on the same base model
        steps = trial["steps"]
        rng = np.random.default_rng(10 + trial["trial"])
        assert steps[0]["low"] == pytest.approx(rng.uniform(0, 1)) and steps[0]["high"] == pytest.approx(rng.uniform(8, 10))
        for before, after in itertools.pairwise(steps):
            i = before["values"].index(before["best"])
            assert after["low"] == before["values"][max(i - 1, 0)] and after["high"] == before["values"][min(i + 1, 4)]
            assert after["high"] - after["low"] <= (before["high"] - before["low"]) / 2 + 1e-4  # 2/(n-1) of the range
        last = steps[-1]
        i = last["values"].index(last["best"])
        assert last["values"][min(i + 1, 4)] - last["values"][max(i - 1, 0)] < 0.1  # stopped below the threshold
        assert len(steps) < 12 and abs(trial["best_value"] - 3.0) < 0.25  # noise SD 0.01 hides |x - 3| < ~0.15
    assert len(calls) == len(set(calls))  # a value a trial already evaluated is never run again


def test_narrowing_refuses_too_few_steps(tmp_path: Path) -> None:
    runner = Runner(Study(default_storage(tmp_path), "q", True), lambda s, k: 0.0, 1)
    with pytest.raises(Exception, match="at least 4 values"):
        run_narrowing(runner, config(num_steps=3), base_seed=0)


def test_statistics_against_hand_computations() -> None:
    # diffs (0, 2, 0, 2, 2): every bootstrap mean is k * 2/5 for k draws of a 2; P(k = 0) and P(k = 5) < 2.5%
    assert paired_bootstrap([1.0, 5.0, 1.0, 5.0, 5.0], [1.0, 3.0, 1.0, 3.0, 3.0]) == {"mean": 1.2, "lo": 0.4, "hi": 2.0, "n": 5}
    # two pairs: a bootstrap can only return the two values themselves; not an interval worth printing
    assert paired_bootstrap([1.0, 5.0], [1.0, 3.0]) == {"mean": 1.0, "lo": None, "hi": None, "n": 2,
                                                        "note": "n<5: interval not reported"}
    # pooled SD: variances 1 (2 dof) and 2 (1 dof) -> sqrt(4/3)
    assert noise_floor([[1, 2, 3], [2, 4]]) == pytest.approx(math.sqrt(4 / 3))
    # (t_0.975,4 + t_0.8,4) * sd / sqrt(5) with t_0.975,4 = 2.776445, t_0.8,4 = 0.940965
    assert detectable_effect(2.0, 5) == pytest.approx((2.776445 + 0.940965) * 2 / math.sqrt(5), rel=1e-5)
    assert detectable_effect(1.0, 1) == math.inf
    assert best_stability([[1, 1, 1], [2, 2, 2]], minimize=True) == [1.0, 0.0]


def test_summary_pairs_by_seed_and_names_the_best() -> None:
    settings = [{"a": "0"}, {"a": "1"}]
    results = {setting_key({"a": "0"}, s): v for s, v in enumerate([10.0, 12.0, 14.0, 11.0, 13.0])}
    results |= {setting_key({"a": "1"}, s): v for s, v in enumerate([9.0, 11.0, 13.5, 10.0, 12.5])}
    summary = summarise(settings, [0, 1, 2, 3, 4], results, None, minimize=True)
    paired = summary["rows"][1]["paired_vs_reference"]
    assert summary["reference"] == "a=0" and paired["mean"] == pytest.approx(-0.8)
    assert paired["hi"] < 0  # every seed improves: the paired interval excludes 0 although the means' intervals overlap
    assert summary["best"] == "a=1" and summary["best_frequency"]["a=1"] == 1.0
    assert summary["paired_difference_sd"] == pytest.approx(np.std([-1, -1, -0.5, -1, -0.5], ddof=1))
    assert "best (lower is better): a=1" in markdown(summary, "m")

    few = summarise(settings, [0, 1, 2], results, None, minimize=True)  # three pairs: no paired interval shown
    assert few["rows"][1]["paired_vs_reference"]["lo"] is None
    assert "| -0.8333 (n<5: interval not reported) |" in markdown(few, "m")


def test_grid_settings_and_measure_paths() -> None:
    assert grid_settings(["a=1,2", "b=x"], ["a=0 b=y"]) == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}, {"a": "0", "b": "y"}]
    assert spaced(1, 100, 3, "log") == [1.0, 10.0, 100.0]
    results = {"continual_results.json": {"summary": {"ewc": {"integrated_loss": {"mean": 0.5, "lo": 0.4}}}},
               "metrics.jsonl": {"last": {"valid_ppl": 80.0}, "epochs": []}}
    assert resolve(results, "summary.ewc.integrated_loss") == 0.5
    assert resolve(results, "metrics.last.valid_ppl") == 80.0 and resolve(results, "last.valid_ppl") == 80.0
    toy = {"toy_results.json": {"results": [{"a_drop": {"mean": 3.0, "std": 1.0}, "per_seed": {"a_drop": [2.0, 4.0]}}]}}
    assert resolve(toy, "results.0.per_seed.a_drop") == [2.0, 4.0]  # the path docs/sweeps.md gives
    with pytest.raises(UserError, match=r"toy_results.json has no 'per_seed' under results.0.a_drop \(there: mean, std\)"):
        resolve(toy, "results.0.a_drop.per_seed")  # the path the docs gave before
    with pytest.raises(UserError, match=r"no 'b' under results \(there: a list, indices 0..0\)"):
        resolve(toy, "results.b")


@pytest.mark.parametrize("measure,minimize", [
    ("results.0.per_seed.a_drop", True), ("summary.ewc.forgetting", True), ("metrics.last.forgetting_mean_diff", True),
    ("summary.ewc.integrated_loss", True), ("metrics.last.valid_ppl", True), ("variants.none.mean_diff", True),
    ("summary.ewc.average_accuracy", False), ("metrics.last.controller_reward", False), ("results.0.a_final", False),
    ("metrics.last.wpl_ce_ratio", None), ("summary.ewc.accuracy_drop", None)])
def test_the_projects_measures_have_a_known_direction(measure: str, minimize: bool | None) -> None:
    assert known_direction(measure) is minimize


def test_an_unknown_direction_must_be_given_and_a_forgetting_measure_is_minimised(capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.direction("results.0.per_seed.a_drop", None, None) is True  # "best" never forgets more
    assert sweep.direction("results.0.per_seed.a_drop", False, None) is False  # as asked (with a warning)
    with pytest.raises(UserError, match="pass --minimize or --maximize"):
        sweep.direction("metrics.last.wpl_ce_ratio", None, None)
    assert sweep.main(["--measure=metrics.last.wpl_ce_ratio", "--", "--mode=train"]) == 2
    assert "pass --minimize or --maximize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.build_parser().parse_args(["--minimize", "--maximize"])


def test_grid_runs_each_evaluation_once_and_reuses_finished_ones(tmp_path: Path) -> None:
    calls = []
    cfg = config(strategy="grid", settings=({"a": "1"}, {"a": "2"}), seeds=(0, 1))

    def fn(setting: dict[str, str], seed: int | None) -> float:
        calls.append((setting["a"], seed))
        return float(setting["a"]) + seed

    study = Study(default_storage(tmp_path), "g", True)
    found = run_grid(Runner(study, fn, 2), cfg)
    assert sorted(calls) == [("1", 0), ("1", 1), ("2", 0), ("2", 1)] and len(found["results"]) == 4
    again = run_grid(Runner(Study(default_storage(tmp_path), "g", True), fn, 2), cfg)
    assert len(calls) == 4 and again["results"] == found["results"]


FAKE = textwrap.dedent("""
    import argparse, json, os, pathlib, time
    p = argparse.ArgumentParser()
    p.add_argument("--x", type=float); p.add_argument("--random_seed", type=int)
    p.add_argument("--log_dir"); p.add_argument("--comment"); p.add_argument("--calls"); p.add_argument("--sleep", type=float)
    a = p.parse_args()
    with open(a.calls, "a") as f:
        f.write(f"{a.x} {a.random_seed} {os.getpid()}\\n")
    time.sleep(a.sleep)
    run = pathlib.Path(a.log_dir) / "fake_run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "loss": (a.x - 2) ** 2 + 0.1 * a.random_seed}) + "\\n")
""")


def sweep_command(tmp_path: Path, sleep: float, workers: int) -> list[str]:
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    return [sys.executable, str(ROOT / "sweep.py"), "--strategy=grid", "--grid", "x=0,1,2,3", "--seeds=2",
            f"--program={fake}", "--measure=metrics.last.loss", "--minimize", f"--workers={workers}",
            f"--log_dir={tmp_path / 'logs'}", "--comment=s", "--", f"--calls={tmp_path / 'calls.txt'}", f"--sleep={sleep}"]


def calls(tmp_path: Path) -> list[tuple[str, str]]:
    path = tmp_path / "calls.txt"
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_sweep_killed_with_sigkill_continues_the_same_study(tmp_path: Path) -> None:
    cmd = sweep_command(tmp_path, 0.4, 1)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while len(calls(tmp_path)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = calls(tmp_path)
    assert 3 <= len(before) < 8
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = calls(tmp_path)
    assert sorted(set(after)) == sorted((f"{x:.1f}", str(s)) for x in range(4) for s in range(2))
    assert len(after) <= 9  # only the evaluation in flight at the kill ran twice
    results = json.loads((tmp_path / "logs" / "sweep_s" / "sweep_results.json").read_text())
    assert len(results["evaluations"]) == 8 and results["summary"]["best"] == "x=2"
    assert (tmp_path / "logs" / "sweep_s" / "sweep.png").stat().st_size > 0


def test_two_workers_sharing_one_sqlite_study_do_not_duplicate_evaluations(tmp_path: Path) -> None:
    cmd = sweep_command(tmp_path, 0.2, 2)
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    got = calls(tmp_path)
    assert len(got) == 8 and len(set(got)) == 8
    assert len({line.split()[2] for line in (tmp_path / "calls.txt").read_text().splitlines()}) == 8
    assert all("x=2" in out for out, _ in outs)  # both print the whole sweep's table


def test_a_claim_waits_for_a_lower_trial_whose_key_is_not_written_yet(tmp_path: Path) -> None:
    """The race behind a duplicated evaluation: another worker asked its trial just before this one
    but had not yet written the trial's key when this worker looked for owners."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ours, theirs = Study(url, "s", minimize=True), Study(url, "s", minimize=True)
    early = theirs.study.ask()
    writer = threading.Timer(0.5, lambda: early.set_user_attr("key", "x=1"))
    writer.start()
    try:
        assert ours.claim("x=1", {"x": "1"}, 0) is None  # the earlier trial owns the key
    finally:
        writer.join()
    assert ours.claim("x=2", {"x": "2"}, 0) is not None


def _postgres_bin(name: str) -> str | None:
    import glob
    import shutil

    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (Debian's package) on a free local port; skipped where it cannot start."""
    import pwd
    import shutil
    import socket
    import tempfile

    pytest.importorskip("psycopg")
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "sweep"], check=True, capture_output=True,
                       timeout=120)
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {err}")
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="sweep", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE sweeps")
        yield f"postgresql://sweep@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_workers_sharing_a_postgresql_study_do_not_duplicate_evaluations(tmp_path: Path, postgres_url: str) -> None:
    cmd = [*sweep_command(tmp_path, 0.2, 2)]
    cmd.insert(cmd.index("--"), f"--storage={postgres_url}")
    machines = [[*cmd[:cmd.index("--")], f"--log_dir={tmp_path / name}", *cmd[cmd.index("--"):]] for name in ("a", "b")]
    procs = [subprocess.Popen(m, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in machines]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    got = calls(tmp_path)
    assert len(got) == 8 and len(set(got)) == 8  # two "machines" (separate run directories), one study
    assert all("x=2" in out for out, _ in outs)
