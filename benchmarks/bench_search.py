"""Speed of the search's hot paths on synthetic data, with the project's own models and trainer.

    python benchmarks/bench_search.py --size paper|small|tiny [--json FILE] [--reps N] [--threads N] [--preset paper|enas]
        [--device cpu|cuda] [--tf32] [--derive-samples N]   (see benchmarks/README.md, gpu_check.sh)

Sizes (the RNN part; batch 64 x BPTT 35 and a 10,000-word vocabulary unless noted):

* ``paper``: embed = hid = 1000, 12 nodes; micro-CNN with 384 final filters, 3 modules x 5 normal
  cells, 5 blocks, batch 32 on 32x32x3 images.
* ``small``: embed = hid = 256, 12 nodes; micro-CNN with 96 final filters, 3 x 2 normal cells.
* ``tiny``: a smoke size that runs in seconds (hid 32, 4 nodes, batch 8, BPTT 12, vocabulary 200).

Every figure is the median / min / max over ``--reps`` repetitions after ``--warmup`` untimed ones:

* ``rnn_step_s`` / ``rnn_tokens_per_s``: one shared training batch exactly as ``Trainer.train_arch``
  runs it (zero_grad, ``space.train_loss``, backward, ``clip_grad_norm_``, SGD step).
* ``rnn_gflops`` and ``rnn_matmul_ratio``: matmul FLOPs of that step per second, and its ratio to
  the dense ``[T*B x hid] @ [hid x hid]`` matmul rate measured in the same process right before
  each repetition (``matmul_*_gflops``); the ratio is computed per repetition, so it is the figure
  that survives a loaded machine.
* ``wpl_penalty_ratio``: a training batch with ``WPL.add_penalty_grad_`` over the architecture's edges
  divided by the same batch without it, from interleaved pairs (order alternated); and
  ``wpl_penalty_op_ratio``: 1 + (time of the ``add_penalty_grad_`` call alone) / (plain batch).
* ``fisher_refresh_batches``: ``Trainer._fisher_from_validation`` + ``WPL.refresh_anchors`` in units
  of a plain training batch (interleaved pairs).
* ``controller_sample_s``: ``Trainer.sample_archs(1)``; ``controller_step_s``: one REINFORCE step
  (``Trainer.controller_phase`` with one step of a policy batch of 1, one validation batch reward).
* ``cnn_step_s`` / ``cnn_images_per_s``: one micro-CNN shared training batch (forward, backward,
  clip, SGD with Nesterov momentum) when ``models/cnn.py`` is importable; the paper code's model
  (``main.py``'s defaults), or with ``--preset=enas`` the ENAS-style one.
  ``cnn_params_m`` / ``cnn_params_used_m``: the shared model's parameters, and those the step trains.
* ``*_cpu`` variants: the same from process CPU time instead of wall-clock time. With one thread
  on a machine shared with other jobs, CPU time is close to what an idle core would take.
* ``peak_rss_mib_after_rnn`` / ``peak_rss_mib``: peak resident memory of the process after the RNN
  part and at the end (``getrusage``).

The load average is recorded at the start and the end: on a shared machine, compare only figures
taken under similar loads, and prefer the matmul ratios. No figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from utils import keep_freed_memory  # noqa: E402


@dataclass(frozen=True)
class Size:
    ntokens: int
    hid: int
    num_blocks: int
    batch: int
    bptt: int
    cnn_filters: int
    cnn_repeat: int
    cnn_modules: int
    cnn_blocks: int
    cnn_batch: int
    cnn_image: int


SIZES = {
    "paper": Size(10_000, 1000, 12, 64, 35, 384, 5, 3, 5, 32, 32),
    "small": Size(10_000, 256, 12, 64, 35, 96, 2, 3, 5, 32, 32),
    "tiny": Size(200, 32, 4, 8, 12, 24, 1, 3, 3, 4, 16),
}
ALPHA = 60.0  # the paper command's --alpha_fisher (compound mode, Fisher clip 10)


# ------------------------------------------------------------------------------------ helpers
DEVICE = torch.device("cpu")  # --device; every timed region ends (and starts) with a CUDA synchronisation


def now() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gpu_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if DEVICE.type == "cuda" else 0.0


def timed(fn: Callable[[], Any]) -> float:
    start = now()
    fn()
    return now() - start


def timed2(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    wall, cpu = now(), time.process_time()
    fn()
    return now() - wall, time.process_time() - cpu


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {loadavg()}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def matmul_gflops(m: int, k: int, n: int, calls: int = 3) -> tuple[float, float]:
    """Rate of an ``[m x k] @ [k x n]`` fp32 matmul (operands reused, warm), per wall-clock second
    and per CPU second: the median of ``calls`` timings of enough products to last ~0.1 s."""
    a, b = _MM_CACHE.setdefault((m, k, n), (torch.randn(m, k, device=DEVICE), torch.randn(k, n, device=DEVICE)))
    out = torch.empty(m, n, device=DEVICE)
    flop = 2.0 * m * k * n
    inner = max(1, int(5e9 / flop))  # about 0.1 s at 50 GFLOP/s

    def run() -> None:
        for _ in range(inner):
            torch.mm(a, b, out=out)

    run()
    times = [timed2(run) for _ in range(calls)]
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    return flop * inner / wall / 1e9, flop * inner / max(cpu, 1e-9) / 1e9


_MM_CACHE: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def rnn_step_flops(s: Size) -> float:
    """Matmul FLOPs of one training batch: (cell + decoder) forward, x3 for forward + backward."""
    tokens = s.bptt * s.batch
    cell = tokens * (2 * 2 * s.hid * s.hid  # node 0's input projection (embed = hid)
                     + s.num_blocks * 2 * 2 * s.hid * s.hid)  # W_h0 and one fused (2 hid x hid) per edge
    decoder = tokens * 2 * s.hid * s.ntokens
    return 3.0 * (cell + decoder)


def synthetic_corpus(s: Size, seed: int) -> Any:
    from data.text import Corpus

    g = torch.Generator().manual_seed(seed)
    n_train = s.batch * (s.bptt * 8 + 1)
    n_valid = s.batch * (s.bptt * 8 + 1)
    words = [f"w{i}" for i in range(s.ntokens)]
    return Corpus(words, torch.randint(s.ntokens, (n_train,), generator=g),
                  torch.randint(s.ntokens, (n_valid,), generator=g), torch.randint(s.ntokens, (s.bptt * 4,), generator=g))


def preset_fields(cfg_type: type, preset: str) -> dict[str, Any]:
    """The values ``--preset`` gives the fields of a space configuration (config.PRESETS)."""
    import dataclasses

    import config

    names = {f.name for f in dataclasses.fields(cfg_type)}
    return {k: v for k, v in config.PRESETS[preset].items() if k in names}


def build_trainer(s: Size, args: argparse.Namespace) -> Any:
    import config
    from models.controller import Controller
    from models.rnn_space import RNNSpace, RNNSpaceConfig
    from models.wpl import WPL
    from trainer import Trainer, TrainerConfig

    torch.manual_seed(args.seed)
    cfg = config.defaults(RNNSpaceConfig, num_blocks=s.num_blocks, shared_embed=s.hid, shared_hid=s.hid, batch_size=s.batch,
                          shared_rnn_max_length=s.bptt, **preset_fields(RNNSpaceConfig, args.preset))
    space = RNNSpace(synthetic_corpus(s, args.seed), cfg, DEVICE)
    controller = Controller(space.decision_sizes, 100, 5.0, 2.5).to(DEVICE)
    wpl = WPL(space.wpl_groups(), lambda_fisher=0.9, clip_by_norm=10.0, momentum=True, mode="compound")
    tcfg = TrainerConfig(num_batch_per_iter=1, controller_max_step=1, policy_batch_size=1, nb_batch_reward_controller=1,
                         train_controller=True, reward_c=80.0)
    extra = {k: v for k, v in (("amp", args.amp), ("compile", args.compile)) if hasattr(tcfg, k)}
    if (args.amp or args.compile) and not extra:
        print("note: this trainer has no amp/compile options; running fp32 eager", file=sys.stderr)
    tcfg = replace(tcfg, **extra)
    space.model.fused = not args.plain_cell
    return Trainer(space, controller, wpl, tcfg, None, {})


def autocast_of(trainer: Any) -> Callable[[], Any]:
    """The trainer's own autocast context when it has one (``--amp`` wiring), else a no-op."""
    return getattr(trainer, "autocast", None) or nullcontext


