"""Speed of the search's hot paths on synthetic data, with the project's own models and trainer.

    python -m benchmarks.bench_search --size paper|small|tiny [--json FILE] [--reps N] [--threads N] [--preset paper|enas]
        [--device cpu|cuda] [--tf32] [--derive-samples N]   (see benchmarks/README.md, gpu_check.sh)

Sizes (the RNN part; batch 64 x BPTT 35 and a 10,000-word vocabulary unless noted):

* ``paper``: embed = hid = 1000, 12 nodes; micro-CNN with 384 final filters, 3 modules x 5 normal
  cells, 5 blocks, batch 32 on 32x32x3 images.
* ``small``: embed = hid = 256, 12 nodes; micro-CNN with 96 final filters, 3 x 2 normal cells.
* ``tiny``: a smoke size that runs in seconds (hid 32, 4 nodes, batch 8, BPTT 12, vocabulary 200).

Every figure is the median / min / max over ``--reps`` repetitions after ``--warmup`` untimed ones:

* ``rnn_step_s`` / ``rnn_tokens_per_s``: one shared training batch: ``Trainer.train_arch`` of one batch
  without a regulariser (``engine.Step``: ``space.train_loss``, backward, ``clip_grad_norm_``, SGD step).
* ``rnn_gflops`` and ``rnn_matmul_ratio``: matmul FLOPs of that step per second, and its ratio to
  the dense ``[T*B x hid] @ [hid x hid]`` matmul rate measured in the same process right before
  each repetition (``matmul_*_gflops``); the ratio is computed per repetition, so it is the figure
  that survives a loaded machine.
* ``rnn_roofline_s`` / ``rnn_roofline_ratio``: the same batch's matmuls each at the rate of its own
  shape, measured alone in the same repetition (``bench_util.rnn_matmuls``: the recurrence's
  ``[B x hid]`` products per step, the rest over ``T*B`` rows), and that floor over the batch's time:
  1.0 is a step made of nothing but its matmuls. ``controller_step_roofline_ratio``: the same for
  the REINFORCE step against its reward's forward. The shapes are the fused cell's: with
  ``--plain-cell`` (weight gradients step by step) the ratio is against a floor that cell cannot reach.
* ``wpl_penalty_ratio``: ``Trainer.train_arch`` of one batch with the search's WPL (its hooks, the
  penalty gradient over the architecture's edges) divided by the same batch without it, from interleaved pairs (order alternated); and
  ``wpl_penalty_op_ratio``: 1 + (time of the ``add_penalty_grad_`` call alone) / (plain batch).
* ``fisher_refresh_batches``: WPL's ``end_model`` (the Fisher from one validation batch through
  ``Trainer.held_out_backward``, the anchor refresh) in units of a plain training batch (interleaved pairs).
* ``controller_sample_s``: ``sampler.sample(1)``; ``controller_step_s``: one REINFORCE step
  (``sampler.learn`` with one step of a policy batch of 1, one validation batch reward).
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
The parts live in bench_rnn.py and bench_cnn.py, the timers and sizes in bench_util.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import bench_util as U
from benchmarks.bench_cnn import bench_cnn
from benchmarks.bench_rnn import bench_rnn
from utils import keep_freed_memory

# -------------------------------------------------------------------------------- projection
# The paper's two search commands (tests/conftest.py PAPER_RNN_COMMAND, tests/test_cnn.py VERBATIM)
# and the defaults they rely on: what one search epoch runs, counted in benchmarked units.
RNN_CMD = dict(shared_steps=60, batches=7, controller_steps=2000, derive_samples=100, save_epoch=30,
               valid_slices=33)  # PTB valid: 73,760 tokens / 64 columns = 1,152 rows, 33 slices of 35
CNN_CMD = dict(shared_steps=70, batches=7, controller_steps=1000,
               derive_samples=100, save_epoch=10, valid_batches=157)  # 5,000 held-out images / 32


def projection(out: dict[str, Any]) -> list[str]:
    """Projected seconds of one search epoch, from the medians measured above (see benchmarks/README.md).

    RNN (WPL on from epoch 5, Fisher from one validation batch after each step, the forgetting
    metric's two ``Space.error`` calls per step, one REINFORCE step per controller step):
        60 x (sample + 7 x WPL batch + Fisher refresh + 2 x error) + 2000 x REINFORCE step
        derive (every 30th epoch) = 100 x error + 33 x valid slice
    CNN (WPL off: --start_using_fisher=50000; reward on 20 validation batches, error on 4, each run
    as CNNSpace runs them: together up to --cnn_eval_images per forward):
        70 x (7 x batch + 2 x error) + 1000 x (reward + controller update)
        derive (every 10th epoch) = 100 x error + 157 valid batches, run as the reward's 20 are (157/20 rewards)
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
    if {"cnn_step_s", "cnn_eval_batch_s", "cnn_reward_s", "cnn_error_s", "cnn_controller_update_s"} <= med.keys():
        c = CNN_CMD
        shared = c["shared_steps"] * (c["batches"] * med["cnn_step_s"] + 2 * med["cnn_error_s"])
        ctrl = c["controller_steps"] * (med["cnn_reward_s"] + med["cnn_controller_update_s"])
        derive = c["derive_samples"] * med["cnn_error_s"] + c["valid_batches"] / 20 * med["cnn_reward_s"]
        out["projected_cnn_epoch_s"] = shared + ctrl
        out["projected_cnn_derive_s"] = derive
        lines += [f"CNN command, one epoch: {shared + ctrl:.1f} s = shared phase {shared:.1f} s "
                  f"[70 x (7 x batch + 2 x error)] + controller {ctrl:.1f} s "
                  f"[1000 x (reward + controller update)]",
                  f"  + derive every 10th epoch: {derive:.1f} s [100 x error + 157 valid batches, run as 157/20 rewards]"]
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
    ("rnn_roofline_s", "RNN batch's matmuls, each at its shape's rate", " s"),
    ("rnn_roofline_ratio", "  that roofline / RNN training batch", ""),
    ("rnn_roofline_ratio_cpu", "  same, from CPU times", ""),
    ("wpl_penalty_ratio", "WPL batch / plain batch (A/B)", ""),
    ("wpl_penalty_ratio_cpu", "  same, from CPU times", ""),
    ("wpl_penalty_op_ratio", "WPL 1 + penalty op / plain batch", ""),
    ("fisher_refresh_batches", "Fisher refresh, in training batches", ""),
    ("fisher_refresh_batches_cpu", "  same, from CPU times", ""),
    ("controller_sample_s", "controller sample", " s"),
    ("controller_step_s", "controller REINFORCE step", " s"),
    ("controller_step_cpu_s", "  same, CPU time", " s"),
    ("controller_step_no_overlap_s", "  same, the controller's backward after the reward (GPU)", " s"),
    ("controller_step_roofline_ratio", "  its reward forward's roofline / step", ""),
    ("controller_step_roofline_ratio_cpu", "  same, from CPU times", ""),
    ("rnn_step_ops", "RNN training batch: dispatched operators", ""),
    ("rnn_step_kernel_ops", "  of which compute (views, allocations left out)", ""),
    ("rnn_step_cell_ops", "  of which in the cell (one graph on CUDA)", ""),
    ("rnn_step_launches", "  host launches (kernels, graphs, copies)", ""),
    ("rnn_step_kernels", "  device kernels", ""),
    ("rnn_step_syncs", "  host synchronisations", ""),
    ("rnn_step_gpu_busy", "  GPU busy (kernel time / step time)", ""),
    ("graph_train_kernel_ops", "RNN cell's CUDA-graph content, training slice (computing operators, run eagerly)", ""),
    ("graph_infer_kernel_ops", "  same, inference slice (the reward's forward)", ""),
    ("graph_fused_train_kernel_ops", "  with --fused-graphs, training slice", ""),
    ("graph_fused_infer_kernel_ops", "  with --fused-graphs, inference slice", ""),
    ("controller_step_ops", "REINFORCE step: dispatched operators", ""),
    ("controller_step_kernel_ops", "  of which compute (views, allocations left out)", ""),
    ("controller_step_cell_ops", "  of which in the cell (one graph on CUDA)", ""),
    ("controller_step_launches", "  host launches (kernels, graphs, copies)", ""),
    ("controller_step_kernels", "  device kernels", ""),
    ("controller_step_syncs", "  host synchronisations", ""),
    ("controller_step_gpu_busy", "  GPU busy (kernel time / step time)", ""),
    ("rnn_error_s", "RNN Space.error (forgetting / derive unit)", " s"),
    ("rnn_eval_slice_s", "RNN evaluation, one 35-step slice", " s"),
    ("rnn_derive_s", "RNN derive (--derive-samples) + valid eval", " s"),
    ("cnn_step_s", "CNN training batch", " s"),
    ("cnn_step_cpu_s", "CNN training batch, CPU time", " s"),
    ("cnn_images_per_s", "CNN images/s", ""),
    ("cnn_images_per_cpu_s", "CNN images per CPU second", ""),
    ("cnn_eval_batch_s", "CNN eval batch (inference)", " s"),
    ("cnn_eval_images", "CNN images per inference forward (--cnn_eval_images; 0: one batch)", ""),
    ("cnn_reward_s", "CNN reward: 20 eval batches as the space runs them", " s"),
    ("cnn_reward_ops", "  dispatched operators", ""),
    ("cnn_reward_kernel_ops", "  of which compute (views, allocations left out)", ""),
    ("cnn_reward_launches", "  host launches (kernels, graphs, copies)", ""),
    ("cnn_reward_kernels", "  device kernels", ""),
    ("cnn_reward_syncs", "  host synchronisations", ""),
    ("cnn_error_s", "CNN Space.error: 4 eval batches as the space runs them", " s"),
    ("cnn_error_ops", "  dispatched operators", ""),
    ("cnn_controller_update_s", "CNN controller update (no reward)", " s"),
    ("peak_gpu_mib_after_rnn", "peak GPU memory after the RNN part", " MiB"),
    ("peak_gpu_mib", "peak GPU memory", " MiB"),
    ("peak_rss_mib_after_rnn", "peak RSS after the RNN part", " MiB"),
    ("peak_rss_mib", "peak RSS", " MiB"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(U.SIZES), default="small")
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
    p.add_argument("--eager-cell", action="store_true",
                   help="CUDA: run the RNN cell eagerly instead of as CUDA graphs (main.py's --cuda_graphs=False)")
    p.add_argument("--controller-device", choices=("cpu", "model"), default="cpu",
                   help="where the controller runs, as main.py's --controller_device (model: the --device)")
    p.add_argument("--nchw", action="store_true", help="run the CNN in NCHW layout (--cnn_channels_last=false)")
    p.add_argument("--fused-graphs", action="store_true",
                   help="CUDA graphs with each node's elementwise work compiled into one kernel (main.py's "
                        "--cuda_graph_fusion); on any device also counts that formulation's graph content")
    p.add_argument("--cnn-eval-images", dest="cnn_eval_images", type=int, default=-1,
                   help="as main.py's: images per CNN inference forward (-1: the device's default; 0: one batch)")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                   help="CUDA: leave cuDNN's autotuning off (main.py's --cnn_cudnn_benchmark=False)")
    p.add_argument("--plain-cell", action="store_true",
                   help="run the RNN cell step by step with ordinary autograd ops (SharedRNN.fused=False): "
                        "the formulation of the paper's code, the 'before' of the fused cell")
    p.add_argument("--no-malloc-tune", dest="malloc_tune", action="store_false",
                   help="leave glibc malloc as it is (main.py keeps freed memory in the heap on CPU runs, "
                        "see utils.keep_freed_memory; this shows what that saves)")
    args = p.parse_args(argv)
    U.DEVICE = torch.device(args.device)
    if U.DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
        torch.cuda.reset_peak_memory_stats()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    args.cuda_graphs = U.DEVICE.type == "cuda" and not args.eager_cell
    malloc_tuned = keep_freed_memory() if args.malloc_tune else False
    s = U.SIZES[args.size]
    parts = set(args.parts.split(","))
    out: dict[str, Any] = {
        "size": args.size, "shape": s.__dict__, "threads": args.threads, "reps": args.reps, "warmup": args.warmup,
        "device": str(U.DEVICE), "gpu": torch.cuda.get_device_name() if U.DEVICE.type == "cuda" else None,
        "tf32": args.tf32, "derive_samples": args.derive_samples,
        "amp": args.amp, "compile": args.compile, "malloc_tuned": malloc_tuned, "cnn_channels_last": not args.nchw,
        "plain_cell": args.plain_cell, "cuda_graphs": args.cuda_graphs, "fused_graphs": args.fused_graphs, "controller_device": args.controller_device, "preset": args.preset, "torch": torch.__version__, "python": platform.python_version(),
        "cpus": os.cpu_count(), "uptime_start": U.uptime(), "loadavg_start": U.loadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"bench_search --size {args.size}  threads {args.threads}  reps {args.reps}  | {out['uptime_start']}",
          file=sys.stderr, flush=True)
    t0 = U.now()
    if "rnn" in parts:
        bench_rnn(s, args, out)
    if "cnn" in parts:
        bench_cnn(s, args, out)
    out["peak_rss_mib"] = U.peak_rss_mib()
    if U.DEVICE.type == "cuda":
        out["peak_gpu_mib"] = U.peak_gpu_mib()
    out["uptime_end"] = U.uptime()
    out["loadavg_end"] = U.loadavg()
    out["wall_s"] = U.now() - t0
    print(f"\n== bench_search --size {args.size} on {out['gpu'] or args.device} (threads {args.threads}, {args.reps} reps, amp {args.amp}, "
          f"compile {args.compile}, CUDA graphs {args.cuda_graphs}, controller on {args.controller_device}, malloc tuned {malloc_tuned}{', plain cell' if args.plain_cell else ''}) ==")
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
