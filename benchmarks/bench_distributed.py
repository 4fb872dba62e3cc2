"""Data-parallel scaling on this machine: 1 rank x T threads against N ranks x T/N threads (gloo or NCCL).

    python -m benchmarks.bench_distributed [--ranks 2] [--threads 2] [--steps 6] [--hid 256] [--paper-bytes]
        [--device cpu|cuda] [--json FILE]

* ``rnn_tokens_per_s``: global tokens (batch 64 x BPTT 35) per second of the search's shared step
  (``Trainer.train_arch`` of one batch with the paper's WPL: the update plus the Fisher refresh's held-out
  backward, each gradient averaged over the ranks), on a synthetic 10,000-word corpus, hidden size ``--hid``.
* ``cnn_images_per_s``: global images (batch 32) per second of the micro-CNN shared step (``engine.Step``:
  forward, backward, gradient average, clip, Nesterov SGD) at the ``small`` size of bench_search.py.
* ``allreduce_ms_per_step`` / ``allreduce_mib_per_step``: the gradient bucket's all-reduce time and size
  per shared step (``distributed.comm.STATS``), measured inside the same steps.
* ``--paper-bytes``: the bucket's size per shared step at the paper's RNN (embed = hid = 1000, 12 nodes,
  10,000 words), and its all-reduce timed alone on the ranks (the step itself would take minutes here).

Each configuration runs in fresh processes (``torch.multiprocessing``); figures are the median over
``--steps`` timed steps after two untimed ones. No figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any


import torch
import torch.multiprocessing as mp

from benchmarks import bench_util as U

BATCH, BPTT, VOCAB, CNN_BATCH = 64, 35, 10_000, 32


def rnn_trainer(hid: int, blocks: int, device: torch.device) -> tuple[Any, Any, Any]:
    """The search's trainer on a synthetic corpus, the paper command's WPL, a fixed random cell."""
    import config
    from spaces.rnn import RNNSpace, RNNSpaceConfig
    from regularizers.wpl_search import SearchWPL, WPLSearchConfig
    from samplers.random import RandomSampler
    from trainer import Trainer, TrainerConfig

    s = U.Size(VOCAB, hid, blocks, BATCH, BPTT, 0, 0, 0, 0, 0, 0)
    cfg = config.defaults(RNNSpaceConfig, num_blocks=blocks, shared_embed=hid, shared_hid=hid, batch_size=BATCH,
                          shared_rnn_max_length=BPTT, shared_rnn_activations=tuple(config.parse_args([]).shared_rnn_activations))
    space = RNNSpace(U.synthetic_corpus(s, 0), cfg, device)
    wpl = SearchWPL(space.wpl_groups(), config.defaults(WPLSearchConfig, alpha_fisher=60.0, fisher_clip_by_norm=10.0,
                                                           start_using_fisher=0))
    wpl.begin_epoch(0)
    trainer = Trainer(space, RandomSampler(space, 0), wpl, config.defaults(TrainerConfig, num_batch_per_iter=1), None, {})
    return trainer, wpl, space.random_arch(torch.Generator().manual_seed(0))


def cnn_step(device: torch.device) -> Any:
    """One micro-CNN shared step on this rank's share of a synthetic global batch."""
    from distributed.context import world
    from engine import NonFiniteGuard, Step
    from models import cnn
    from spaces.cnn import PAPER_OPS

    s, ops = U.SIZES["small"], list(PAPER_OPS)
    torch.manual_seed(0)
    model = cnn.SharedCNN(3, 10, s.cnn_blocks, s.cnn_filters, s.cnn_modules, s.cnn_repeat, ops, ops, cnn.CNNStyle(),
                          image_size=(32, 32)).to(device).train()
    g = torch.Generator().manual_seed(0)
    arch = cnn.decode([int(torch.randint(n, (1,), generator=g)) for n in cnn.decision_sizes(s.cnn_blocks, 5, 5)], ops, ops)
    part = world().part(CNN_BATCH)
    images = torch.randn(CNN_BATCH, 3, 32, 32, generator=g)[part].to(device)
    labels = torch.randint(10, (CNN_BATCH,), generator=g)[part].to(device)
    optim = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    guard = NonFiniteGuard("loss", "", lambda: "", lambda: "")
    step = Step(optim, model.parameters(), 5.0, guard, buffers=model.buffers())
    return lambda: step.update(torch.nn.functional.cross_entropy(model(images, arch), labels))


