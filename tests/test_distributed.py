"""Data-parallel runs with real gloo processes on the CPU: N ranks compute what one process computes.

The recurrent search is compared with dropout and the output batch norm off (``EXACT``): both draw
random numbers or take statistics per shard, which is legitimate data-parallel training but not the
one-process computation. Everything else (sharded columns, averaged gradients, reduced rewards,
forgetting errors and perplexities) is the same arithmetic in another order, so figures agree to
float32 rounding: ``RTOL`` relative, or ``ATOL`` absolute for the figures that are differences of
nearly equal values (the controller's advantage, the forgetting metric and its t-interval).
Architectures (sampled, derived) must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modes import builders
import config
import main
from conftest import ROOT, metrics_without_timing
from distributed import comm, context, launch
from utils import UserError

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")

RTOL, ATOL = 1e-5, 1e-4  # ATOL: figures that are differences of nearly equal float32 values (advantage, forgetting)
EXACT = ["--shared_dropout=0", "--shared_dropoute=0", "--shared_dropouti=0", "--shared_wdrop=0", "--rnn_output_norm=none"]
SEARCH = ["--dataset=tiny", "--max_epoch=2", "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2",
          "--train_controller=True", "--start_training_controller=0", "--start_using_fisher=0", "--alpha_fisher=60",
          "--save_epoch=1", "--shared_embed=16", "--shared_hid=16", "--batch_size=4", "--test_batch_size=2",
          "--num_blocks=4", "--derive_num_sample=3", "--forgetting_eval_batches=2", "--use_tensorboard=False", *EXACT]
RETRAIN = ["--mode=retrain", "--arch=random", "--dataset=tiny", "--num_blocks=4", "--retrain_embed=16", "--retrain_hid=16",
           "--retrain_batch_size=8", "--test_batch_size=2", "--retrain_epochs=1", "--use_tensorboard=False", *EXACT]


def ranks(n: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python main.py --num_gpu=n argv``: the launcher's own path, one thread per worker."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *argv, f"--num_gpu={n}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_process(*argv: str) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main.main([*argv, "--num_gpu=0"])
    finally:
        torch.set_num_threads(threads)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (a["epoch"], key)
            else:
                assert a[key] == value, (a["epoch"], key)


def stopped_after_epoch_0(run: Path, name: str) -> Path:
    """A copy of a finished 2-epoch run as it was right after epoch 0 (its checkpoint says how far)."""
    copy = run.parent / name
    shutil.copytree(run, copy)
    shutil.copy(copy / "checkpoints" / "epoch_0000.pt", copy / "checkpoints" / "latest.pt")
    (copy / "checkpoints" / "epoch_0001.pt").unlink()
    return copy


@pytest.fixture(scope="module")
def logs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("dist")
    assert one_process(*SEARCH, "--comment=one", f"--data_dir={data_dir}", f"--log_dir={log_dir}") == 0
    done = ranks(2, *SEARCH, "--comment=two", f"--data_dir={data_dir}", f"--log_dir={log_dir}")
    assert done.returncode == 0, done.stderr[-2000:]
    return log_dir


def test_two_ranks_compute_what_one_process_computes(logs: Path) -> None:
    """Same global batch: the same metrics, architectures and derived cells; every epoch the ranks also
    checked that their shared weights, controller and WPL tables were bit-identical (Trainer.check_ranks_agree)."""
    assert_same_records(metrics_without_timing(logs / "tiny_two"), metrics_without_timing(logs / "tiny_one"))
    log = (logs / "tiny_two" / "train.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" not in log  # only rank 0 writes the run directory
    assert not dist.is_initialized()  # the one-process run made no process group


def test_a_two_rank_checkpoint_resumes_on_one_process(logs: Path, data_dir: Path) -> None:
    assert json.loads((logs / "tiny_two" / "params.json").read_text())["world_size"] == 2
    run = stopped_after_epoch_0(logs / "tiny_two", "tiny_two_to_one")
    assert one_process(*SEARCH, "--comment=two_to_one", "--resume=True", f"--data_dir={data_dir}", f"--log_dir={logs}") == 0
    assert_same_records(metrics_without_timing(run), metrics_without_timing(logs / "tiny_one"))
    assert "written by a job of 2 rank(s); continuing on 1" in (run / "train.log").read_text()
    assert json.loads((run / "params.json").read_text())["world_size"] == 1


@pytest.mark.slow  # another two-rank job (~15 s on 2 idle cores); the 2 -> 1 resume runs by default
def test_a_one_process_checkpoint_resumes_on_two_ranks(logs: Path, data_dir: Path) -> None:
    run = stopped_after_epoch_0(logs / "tiny_one", "tiny_one_to_two")
    done = ranks(2, *SEARCH, "--comment=one_to_two", "--resume=True", f"--data_dir={data_dir}", f"--log_dir={logs}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_records(metrics_without_timing(run), metrics_without_timing(logs / "tiny_one"))


@pytest.mark.slow  # another two-rank job (~12 s on 2 idle cores)
def test_a_two_rank_retrain_epoch_matches_one_process(data_dir: Path, tmp_path: Path) -> None:
    assert one_process(*RETRAIN, "--comment=one", f"--data_dir={data_dir}", f"--log_dir={tmp_path}") == 0
    done = ranks(2, *RETRAIN, "--comment=two", f"--data_dir={data_dir}", f"--log_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_records(metrics_without_timing(tmp_path / "tiny_two"), metrics_without_timing(tmp_path / "tiny_one"))
    one, two = (json.loads((tmp_path / f"tiny_{n}" / "test_results.json").read_text()) for n in ("one", "two"))
    assert two["test_ppl"] == pytest.approx(one["test_ppl"], rel=RTOL) and two["test_tokens"] == one["test_tokens"]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def long_two_rank_job(comment: str, data_dir: Path, log_dir: Path) -> subprocess.Popen:
    """A two-rank search launched by ``--num_gpu=2`` that runs until it is stopped (stderr piped)."""
    argv = [sys.executable, str(ROOT / "main.py"), *SEARCH, "--max_epoch=1000", "--num_gpu=2", f"--comment={comment}",
            f"--data_dir={data_dir}", f"--log_dir={log_dir}"]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc")
def test_a_killed_rank_ends_the_job_with_one_line_naming_it(data_dir: Path, tmp_path: Path) -> None:
    job = long_two_rank_job("killed", data_dir, tmp_path)
    deadline = time.time() + 60
    while len(children(job.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = children(job.pid)
    time.sleep(2.0)  # the workers are importing or training: either way rank 1's death must end the job
    os.kill(workers[1], signal.SIGKILL)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGKILL
    assert f"error: rank 1 (pid {workers[1]}) was killed by SIGKILL; stopping the other 1 rank(s)" in err
    assert all(not Path(f"/proc/{w}").exists() or "zombie" in Path(f"/proc/{w}/status").read_text() for w in workers)


@pytest.mark.slow  # another two-rank job
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc")
def test_sigterm_to_the_launcher_stops_every_rank_with_the_resume_command(data_dir: Path, tmp_path: Path) -> None:
    job = long_two_rank_job("term", data_dir, tmp_path)
    deadline = time.time() + 60
    while not (tmp_path / "tiny_term" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    workers = children(job.pid)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM and len(workers) == 2
    assert "stopped by SIGTERM: " in err and "--comment=term --resume=True" in err and "error: rank" not in err


def test_a_global_batch_that_does_not_divide_among_the_ranks_is_one_clear_error(data_dir: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_world", context.World(rank=0, size=3))
    args = config.parse_args([*SEARCH, f"--data_dir={data_dir}"])
    with pytest.raises(UserError, match="--batch_size=4 is the global batch and must divide evenly among the 3 ranks"):
        builders.build_space(args, torch.device("cpu"))


def _collectives(rank: int, port: int, out: str) -> None:
    """Worker of the collectives test: hand-made gradients averaged, a mismatch detected."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    context.start(context.World(rank, 2, rank), "gloo", 30, torch.device("cpu"))
    used, unused = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    used.grad = torch.tensor([1.0, 2.0]) + 2 * rank  # rank 0: [1, 2], rank 1: [3, 4]
    buffer = torch.tensor([10.0 * rank])
    loss = comm.average_gradients([used, unused], torch.tensor(float(rank)), [buffer])
    results = {"grad": used.grad.tolist(), "unused": unused.grad, "buffer": buffer.tolist(), "loss": float(loss),
               "bytes": comm.STATS.bytes, "gathered": comm.gather_rows(torch.tensor([[rank]])).flatten().tolist()}
    comm.agree("same", comm.fingerprint({"a": [torch.ones(3), 2.0]}))
    try:
        comm.agree("tables", comm.fingerprint({"a": torch.tensor([float(rank)])}))
        results["mismatch"] = ""
    except comm.RanksDiverged as err:
        results["mismatch"] = str(err)
    context.stop()
    Path(out, f"{rank}.json").write_text(json.dumps(results))


