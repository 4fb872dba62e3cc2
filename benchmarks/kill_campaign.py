"""Interrupt real tiny searches at random moments, resume them, and count what held.

    python -m benchmarks.kill_campaign [--runs 24] [--seed 0] [--work DIR]

Each run is a ``main.py`` process (3 epochs on a generated corpus, one CPU thread) that gets SIGKILL,
SIGTERM, SIGINT, or SIGTERM with ``--save_on_signal=True`` at a uniformly random moment of the training (from the
line that names the run directory to the one that says it is done, timed on an uninterrupted run), then ``--resume=True``. Printed per run and in total: the exit code and last stderr line of the interrupted
process, the temporary files it left, whether the resumed metrics.jsonl equals the uninterrupted
run's (timing fields aside) and whether every numbered checkpoint exists. A ``--save_on_signal``
checkpoint taken mid-epoch restarts that epoch, so such a run is counted as resumed, not identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from data.text import write_toy_corpus as write_corpus  # the tests' generated corpus

ROOT = Path(__file__).resolve().parent.parent

SMALL = ["--dataset=tiny", "--max_epoch=3", "--shared_max_step=4", "--num_batch_per_iter=2", "--controller_max_step=2",
         "--train_controller=True", "--save_epoch=1", "--shared_embed=8", "--shared_hid=8", "--batch_size=4",
         "--test_batch_size=2", "--num_blocks=3", "--derive_num_sample=2", "--num_gpu=0", "--forgetting_eval_batches=1",
         "--alpha_fisher=5", "--use_tensorboard=True", "--policy_batch_size=2"]
STARTED, DONE = " INFO run directory ", " INFO done: "  # main.py's lines before the first epoch and after the last
KINDS = ["SIGKILL", "SIGTERM", "SIGINT", "SIGTERM+save_on_signal"]


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_s", "elapsed_s")} for line in lines]


def start(work: Path, comment: str, *extra: str) -> subprocess.Popen:
    argv = [*SMALL, f"--data_dir={work / 'data'}", f"--log_dir={work / 'logs'}", f"--comment={comment}", *extra]
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def until(child: subprocess.Popen, marker: str) -> list[str]:
    """The stderr lines up to the one holding ``marker``."""
    assert child.stderr is not None
    lines = []
    for line in child.stderr:
        lines.append(line)
        if marker in line:
            break
    return lines


def trial(work: Path, index: int, kind: str, at: float, reference: list[dict]) -> dict:
    comment = f"run{index:02d}"
    extra = ["--save_on_signal=True"] if kind.endswith("save_on_signal") else []
    child = start(work, comment, *extra)
    head = until(child, STARTED)
    time.sleep(at)
    child.send_signal(getattr(signal, kind.split("+")[0]))
    err = "".join(head) + child.communicate()[1]
    run = work / "logs" / f"tiny_{comment}"
    temps = sorted(p.name for p in run.rglob(".*.tmp")) if run.exists() else []
    mid_epoch, finished = "a resume from it restarts" in err, DONE in err
    for _ in range(3):  # a resume interrupted by nothing should finish the first time
        resumed = start(work, comment, "--resume=True", *extra)
        resumed.communicate()
        if resumed.returncode == 0:
            break
    numbered = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))
    last = (err.strip().splitlines() or [""])[-1]
    return {"kind": kind, "at_s": round(at, 2), "code": child.returncode, "last_line": last[:160],
            "traceback": "Traceback" in err, "temps_left": temps, "resume_code": resumed.returncode,
            "identical": metrics(run) == reference, "mid_epoch": mid_epoch, "finished": finished,
            "numbered_ok": numbered == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"],
            "temps_after_resume": len(list(run.rglob(".*.tmp")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the corpus and the runs (default: a temporary one)")
    opts = parser.parse_args()
    work = opts.work or Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    write_corpus(work / "data" / "tiny")
    base = start(work, "base")
    until(base, STARTED)
    t0 = time.time()
    until(base, DONE)
    duration = time.time() - t0
    base.communicate()
    assert base.returncode == 0, "the uninterrupted run failed"
    reference = metrics(work / "logs" / "tiny_base")
    rng = random.Random(opts.seed)
    results = []
    for i in range(opts.runs):
        result = trial(work, i, KINDS[i % len(KINDS)], rng.uniform(0.0, duration), reference)
        results.append(result)
        print(json.dumps(result), flush=True)
    count = Counter()
    for r in results:
        count["tried"] += 1
        count["finished before the signal"] += r["finished"]
        count["resumed (exit 0)"] += r["resume_code"] == 0
        count["identical to uninterrupted"] += r["identical"]
        count["mid-epoch --save_on_signal (epoch restarted)"] += r["mid_epoch"]
        count["identical, not counting mid-epoch saves"] += r["identical"] or r["mid_epoch"]
        count["numbered checkpoints all present"] += r["numbered_ok"]
        count["runs that left temp files when interrupted"] += bool(r["temps_left"])
        count["temp files left after resume"] += r["temps_after_resume"]
        count["tracebacks"] += r["traceback"]
    print(f"uninterrupted training: {duration:.1f} s; work folder {work}")
    for key, value in count.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
