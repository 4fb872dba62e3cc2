"""Run a finished two-rank job many times and count how it exits: every run must exit 0.

    python -m benchmarks.stress_dist_exit [--runs 50] [--ranks 2] [--json FILE]

A tiny two-rank search (gloo on the CPU, ``python main.py --num_gpu=2``, one thread per rank) on a small
synthetic corpus. A rank that aborts after its work is done (``terminate called without an active
exception``, SIGABRT) makes the launcher report a finished job as failed: this counts exit codes and
such lines over ``--runs`` jobs. Not part of the test suite (about 10 s a job on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from data.text import write_toy_corpus

ROOT = Path(__file__).resolve().parent.parent
SEARCH = ["--dataset=tiny", "--max_epoch=1", "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2",
          "--train_controller=True", "--start_training_controller=0", "--start_using_fisher=0", "--save_epoch=1",
          "--shared_embed=16", "--shared_hid=16", "--batch_size=4", "--test_batch_size=2", "--num_blocks=4",
          "--derive_num_sample=2", "--forgetting_eval_batches=2", "--use_tensorboard=False"]


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the counts here")
    args = p.parse_args(argv)
    codes: Counter[int] = Counter()
    aborts = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_toy_corpus(Path(tmp) / "data" / "tiny")
        for i in range(args.runs):
            done = subprocess.run([sys.executable, str(ROOT / "main.py"), *SEARCH, f"--num_gpu={args.ranks}",
                                   f"--data_dir={tmp}/data", f"--log_dir={tmp}/logs", f"--comment=run{i}"],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=False,
                                  timeout=300)
            codes[done.returncode] += 1
            aborted = "terminate called" in done.stderr
            aborts += aborted
            if done.returncode != 0 or aborted:
                tail = done.stderr.strip().splitlines()[-3:]
                print(f"run {i}: exit {done.returncode}: {' | '.join(tail)}", file=sys.stderr, flush=True)
            print(f"\r{i + 1}/{args.runs} runs, exit codes {dict(codes)}", end="", file=sys.stderr, flush=True)
    out = {"runs": args.runs, "ranks": args.ranks, "exit_codes": {str(k): v for k, v in codes.items()},
           "terminate_lines": aborts, "wall_s": round(time.perf_counter() - started, 1)}
    print(f"\n{json.dumps(out)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