def test_collectives_by_hand(tmp_path: Path) -> None:
    from distributed.launch import free_port

    mp.spawn(_collectives, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["grad"] == [2.0, 3.0] and got["unused"] is None  # a parameter without a gradient stays so
        assert got["buffer"] == [5.0] and got["loss"] == 0.5 and got["gathered"] == [0, 1]
        assert got["bytes"] == 4 * (2 + 1 + 1)  # the gradients, the buffer and the loss in one float32 bucket
        assert f"the ranks' tables differ (rank {rank} sees a mismatch)" in got["mismatch"]


def test_single_process_modes_refuse_several_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--mode=derive", "--load_path=nowhere", "--num_gpu=2"]) == 2
    assert "--num_gpu=2: --mode=derive runs in one process (pass --num_gpu=1)" in capsys.readouterr().err
    assert not dist.is_initialized()  # nothing was started
    assert main.main(["--num_gpu=2", "--save_on_signal=True", "--data_dir=nowhere"]) == 2
    assert "--save_on_signal=True runs in one process" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_nccl_without_a_gpu_is_one_line_per_rank(data_dir: Path, tmp_path: Path) -> None:
    done = ranks(2, *SEARCH, "--dist_backend=nccl", f"--data_dir={data_dir}", f"--log_dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--dist_backend=nccl needs a CUDA device per rank" in done.stderr
    assert not any(tmp_path.iterdir())  # no run directory made


def test_a_worker_whose_peer_never_comes_is_one_line(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    port = launch.free_port()
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(port))):
        monkeypatch.setenv(key, value)
    argv = [*SEARCH, "--num_gpu=1", "--dist_timeout=2", f"--data_dir={data_dir}", f"--log_dir={tmp_path}"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert f"rank 0 of 2 could not join the process group at 127.0.0.1:{port} within --dist_timeout=2 s" in err
    assert not dist.is_initialized() and not any(tmp_path.iterdir())
