"""Each experiment's step at the widths the experiments run, the project's code beside a hand-written loop.

    python -m benchmarks.bench_parity [--pairs N] [--threads N] [--min_seconds S] [--only rnn64,reinforce,...] [--json FILE]

Workloads (project code | hand loop from ``benchmarks/hand_loops.py``, same sizes):

* ``rnn64`` / ``rnn128``: one shared training batch of a sampled cell, hid 64 with 3 nodes and hid 128
  with 8 nodes, batch 64 x 35, 10,000 words (``Trainer.train_arch`` | embedding, the cell unrolled,
  tied decoder, cross-entropy, clip, SGD; without the project's dropouts and output batch norm);
* ``reinforce``: one REINFORCE step at hid 64, 8 nodes (``ReinforceSampler.learn``: sample, reward on
  one validation batch, update | an LSTM-cell policy, the hand RNN's reward, Adam);
* ``continual``: one split-MNIST-sized MLP update with EWC's penalty (784-400-400-2, batch 128, Adam:
  ``engine.Step`` with the regulariser's hooks | loss, backward, ``F * (theta - theta*)`` added, Adam);
* ``nao``: one NAO controller round at ``--nao_size=small`` (one controller epoch over the pool of 40
  and one generation pass over the top 4: ``NAOSampler.train_controller`` and ``NAOController.move`` |
  the same encoder / predictor / decoder written out);
* ``pathnet``: one PathNet generation (two paths of L=3 x M=10 modules of 20 units, N=3, 50 batches of
  16, noise 0.5: ``experiments.pathnet.tournament.tournament`` | separate ``nn.Linear`` modules, a loop).

Each workload runs its two versions in ``--pairs`` alternated pairs (project first, then hand first, ...),
after one warm-up of each (a timing repeats its workload until it lasts ``--min_seconds``, the same number
of calls for both), and prints the median of the per-pair ratios project / hand, from wall-clock
and from process CPU time (with one thread on a loaded machine, CPU time is the steadier), with the
threads, the load average before and after, and the CPU model. No figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

import config
from benchmarks import hand_loops as H
from benchmarks.bench_util import Size, loadavg, timed2

Workload = tuple[Callable[[], Any], Callable[[], Any], str]


def _ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(seed=0, amp=False, compile=False, cuda_graphs=False, preset="paper",
                              controller_device="cpu", plain_cell=False, **kw)


def _rnn_size(hid: int, nodes: int) -> Size:
    return Size(10_000, hid, nodes, 64, 35, 0, 0, 0, 0, 0, 0)


def rnn(hid: int, nodes: int) -> Workload:
    from benchmarks.bench_rnn import build_trainer

    s = _rnn_size(hid, nodes)
    trainer, _ = build_trainer(s, _ns())
    arch = trainer.space.random_arch(torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    hand = H.HandRNN(s.ntokens, hid, nodes)
    optim = torch.optim.SGD(hand.parameters(), lr=20.0)
    x = torch.randint(s.ntokens, (s.bptt, s.batch))
    y = torch.randint(s.ntokens, (s.bptt, s.batch))
    h = [torch.zeros(s.batch, hid)]

    def hand_batch() -> None:
        h[0] = H.rnn_batch(hand, optim, arch, x, y, h[0], 0.25)

    return (lambda: trainer.train_arch(arch)), hand_batch, f"hid {hid}, {nodes} nodes: {arch}"


def reinforce() -> Workload:
    from benchmarks.bench_rnn import build_trainer

    s = _rnn_size(64, 8)
    trainer, _ = build_trainer(s, _ns())
    space = trainer.space
    torch.manual_seed(0)
    controller = H.HandController(space.decision_sizes)
    optim = torch.optim.Adam(controller.parameters(), lr=3.5e-4)
    model = H.HandRNN(s.ntokens, 64, 8)
    x = torch.randint(s.ntokens, (s.bptt, s.batch))
    y = torch.randint(s.ntokens, (s.bptt, s.batch))
    state = H.ReinforceState()
    return (lambda: trainer.sampler.learn(0)), (lambda: H.reinforce_step(controller, optim, model, space.decode, x, y, state)), \
        "hid 64, 8 nodes, policy batch 1, reward on one 64 x 35 batch"


def continual() -> Workload:
    from engine.guard import NonFiniteGuard
    from engine.step import Step
    from models.continual_net import mlp
    from regularizers import REGULARIZERS

    torch.manual_seed(0)
    model = mlp(784, [400, 400], [2] * 5)
    reg = REGULARIZERS["ewc"](model.groups(), 100.0, seed=0, samples=256)
    names = ["trunk.0", "trunk.2", "head.0"]
    with torch.no_grad():
        for name in names:  # a non-zero importance, as after the first task
            for f in reg.importance[name]:
                f.uniform_(0, 1e-3)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = Step(optim, model.parameters(), 0.0, NonFiniteGuard("loss", "", lambda: "", lambda: ""))
    x, y = torch.randn(128, 784), torch.randint(2, (128,))

    def project() -> None:
        def hooks() -> Any:
            reg.after_backward(names)
            return reg.add_penalty_grad_(names)

        if step.update(torch.nn.functional.cross_entropy(model(x, head=0), y), hooks):
            reg.after_step(names)

    hand = torch.nn.Sequential(torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
                               torch.nn.Linear(400, 2))
    importance = [torch.rand_like(p) * 1e-3 for p in hand.parameters()]
    anchor = [p.detach().clone() for p in hand.parameters()]
    hand_optim = torch.optim.Adam(hand.parameters(), lr=1e-3)
    return project, (lambda: H.mlp_step(hand, hand_optim, x, y, importance, anchor, 100.0)), \
        "MLP 784-400-400-2, batch 128, EWC penalty, Adam"


def nao() -> Workload:
    from benchmarks.bench_nao import nao_sampler

    sampler = nao_sampler("small")
    c = sampler.cfg = dataclasses.replace(sampler.cfg, nao_controller_epochs=1)
    seqs = sampler._sequences(sampler.pool)
    target = torch.rand(len(seqs), generator=torch.Generator().manual_seed(1))
    top = sampler._sequences(sampler.pool[:c.nao_top_k])

    def project() -> None:
        sampler.train_controller(seqs, target)
        sampler.controller.eval()
        sampler.controller.move(top, 1.0)

    ctrl = sampler.controller
    torch.manual_seed(0)
    hand = H.HandNAO(ctrl.enc_embed.num_embeddings, ctrl.length, c.nao_embed, c.nao_hid, c.nao_mlp_layers, c.nao_mlp_hid)
    optim = torch.optim.Adam(hand.parameters(), lr=c.nao_controller_lr, weight_decay=c.nao_controller_l2)
    g = torch.Generator().manual_seed(2)
    return project, (lambda: H.nao_round(hand, optim, seqs, target, c.nao_controller_batch, c.nao_mse_weight,
                                         c.nao_controller_clip, top, ctrl.valid_mask, g)), \
        f"pool {len(seqs)}, batch {c.nao_controller_batch}, top {c.nao_top_k}, one epoch + one generation pass"


def pathnet() -> Workload:
    from benchmarks.bench_pathnet import synthetic_task
    from experiments.pathnet.tournament import make_step, tournament, train_path
    from models.pathnet import Path as PNPath
    from models.pathnet import PathNet
    from modes.pathnet import pathnet_configs

    net_cfg, cfg = pathnet_configs(config.parse_args(["--mode=pathnet"]))  # the paper's sizes
    L, M, N, units = net_cfg.layers, net_cfg.modules, net_cfg.active, net_cfg.units
    task, g = synthetic_task(), torch.Generator().manual_seed(1)
    net = PathNet(784, L, M, units, [2])
    step = make_step(net, cfg.lr)
    population = [PNPath.random(g, L, M, N) for _ in range(cfg.population)]

    def project() -> None:
        tournament(population, lambda p: train_path(net, p, 0, task, cfg, step, g), g,
                   lambda p: p.mutate(g, M, 1 / (N * L), "wrap"), 2.0, 1)

    hand = H.HandPathNet(784, L, M, units, 2)
    optim = torch.optim.SGD(hand.parameters(), lr=cfg.lr)
    paths = [[list(layer) for layer in p.layers] for p in population]
    gh = torch.Generator().manual_seed(1)
    return project, (lambda: H.pathnet_generation(hand, optim, paths, task.x_train, task.y_train, cfg.batches,
                                                  cfg.batch_size, cfg.noise, task.low, task.high, gh, M, 1 / (N * L))), \
        f"L={L} x M={M} modules of {units}, N={N}, {cfg.batches} batches of {cfg.batch_size}"


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "rnn64": lambda: rnn(64, 3), "rnn128": lambda: rnn(128, 8), "reinforce": reinforce, "continual": continual,
    "nao": nao, "pathnet": pathnet,
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def compare(project: Callable[[], Any], hand: Callable[[], Any], pairs: int, min_seconds: float) -> dict[str, Any]:
    """Alternated pairs after one warm-up of each; the medians of the per-call times and of the per-pair ratios.

    Each timing runs its workload ``calls`` times, as many as make the slower warm-up last ``min_seconds``
    (the same count for both): a single continual step (a few ms) is too short to time alone on a loaded CPU.
    """
    warm = max(timed2(project)[1], timed2(hand)[1])
    calls = max(1, math.ceil(min_seconds / max(warm, 1e-6)))

    def repeated(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn()
        return run

    rec: dict[str, list[float]] = {k: [] for k in ("p", "p_cpu", "h", "h_cpu", "ratio", "ratio_cpu")}
    for i in range(pairs):
        runs: dict[str, tuple[float, float]] = {}
        for name in (("p", "h") if i % 2 == 0 else ("h", "p")):
            runs[name] = timed2(repeated(project if name == "p" else hand))
        (pw, pc), (hw, hc) = runs["p"], runs["h"]
        for key, value in (("p", pw / calls), ("p_cpu", pc / calls), ("h", hw / calls), ("h_cpu", hc / calls),
                           ("ratio", pw / hw), ("ratio_cpu", pc / hc)):
            rec[key].append(value)
    return {k: statistics.median(v) for k, v in rec.items()} | {"ratios_cpu": rec["ratio_cpu"], "calls": calls}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min_seconds", type=float, default=0.2, help="least CPU time of one timing (calls repeated)")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    torch.set_num_threads(args.threads)
    config.parse_args([])  # the plug-in registries, as main.py loads them
    out: dict[str, Any] = {"threads": args.threads, "pairs": args.pairs, "cpu": cpu_model(), "torch": torch.__version__,
                           "loadavg_start": loadavg(), "workloads": {}}
    print(f"bench_parity: {args.pairs} alternated pairs, {args.threads} thread(s), {out['cpu']}, load {out['loadavg_start']}")
    print(f"{'workload':10s} {'project':>10s} {'hand':>10s} {'ratio':>6s} {'ratio (cpu)':>12s} {'range (cpu)':>12s} "
          f"{'calls':>5s}  load  | what")
    for name in names:
        project, hand, what = WORKLOADS[name]()
        r = compare(project, hand, args.pairs, args.min_seconds)
        r.update(what=what, load=loadavg())
        out["workloads"][name] = r
        print(f"{name:10s} {r['p'] * 1e3:8.1f}ms {r['h'] * 1e3:8.1f}ms {r['ratio']:6.2f} {r['ratio_cpu']:12.2f}  "
              f"{min(r['ratios_cpu']):5.2f}-{max(r['ratios_cpu']):<5.2f} {r['calls']:6d}  {r['load'][0]:4.1f}  | {what}",
              flush=True)
    out["loadavg_end"] = loadavg()
    print(f"load average at the end: {out['loadavg_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