def shared_batch(trainer: Any, arch: Any, groups: list[str], penalty: bool) -> float:
    """The body of ``Trainer.train_arch`` for one batch; returns the time of the penalty call alone."""
    space, model, wpl = trainer.space, trainer.space.model, trainer.wpl
    trainer.shared_optim.zero_grad(set_to_none=True)
    with autocast_of(trainer)():
        out = space.train_loss(arch)
    if not bool(torch.isfinite(out.total)):
        raise RuntimeError("non-finite loss in the benchmark")
    out.total.backward()
    t_pen = 0.0
    if penalty:
        start = now()
        wpl.add_penalty_grad_(groups, ALPHA)
        t_pen = now() - start
    nn.utils.clip_grad_norm_(model.parameters(), trainer.spec.grad_clip)
    trainer.shared_optim.step()
    return t_pen


def fisher_refresh(trainer: Any, arch: Any, groups: list[str]) -> None:
    trainer._fisher_from_validation(arch, groups, ALPHA)
    trainer.wpl.refresh_anchors()


# ------------------------------------------------------------------------------------- parts
def bench_rnn(s: Size, args: argparse.Namespace, out: dict[str, Any]) -> None:
    trainer = build_trainer(s, args)
    space = trainer.space
    arch = space.random_arch(torch.Generator().manual_seed(args.seed))
    groups = space.groups_for(arch)
    out["rnn_arch"] = str(arch)
    out["rnn_params_m"] = sum(p.numel() for p in space.model.parameters()) / 1e6
    tokens = s.batch * s.bptt
    flops = rnn_step_flops(s)
    out["rnn_step_gflop"] = flops / 1e9
    # Warm-up: every path once (the WPL state gets a non-zero Fisher and anchors behind the weights).
    for _ in range(args.warmup):
        shared_batch(trainer, arch, groups, penalty=True)
        fisher_refresh(trainer, arch, groups)
        shared_batch(trainer, arch, groups, penalty=False)
    rec: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rec.setdefault(key, []).append(value)

    for rep in range(args.reps):
        big_wall, big_cpu = matmul_gflops(tokens, s.hid, s.hid)
        small_wall, small_cpu = matmul_gflops(s.batch, s.hid, s.hid)
        add("mm_big", big_wall), add("mm_big_cpu", big_cpu), add("mm_small", small_wall), add("mm_small_cpu", small_cpu)
        order = (False, True) if rep % 2 == 0 else (True, False)
        times: dict[bool, tuple[float, float]] = {}
        for penalty in order:
            t_op: list[float] = []
            times[penalty] = timed2(lambda: t_op.append(shared_batch(trainer, arch, groups, penalty)))
            if penalty:
                add("pen_op", t_op[0])
        (plain, plain_cpu), (pen, pen_cpu) = times[False], times[True]
        add("plain", plain), add("plain_cpu", plain_cpu), add("pen", pen)
        add("pen_ratio", pen / plain), add("pen_ratio_cpu", pen_cpu / plain_cpu)
        add("mm_ratio", flops / plain / 1e9 / big_wall), add("mm_ratio_cpu", flops / plain_cpu / 1e9 / big_cpu)
        ref, ref_cpu = timed2(lambda: fisher_refresh(trainer, arch, groups))
        add("refresh", ref), add("refresh_ratio", ref / plain), add("refresh_ratio_cpu", ref_cpu / plain_cpu)
        print(f"  rnn rep {rep}: plain {plain:.3f}s (cpu {plain_cpu:.3f}s)  wpl {pen:.3f}s  refresh {ref:.3f}s  "
              f"matmul {big_wall:.1f} GFLOP/s (cpu {big_cpu:.1f})  load {loadavg()[0]}", file=sys.stderr, flush=True)
    med_plain = statistics.median(rec["plain"])
    out["rnn_step_s"] = summary(rec["plain"])
    out["rnn_step_cpu_s"] = summary(rec["plain_cpu"])
    out["rnn_tokens_per_s"] = summary([tokens / t for t in rec["plain"]])
    out["rnn_tokens_per_cpu_s"] = summary([tokens / t for t in rec["plain_cpu"]])
    out["rnn_gflops"] = summary([flops / t / 1e9 for t in rec["plain"]])
    out["rnn_gflops_cpu"] = summary([flops / t / 1e9 for t in rec["plain_cpu"]])
    out["matmul_big_shape"] = [tokens, s.hid, s.hid]
    out["matmul_big_gflops"] = summary(rec["mm_big"])
    out["matmul_big_gflops_cpu"] = summary(rec["mm_big_cpu"])
    out["matmul_small_shape"] = [s.batch, s.hid, s.hid]
    out["matmul_small_gflops"] = summary(rec["mm_small"])
    out["matmul_small_gflops_cpu"] = summary(rec["mm_small_cpu"])
    out["rnn_matmul_ratio"] = summary(rec["mm_ratio"])
    out["rnn_matmul_ratio_cpu"] = summary(rec["mm_ratio_cpu"])
    out["wpl_step_s"] = summary(rec["pen"])
    out["wpl_penalty_ratio"] = summary(rec["pen_ratio"])
    out["wpl_penalty_ratio_cpu"] = summary(rec["pen_ratio_cpu"])
    out["wpl_penalty_op_s"] = summary(rec["pen_op"])
    out["wpl_penalty_op_ratio"] = summary([1.0 + t / med_plain for t in rec["pen_op"]])
    out["fisher_refresh_s"] = summary(rec["refresh"])
    out["fisher_refresh_batches"] = summary(rec["refresh_ratio"])
    out["fisher_refresh_batches_cpu"] = summary(rec["refresh_ratio_cpu"])
    out["peak_rss_mib_after_rnn"] = peak_rss_mib()

    # Controller: sampling one architecture, and one REINFORCE step (reward on one validation batch).
    for _ in range(max(1, args.warmup)):
        trainer.sample_archs(1)
        trainer.controller_phase(0)
    samples, steps, steps_cpu = [], [], []
    for _ in range(args.reps):
        samples.append(timed(lambda: trainer.sample_archs(1)))
        wall, cpu = timed2(lambda: trainer.controller_phase(0))
        steps.append(wall), steps_cpu.append(cpu)
    out["controller_sample_s"] = summary(samples)
    out["controller_step_s"] = summary(steps)
    out["controller_step_cpu_s"] = summary(steps_cpu)

    # Evaluation: Space.error (the forgetting metric's and the derive's unit: the fixed validation
    # batches in eval mode), one slice of a full-split evaluation, and a whole derive when asked.
    space.error(arch)
    out["rnn_error_batches"] = len(space.fixed_batches)
    out["rnn_error_s"] = summary([timed(lambda: space.error(arch)) for _ in range(args.reps)])
    slices = len(range(0, space.valid_data.size(0) - 1, s.bptt))
    out["rnn_eval_slice_s"] = summary([timed(lambda: space.evaluate(arch, "valid")) / slices for _ in range(args.reps)])
    if args.derive_samples > 0:
        def derive() -> None:
            best, _ = trainer.derive(args.derive_samples)
            space.evaluate(best, "valid")
        out["rnn_derive_s"] = summary([timed(derive) for _ in range(max(1, args.reps // 2))])
    if DEVICE.type == "cuda":
        out["peak_gpu_mib_after_rnn"] = peak_gpu_mib()


def bench_cnn(s: Size, args: argparse.Namespace, out: dict[str, Any]) -> None:
    try:
        import config
        from models import cnn
        from models.cnn_space import PAPER_OPS, CNNSpaceConfig
    except Exception as err:  # noqa: BLE001 - any import problem means "not available"
        out["cnn"] = f"unavailable: {type(err).__name__}: {err}"
        return
    torch.manual_seed(args.seed)
    ops = list(PAPER_OPS)
    try:
        style = cnn.CNNStyle.enas() if args.preset == "enas" else cnn.CNNStyle()
        model = cnn.SharedCNN(3, 10, s.cnn_blocks, s.cnn_filters, s.cnn_modules, s.cnn_repeat, ops, ops, style,
                              image_size=(s.cnn_image, s.cnn_image),
                              channels_last=config.defaults(CNNSpaceConfig).cnn_channels_last and not args.nchw).to(DEVICE)
        g = torch.Generator().manual_seed(args.seed)
        tokens = [int(torch.randint(n, (1,), generator=g)) for n in cnn.decision_sizes(s.cnn_blocks, len(ops), len(ops))]
        arch = cnn.decode(tokens, ops, ops)
    except Exception as err:  # noqa: BLE001
        out["cnn"] = f"unavailable: {type(err).__name__}: {err}"
        return
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    images = torch.randn(s.cnn_batch, 3, s.cnn_image, s.cnn_image, generator=g).to(DEVICE)
    labels = torch.randint(10, (s.cnn_batch,), generator=g).to(DEVICE)
    amp = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=args.amp)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with amp:
            logits = model(images, arch)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()

    for _ in range(args.warmup):
        step()
    times, cpu = [], []
    for rep in range(args.reps):
        wall, c = timed2(step)
        times.append(wall), cpu.append(c)
        print(f"  cnn rep {rep}: {wall:.3f}s (cpu {c:.3f}s)  load {loadavg()[0]}", file=sys.stderr, flush=True)
    out["cnn_arch"] = str(arch)
    out["cnn_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["cnn_params_used_m"] = sum(p.numel() for p in model.parameters() if p.grad is not None) / 1e6
    out["cnn_step_s"] = summary(times)
    out["cnn_step_cpu_s"] = summary(cpu)
    out["cnn_images_per_s"] = summary([s.cnn_batch / t for t in times])
    out["cnn_images_per_cpu_s"] = summary([s.cnn_batch / t for t in cpu])

    @torch.inference_mode()
    def eval_batch() -> None:  # what Space.error, rewards and evaluations run per batch
        model.eval()
        with amp:
            (model(images, arch).argmax(1) == labels).sum().item()
        model.train()

    eval_batch()
    out["cnn_eval_batch_s"] = summary([timed(eval_batch) for _ in range(args.reps)])
    from models.controller import Controller

    controller = Controller(cnn.decision_sizes(s.cnn_blocks, len(ops), len(ops)), 100, 8.0, 2.5).to(DEVICE)
    ctrl_optim = torch.optim.Adam(controller.parameters(), lr=3.5e-3)

    def controller_update() -> None:  # a REINFORCE step without its reward's forward passes
        sample = controller(1)
        [cnn.decode(t, ops, ops) for t in sample.tokens.tolist()]
        loss = -(sample.log_probs * 0.5).sum()
        ctrl_optim.zero_grad(set_to_none=True)
        loss.backward()
        ctrl_optim.step()

    controller_update()
    out["cnn_controller_update_s"] = summary([timed(controller_update) for _ in range(args.reps)])


# -------------------------------------------------------------------------------- projection
# The paper's two search commands (tests/conftest.py PAPER_RNN_COMMAND, tests/test_cnn.py VERBATIM)
# and the defaults they rely on: what one search epoch runs, counted in benchmarked units.
RNN_CMD = dict(shared_steps=60, batches=7, controller_steps=2000, derive_samples=100, save_epoch=30,
               valid_slices=33)  # PTB valid: 73,760 tokens / 64 columns = 1,152 rows, 33 slices of 35
CNN_CMD = dict(shared_steps=70, batches=7, controller_steps=1000, reward_batches=20, error_batches=4,
               derive_samples=100, save_epoch=10, valid_batches=157)  # 5,000 held-out images / 32


def projection(out: dict[str, Any]) -> list[str]:
    """Projected seconds of one search epoch, from the medians measured above (see benchmarks/README.md).

    RNN (WPL on from epoch 5, Fisher from one validation batch after each step, the forgetting
    metric's two ``Space.error`` calls per step, one REINFORCE step per controller step):
        60 x (sample + 7 x WPL batch + Fisher refresh + 2 x error) + 2000 x REINFORCE step
        derive (every 30th epoch) = 100 x error + 33 x valid slice
    CNN (WPL off: --start_using_fisher=50000; reward on 20 validation batches):
        70 x (7 x batch + 2 x 4 x eval batch) + 1000 x (20 x eval batch + controller update)
        derive (every 10th epoch) = (100 x 4 + 157) x eval batch
    """
    med = {k: v["median"] for k, v in out.items() if isinstance(v, dict) and "median" in v}
    lines = []
    if {"wpl_step_s", "fisher_refresh_s", "rnn_error_s", "controller_step_s"} <= med.keys():
        c = RNN_CMD
        shared = c["shared_steps"] * (med["controller_sample_s"] + c["batches"] * med["wpl_step_s"]
                                      + med["fisher_refresh_s"] + 2 * med["rnn_error_s"])
        ctrl = c["controller_steps"] * med["controller_step_s"]
        derive = c["derive_samples"] * med["rnn_error_s"] + c["valid_slices"] * med["rnn_eval_slice_s"]
        out["projected_rnn_epoch_s"] = shared + ctrl
        out["projected_rnn_derive_s"] = derive
        lines += [f"RNN command, one epoch: {shared + ctrl:.1f} s = shared phase {shared:.1f} s "
                  f"[60 x (sample + 7 x WPL batch + Fisher refresh + 2 x error)] + controller {ctrl:.1f} s "
                  f"[2000 x REINFORCE step]",
                  f"  + derive every 30th epoch: {derive:.1f} s [100 x error + 33 x PTB valid slice]"
                  + (f" (measured with --derive-samples {out['derive_samples']}: {med['rnn_derive_s']:.1f} s)"
                     if "rnn_derive_s" in med else "")]
    if {"cnn_step_s", "cnn_eval_batch_s", "cnn_controller_update_s"} <= med.keys():
        c, ev = CNN_CMD, med["cnn_eval_batch_s"]
        shared = c["shared_steps"] * (c["batches"] * med["cnn_step_s"] + 2 * c["error_batches"] * ev)
        ctrl = c["controller_steps"] * (c["reward_batches"] * ev + med["cnn_controller_update_s"])
        derive = (c["derive_samples"] * c["error_batches"] + c["valid_batches"]) * ev
        out["projected_cnn_epoch_s"] = shared + ctrl
        out["projected_cnn_derive_s"] = derive
        lines += [f"CNN command, one epoch: {shared + ctrl:.1f} s = shared phase {shared:.1f} s "
                  f"[70 x (7 x batch + 2 x 4 x eval batch)] + controller {ctrl:.1f} s "
                  f"[1000 x (20 x eval batch + controller update)]",
                  f"  + derive every 10th epoch: {derive:.1f} s [(100 x 4 + 157) x eval batch]"]
    return lines


# -------------------------------------------------------------------------------------- main
def fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if isinstance(value, dict):
        return (f"{value['median']:.{digits}g}{unit}  (min {value['min']:.{digits}g}, max {value['max']:.{digits}g}, "
                f"n={value['n']})")
    if isinstance(value, float):
        return f"{value:.{digits}g}{unit}"
    return str(value)


ROWS = [
    ("rnn_step_s", "RNN training batch", " s"),
    ("rnn_step_cpu_s", "RNN training batch, CPU time", " s"),
    ("rnn_tokens_per_s", "RNN tokens/s", ""),
    ("rnn_tokens_per_cpu_s", "RNN tokens per CPU second", ""),
    ("rnn_gflops", "RNN achieved GFLOP/s", ""),
    ("rnn_gflops_cpu", "RNN GFLOP per CPU second", ""),
    ("matmul_big_gflops", "dense matmul [T*B x hid]@[hid x hid] GFLOP/s", ""),
    ("matmul_big_gflops_cpu", "  same, GFLOP per CPU second", ""),
    ("matmul_small_gflops", "dense matmul [B x hid]@[hid x hid] GFLOP/s", ""),
    ("matmul_small_gflops_cpu", "  same, GFLOP per CPU second", ""),
    ("rnn_matmul_ratio", "RNN GFLOP/s / big matmul GFLOP/s", ""),
    ("rnn_matmul_ratio_cpu", "  same, from CPU times", ""),
    ("wpl_penalty_ratio", "WPL batch / plain batch (A/B)", ""),
    ("wpl_penalty_ratio_cpu", "  same, from CPU times", ""),
    ("wpl_penalty_op_ratio", "WPL 1 + penalty op / plain batch", ""),
    ("fisher_refresh_batches", "Fisher refresh, in training batches", ""),
    ("fisher_refresh_batches_cpu", "  same, from CPU times", ""),
    ("controller_sample_s", "controller sample", " s"),
    ("controller_step_s", "controller REINFORCE step", " s"),
    ("controller_step_cpu_s", "  same, CPU time", " s"),
    ("rnn_error_s", "RNN Space.error (forgetting / derive unit)", " s"),
    ("rnn_eval_slice_s", "RNN evaluation, one 35-step slice", " s"),
    ("rnn_derive_s", "RNN derive (--derive-samples) + valid eval", " s"),
    ("cnn_step_s", "CNN training batch", " s"),
    ("cnn_step_cpu_s", "CNN training batch, CPU time", " s"),
    ("cnn_images_per_s", "CNN images/s", ""),
    ("cnn_images_per_cpu_s", "CNN images per CPU second", ""),
    ("cnn_eval_batch_s", "CNN eval batch (inference)", " s"),
    ("cnn_controller_update_s", "CNN controller update (no reward)", " s"),
    ("peak_gpu_mib_after_rnn", "peak GPU memory after the RNN part", " MiB"),
    ("peak_gpu_mib", "peak GPU memory", " MiB"),
    ("peak_rss_mib_after_rnn", "peak RSS after the RNN part", " MiB"),
    ("peak_rss_mib", "peak RSS", " MiB"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core; under load, 1 is often fastest)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--parts", default="rnn,cnn", help="comma-separated subset of rnn,cnn")
    p.add_argument("--amp", action="store_true", help="bf16 autocast via the trainer's --amp wiring")
    p.add_argument("--compile", action="store_true", help="torch.compile via the trainer's --compile wiring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("paper", "enas"), default="paper",
                   help="modelling choices of the shared models, as main.py's --preset (docs/fidelity.md)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (CUDA: timed "
                   "regions are bracketed by torch.cuda.synchronize(); peak GPU memory is reported)")
    p.add_argument("--tf32", action="store_true", help="CUDA: let fp32 matmuls and convolutions use TF32")
    p.add_argument("--derive-samples", type=int, default=0,
                   help="also time Trainer.derive over this many samples plus a valid evaluation (0: only "
                        "the projection from Space.error; the paper's commands derive over 100)")
    p.add_argument("--nchw", action="store_true", help="run the CNN in NCHW layout (--cnn_channels_last=false)")
    p.add_argument("--plain-cell", action="store_true",
                   help="run the RNN cell step by step with ordinary autograd ops (SharedRNN.fused=False): "
                        "the formulation of the paper's code, the 'before' of the fused cell")
    p.add_argument("--no-malloc-tune", dest="malloc_tune", action="store_false",
                   help="leave glibc malloc as it is (main.py keeps freed memory in the heap on CPU runs, "
                        "see utils.keep_freed_memory; this shows what that saves)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
        torch.cuda.reset_peak_memory_stats()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    malloc_tuned = keep_freed_memory() if args.malloc_tune else False
    s = SIZES[args.size]
    parts = set(args.parts.split(","))
    out: dict[str, Any] = {
        "size": args.size, "shape": s.__dict__, "threads": args.threads, "reps": args.reps, "warmup": args.warmup,
        "device": str(DEVICE), "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else None,
        "tf32": args.tf32, "derive_samples": args.derive_samples,
        "amp": args.amp, "compile": args.compile, "malloc_tuned": malloc_tuned, "cnn_channels_last": not args.nchw,
        "plain_cell": args.plain_cell, "preset": args.preset, "torch": torch.__version__, "python": platform.python_version(),
        "cpus": os.cpu_count(), "uptime_start": uptime(), "loadavg_start": loadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"bench_search --size {args.size}  threads {args.threads}  reps {args.reps}  | {out['uptime_start']}",
          file=sys.stderr, flush=True)
    t0 = now()
    if "rnn" in parts:
        bench_rnn(s, args, out)
    if "cnn" in parts:
        bench_cnn(s, args, out)
    out["peak_rss_mib"] = peak_rss_mib()
    if DEVICE.type == "cuda":
        out["peak_gpu_mib"] = peak_gpu_mib()
    out["uptime_end"] = uptime()
    out["loadavg_end"] = loadavg()
    out["wall_s"] = now() - t0
    print(f"\n== bench_search --size {args.size} on {out['gpu'] or args.device} (threads {args.threads}, {args.reps} reps, amp {args.amp}, "
          f"compile {args.compile}, malloc tuned {malloc_tuned}{', plain cell' if args.plain_cell else ''}) ==")
    print(f"start: {out['uptime_start']}\nend:   {out['uptime_end']}")
    for key, label, unit in ROWS:
        if key in out:
            print(f"{label:48s} {fmt(out[key], unit)}")
    lines = projection(out)
    if lines:
        print("\nprojected from the medians above (formulas: benchmarks/README.md):\n" + "\n".join(lines))
    if isinstance(out.get("cnn"), str):
        print(f"{'CNN':48s} {out['cnn']}")
    if "rnn_arch" in out:
        print(f"RNN arch: {out['rnn_arch']}  ({out['rnn_params_m']:.1f}M params, {out['rnn_step_gflop']:.1f} GFLOP/step)")
    if "cnn_arch" in out:
        print(f"CNN ({out['preset']}) arch: {out['cnn_arch']}  ({out['cnn_params_m']:.3f}M params, "
              f"{out['cnn_params_used_m']:.3f}M trained per step)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
