"""The RNN part of the search benchmark: the trainer's own shared step, Fisher refresh, controller and evaluations.

Every figure times the project's public methods on a trainer built as modes/builders.py builds one (the
RNN space on a synthetic corpus, the REINFORCE sampler, the search's WPL at the paper command's
strength): ``Trainer.train_arch`` with one batch per architecture, without a regulariser (the plain
batch) and with WPL (the penalised batch); WPL's ``end_model`` (the Fisher from one validation
batch and the anchor refresh) timed on its own; ``sampler.sample`` and ``sampler.learn``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

import config
from benchmarks import bench_util as U
from benchmarks.bench_util import ALPHA, Size
from models.rnn_cell import Plan
from models.rnn_graph import ArchTensors, arch_tensors, run_graphed
from models.rnn_graph_fused import FusedNodes
from spaces.rnn import RNNSpace, RNNSpaceConfig
from regularizers.base import HeldOut
from regularizers.wpl_search import SearchWPL, WPLSearchConfig
from samplers import ReinforceConfig, ReinforceSampler
from trainer import Trainer, TrainerConfig


class TimedWPL(SearchWPL):
    """The search's WPL, its penalty call timed (``op_s``); the end of an architecture (the Fisher
    refresh) is left to :func:`fisher_refresh`, so that one ``train_arch`` is one penalised batch."""

    op_s = 0.0

    def add_penalty_grad_(self, names: Iterable[str], alpha: float | None = None) -> Tensor:
        start = U.now()
        value = super().add_penalty_grad_(names, alpha)
        self.op_s = U.now() - start
        return value

    def end_model(self, names: Sequence[str], held_out: HeldOut) -> None:
        pass

    def refresh(self, names: Sequence[str], held_out: HeldOut) -> None:
        super().end_model(names, held_out)


def build_trainer(s: Size, args: argparse.Namespace) -> tuple[Trainer, TimedWPL]:
    torch.manual_seed(args.seed)
    activations = tuple(config.parse_args([]).shared_rnn_activations)
    cfg = config.defaults(RNNSpaceConfig, num_blocks=s.num_blocks, shared_embed=s.hid, shared_hid=s.hid, batch_size=s.batch,
                          shared_rnn_max_length=s.bptt, shared_rnn_activations=activations,
                          **U.preset_fields(RNNSpaceConfig, args.preset))
    space = RNNSpace(U.synthetic_corpus(s, args.seed), cfg, U.DEVICE)
    sampler_cfg = config.defaults(ReinforceConfig, controller_max_step=1, policy_batch_size=1, nb_batch_reward_controller=1,
                                  train_controller=True, reward_c=80.0, amp=args.amp,
                                  controller_device=args.controller_device)
    sampler = ReinforceSampler.build(space, sampler_cfg, U.DEVICE, None)
    wpl = TimedWPL(space.wpl_groups(), config.defaults(WPLSearchConfig, alpha_fisher=ALPHA, lambda_fisher=0.9,
                                                          fisher_clip_by_norm=10.0, momentum=True, wpl_alpha_mode="compound"))
    wpl.begin_epoch(0)
    tcfg = config.defaults(TrainerConfig, num_batch_per_iter=1, amp=args.amp, compile=args.compile,
                           cuda_graphs=args.cuda_graphs, cuda_graph_fusion=getattr(args, "fused_graphs", False))
    space.model.fused = not args.plain_cell
    return Trainer(space, sampler, None, tcfg, None, {}), wpl


def shared_batch(trainer: Trainer, arch: Any, wpl: TimedWPL | None) -> float:
    """One ``Trainer.train_arch`` of one batch (with ``wpl``'s hooks when given); the penalty call's time."""
    wpl_op = 0.0
    if trainer.train_arch(arch, wpl)["batches"] != 1:
        raise RuntimeError("non-finite loss in the benchmark")
    if wpl is not None:
        wpl_op = wpl.op_s
    return wpl_op


def fisher_refresh(trainer: Trainer, arch: Any, wpl: TimedWPL) -> None:
    """WPL's end of an architecture: the Fisher from one validation batch, then the anchors."""
    wpl.refresh(trainer.space.groups_for(arch), lambda objective, what: trainer.held_out_backward(arch, objective, what))
    trainer.step.zero_grad()


def add_counts(out: dict[str, Any], prefix: str, counts: dict[str, float], step_s: float) -> None:
    """``<prefix>_ops`` etc. (``bench_util.profile_counts``) and, on CUDA, the GPU's busy fraction:
    the kernels' summed time over the unprofiled median step time."""
    for key, value in counts.items():
        out[f"{prefix}_{key}"] = value
    if "kernel_s" in counts:
        out[f"{prefix}_gpu_busy"] = counts["kernel_s"] / step_s
    print(f"  {prefix}: " + "  ".join(f"{k} {v:.4g}" for k, v in counts.items()), file=sys.stderr, flush=True)


def graph_content_counts(s: Size, plan: Plan, out: dict[str, Any], fused: FusedNodes | None = None) -> None:
    """Operators of the cell's CUDA-graph passes (``models.rnn_graph``) for one BPTT slice, run eagerly
    on this device: ``*_kernel_ops`` is what a capture holds, i.e. about the kernels one replay runs on
    a GPU (a few ATen operators launch two). Measurable without a GPU, so a change to the graphed
    cell's formulation shows its kernel count here first. ``graph_train_*``: training forward and
    backward; ``graph_infer_*``: the inference pass (rewards, errors, evaluations); with ``fused``
    (``--cuda_graph_fusion``) ``graph_fused_*``, each compiled region counted as one kernel."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s.bptt, s.batch, 2 * s.hid, generator=g).to(U.DEVICE).requires_grad_(True)
    h0 = torch.randn(s.batch, s.hid, generator=g).to(U.DEVICE).requires_grad_(True)
    weights = [(torch.randn(2 * s.hid, s.hid, generator=g) / s.hid**0.5).to(U.DEVICE).requires_grad_(True)
               for _ in range(plan.n)]
    data = ArchTensors(*(t.to(U.DEVICE) for t in arch_tensors(plan)))

    def train() -> None:
        raw, hidden = run_graphed(None, plan, data, x, h0, weights[0], weights[1:], fused)
        torch.autograd.grad((raw, hidden), (x, h0, *weights), (torch.ones_like(raw), torch.ones_like(hidden)))

    @torch.no_grad()
    def infer() -> None:
        run_graphed(None, plan, data, x, h0, weights[0], weights[1:], fused)

    prefix = "graph_fused" if fused is not None else "graph"
    for key, fn in ((f"{prefix}_train", train), (f"{prefix}_infer", infer)):
        fn()
        counts = U.profile_counts(fn)
        out[f"{key}_ops"], out[f"{key}_kernel_ops"] = counts["ops"], counts["kernel_ops"]
    print(f"  {prefix} content: training {out[f'{prefix}_train_kernel_ops']:.0f} computing operators "
          f"({out[f'{prefix}_train_ops']:.0f} in all), inference {out[f'{prefix}_infer_kernel_ops']:.0f} "
          f"({out[f'{prefix}_infer_ops']:.0f})", file=sys.stderr, flush=True)


def bench_rnn(s: Size, args: argparse.Namespace, out: dict[str, Any]) -> None:
    trainer, wpl = build_trainer(s, args)
    space = trainer.space
    arch = space.random_arch(torch.Generator().manual_seed(args.seed))
    out["rnn_arch"] = str(arch)
    out["rnn_params_m"] = sum(p.numel() for p in space.model.parameters()) / 1e6
    tokens = s.batch * s.bptt
    flops = U.rnn_step_flops(s)
    out["rnn_step_gflop"] = flops / 1e9
    # Warm-up: every path once (the WPL state gets a non-zero Fisher and anchors behind the weights).
    for _ in range(args.warmup):
        shared_batch(trainer, arch, wpl)
        fisher_refresh(trainer, arch, wpl)
        shared_batch(trainer, arch, None)
    rec: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rec.setdefault(key, []).append(value)

    for rep in range(args.reps):
        big_wall, big_cpu = U.matmul_gflops(tokens, s.hid, s.hid)
        small_wall, small_cpu = U.matmul_gflops(s.batch, s.hid, s.hid)
        add("mm_big", big_wall), add("mm_big_cpu", big_cpu), add("mm_small", small_wall), add("mm_small_cpu", small_cpu)
        roof, roof_cpu = U.roofline_s(U.rnn_matmuls(s, training=True))
        add("roof", roof), add("roof_cpu", roof_cpu)
        order = (False, True) if rep % 2 == 0 else (True, False)
        times: dict[bool, tuple[float, float]] = {}
        for penalty in order:
            t_op: list[float] = []
            reg = wpl if penalty else None
            times[penalty] = U.timed2(lambda t_op=t_op, reg=reg: t_op.append(shared_batch(trainer, arch, reg)))
            if penalty:
                add("pen_op", t_op[0])
        (plain, plain_cpu), (pen, pen_cpu) = times[False], times[True]
        add("plain", plain), add("plain_cpu", plain_cpu), add("pen", pen)
        add("pen_ratio", pen / plain), add("pen_ratio_cpu", pen_cpu / plain_cpu)
        add("mm_ratio", flops / plain / 1e9 / big_wall), add("mm_ratio_cpu", flops / plain_cpu / 1e9 / big_cpu)
        add("roof_ratio", roof / plain), add("roof_ratio_cpu", roof_cpu / plain_cpu)
        ref, ref_cpu = U.timed2(lambda: fisher_refresh(trainer, arch, wpl))
        add("refresh", ref), add("refresh_ratio", ref / plain), add("refresh_ratio_cpu", ref_cpu / plain_cpu)
        print(f"  rnn rep {rep}: plain {plain:.3f}s (cpu {plain_cpu:.3f}s)  wpl {pen:.3f}s  refresh {ref:.3f}s  "
              f"matmul {big_wall:.1f} GFLOP/s (cpu {big_cpu:.1f})  load {U.loadavg()[0]}", file=sys.stderr, flush=True)
    med_plain = statistics.median(rec["plain"])
    out["rnn_step_s"] = U.summary(rec["plain"])
    out["rnn_step_cpu_s"] = U.summary(rec["plain_cpu"])
    out["rnn_tokens_per_s"] = U.summary([tokens / t for t in rec["plain"]])
    out["rnn_tokens_per_cpu_s"] = U.summary([tokens / t for t in rec["plain_cpu"]])
    out["rnn_gflops"] = U.summary([flops / t / 1e9 for t in rec["plain"]])
    out["rnn_gflops_cpu"] = U.summary([flops / t / 1e9 for t in rec["plain_cpu"]])
    out["matmul_big_shape"] = [tokens, s.hid, s.hid]
    out["matmul_big_gflops"] = U.summary(rec["mm_big"])
    out["matmul_big_gflops_cpu"] = U.summary(rec["mm_big_cpu"])
    out["matmul_small_shape"] = [s.batch, s.hid, s.hid]
    out["matmul_small_gflops"] = U.summary(rec["mm_small"])
    out["matmul_small_gflops_cpu"] = U.summary(rec["mm_small_cpu"])
    out["rnn_matmul_ratio"] = U.summary(rec["mm_ratio"])
    out["rnn_matmul_ratio_cpu"] = U.summary(rec["mm_ratio_cpu"])
    out["rnn_roofline_s"] = U.summary(rec["roof"])
    out["rnn_roofline_ratio"] = U.summary(rec["roof_ratio"])
    out["rnn_roofline_ratio_cpu"] = U.summary(rec["roof_ratio_cpu"])
    out["wpl_step_s"] = U.summary(rec["pen"])
    out["wpl_penalty_ratio"] = U.summary(rec["pen_ratio"])
    out["wpl_penalty_ratio_cpu"] = U.summary(rec["pen_ratio_cpu"])
    out["wpl_penalty_op_s"] = U.summary(rec["pen_op"])
    out["wpl_penalty_op_ratio"] = U.summary([1.0 + t / med_plain for t in rec["pen_op"]])
    out["fisher_refresh_s"] = U.summary(rec["refresh"])
    out["fisher_refresh_batches"] = U.summary(rec["refresh_ratio"])
    out["fisher_refresh_batches_cpu"] = U.summary(rec["refresh_ratio_cpu"])
    out["peak_rss_mib_after_rnn"] = U.peak_rss_mib()
    add_counts(out, "rnn_step", U.profile_counts(lambda: shared_batch(trainer, arch, None)), med_plain)

    graph_content_counts(s, Plan(arch, space.model.next_state), out)
    if getattr(args, "fused_graphs", False):
        graph_content_counts(s, Plan(arch, space.model.next_state), out, FusedNodes())

    # Controller: sampling one architecture, and one REINFORCE step (reward on one validation batch).
    for _ in range(max(1, args.warmup)):
        trainer.sampler.sample(1)
        trainer.sampler.learn(0)
    samples, steps, steps_cpu, roofs, roofs_cpu = [], [], [], [], []
    for _ in range(args.reps):
        samples.append(U.timed(lambda: trainer.sampler.sample(1)))
        roof, roof_cpu = U.roofline_s(U.rnn_matmuls(s, training=False))  # the reward's forward
        wall, cpu = U.timed2(lambda: trainer.sampler.learn(0))
        steps.append(wall), steps_cpu.append(cpu), roofs.append(roof / wall), roofs_cpu.append(roof_cpu / cpu)
    out["controller_sample_s"] = U.summary(samples)
    out["controller_step_s"] = U.summary(steps)
    out["controller_step_cpu_s"] = U.summary(steps_cpu)
    out["controller_step_roofline_ratio"] = U.summary(roofs)
    out["controller_step_roofline_ratio_cpu"] = U.summary(roofs_cpu)
    add_counts(out, "controller_step", U.profile_counts(lambda: trainer.sampler.learn(0)), statistics.median(steps))
    if trainer.sampler.overlap:  # a GPU: the same step with the controller's backward after the reward, as before
        trainer.sampler.overlap = False
        out["controller_step_no_overlap_s"] = U.summary([U.timed(lambda: trainer.sampler.learn(0)) for _ in range(args.reps)])
        trainer.sampler.overlap = True

    # Evaluation: Space.error (the forgetting metric's and the derive's unit: the fixed validation
    # batches in eval mode), one slice of a full-split evaluation, and a whole derive when asked.
    space.error(arch)
    out["rnn_error_batches"] = len(space.fixed_batches)
    out["rnn_error_s"] = U.summary([U.timed(lambda: space.error(arch)) for _ in range(args.reps)])
    slices = len(range(0, space.valid_data.size(0) - 1, s.bptt))
    out["rnn_eval_slice_s"] = U.summary([U.timed(lambda: space.evaluate(arch, "valid")) / slices for _ in range(args.reps)])
    if args.derive_samples > 0:
        def derive() -> None:
            best, _ = trainer.derive(args.derive_samples)
            space.evaluate(best, "valid")
        out["rnn_derive_s"] = U.summary([U.timed(derive) for _ in range(max(1, args.reps // 2))])
    if U.DEVICE.type == "cuda":
        out["peak_gpu_mib_after_rnn"] = U.peak_gpu_mib()