def timed_steps(fn: Any, steps: int) -> list[float]:
    from distributed import comm

    for _ in range(2):
        fn()
    comm.barrier()
    times = []
    for _ in range(steps):
        start = U.now()
        fn()
        times.append(U.now() - start)
    return times


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace, out: str) -> None:
    from distributed import comm, context

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    threads = max(1, args.threads // world_size)
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    U.DEVICE = device
    backend = "nccl" if device.type == "cuda" else "gloo"
    context.start(context.World(rank, world_size, rank), backend, 300, device)
    result: dict[str, Any] = {"ranks": world_size, "threads_per_rank": threads}
    trainer, wpl, arch = rnn_trainer(args.hid, 12, device)
    comm.STATS.__init__()
    times = timed_steps(functools.partial(trainer.train_arch, arch, wpl), args.steps)
    calls_per_step = comm.STATS.calls / (args.steps + 2)
    result.update(rnn_step_s=statistics.median(times), rnn_tokens_per_s=BATCH * BPTT / statistics.median(times),
                  rnn_allreduce_ms_per_step=1e3 * comm.STATS.seconds / (args.steps + 2),
                  rnn_allreduce_mib_per_step=comm.STATS.bytes / (args.steps + 2) / 2**20,
                  rnn_allreduces_per_step=calls_per_step)
    del trainer, wpl
    step = cnn_step(device)
    comm.STATS.__init__()
    times = timed_steps(step, args.steps)
    result.update(cnn_step_s=statistics.median(times), cnn_images_per_s=CNN_BATCH / statistics.median(times),
                  cnn_allreduce_ms_per_step=1e3 * comm.STATS.seconds / (args.steps + 2),
                  cnn_allreduce_mib_per_step=comm.STATS.bytes / (args.steps + 2) / 2**20)
    if args.paper_bytes and world_size > 1:
        result.update(paper_bucket(device, args.steps))
    context.stop()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def paper_bucket(device: torch.device, reps: int) -> dict[str, float]:
    """The gradient bucket of one paper-size shared step: the parameters a sampled 12-node cell uses, plus
    the embedding and decoder (tied), the Fisher refresh's second bucket alike; its all-reduce timed."""
    from distributed import comm
    from models.rnn import SharedRNN

    torch.manual_seed(0)
    model = SharedRNN(VOCAB, 1000, 1000, 12, tie_weights=True).to(device)
    arch_edges = [(j - 1, j) for j in range(1, 12)]  # any 12-node cell uses 11 edges
    used = {SharedRNN.edge_name(i, j) for i, j in arch_edges}
    params = [p for name, p in model.named_parameters() if not name.startswith("edges.") or name.split(".")[1] in used]
    for p in params:
        p.grad = torch.randn_like(p)
    loss = torch.zeros((), device=device)
    comm.barrier()
    times = []
    for _ in range(reps):
        start = U.now()
        comm.average_gradients(params, loss)
        times.append(U.now() - start)
    mib = sum(p.numel() for p in params) * 4 / 2**20
    return {"paper_bucket_mib": mib, "paper_allreduce_ms": 1e3 * statistics.median(times),
            "paper_mib_per_shared_step": 2 * mib}


def run(world_size: int, args: argparse.Namespace) -> dict[str, Any]:
    from distributed.launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(worker, args=(world_size, free_port(), args, out), nprocs=world_size)
        return json.loads(Path(out).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads in all: 1 rank x T against N ranks x T/N")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--hid", type=int, default=256)
    p.add_argument("--paper-bytes", action="store_true")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", type=str, default="")
    args = p.parse_args()
    results = {"load_start": U.loadavg(), "one": run(1, args), "many": run(args.ranks, args), "load_end": U.loadavg()}
    one, many = results["one"], results["many"]
    for key in ("rnn_tokens_per_s", "cnn_images_per_s"):
        results[f"{key}_speedup"] = many[key] / one[key]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
