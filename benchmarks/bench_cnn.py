"""The micro-CNN part of the search benchmark: one shared training batch, an eval batch, a controller update.

The micro-CNN search keeps WPL off (the paper's CNN command starts it at epoch 50000), so its shared
step is the plain forward, backward, clip and SGD step timed here on the project's ``SharedCNN``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import bench_util as U
from benchmarks.bench_util import Size

CNN_REWARD_BATCHES, CNN_ERROR_BATCHES = 20, 4  # the paper command's --nb_batch_reward_controller, --forgetting_eval_batches


def bench_cnn(s: Size, args: argparse.Namespace, out: dict[str, Any]) -> None:
    try:
        import config
        from models import cnn
        from spaces.cnn import PAPER_OPS, CNNSpaceConfig, eval_images, queue_count
    except Exception as err:  # noqa: BLE001 - any import problem means "not available"
        out["cnn"] = f"unavailable: {type(err).__name__}: {err}"
        return
    torch.manual_seed(args.seed)
    if U.DEVICE.type == "cuda":  # as CNNSpace sets it (--cnn_cudnn_benchmark)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    out["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    ops = list(PAPER_OPS)
    try:
        style = cnn.CNNStyle.enas() if args.preset == "enas" else cnn.CNNStyle()
        model = cnn.SharedCNN(3, 10, s.cnn_blocks, s.cnn_filters, s.cnn_modules, s.cnn_repeat, ops, ops, style,
                              image_size=(s.cnn_image, s.cnn_image),
                              channels_last=config.defaults(CNNSpaceConfig).cnn_channels_last and not args.nchw).to(U.DEVICE)
        g = torch.Generator().manual_seed(args.seed)
        tokens = [int(torch.randint(n, (1,), generator=g)) for n in cnn.decision_sizes(s.cnn_blocks, len(ops), len(ops))]
        arch = cnn.decode(tokens, ops, ops)
    except Exception as err:  # noqa: BLE001
        out["cnn"] = f"unavailable: {type(err).__name__}: {err}"
        return
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    images = torch.randn(s.cnn_batch, 3, s.cnn_image, s.cnn_image, generator=g).to(U.DEVICE)
    labels = torch.randint(10, (s.cnn_batch,), generator=g).to(U.DEVICE)
    amp = torch.autocast(U.DEVICE.type, dtype=torch.bfloat16, enabled=args.amp)

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
        wall, c = U.timed2(step)
        times.append(wall), cpu.append(c)
        print(f"  cnn rep {rep}: {wall:.3f}s (cpu {c:.3f}s)  load {U.loadavg()[0]}", file=sys.stderr, flush=True)
    out["cnn_arch"] = str(arch)
    out["cnn_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["cnn_params_used_m"] = sum(p.numel() for p in model.parameters() if p.grad is not None) / 1e6
    out["cnn_step_s"] = U.summary(times)
    out["cnn_step_cpu_s"] = U.summary(cpu)
    out["cnn_images_per_s"] = U.summary([s.cnn_batch / t for t in times])
    out["cnn_images_per_cpu_s"] = U.summary([s.cnn_batch / t for t in cpu])

    @torch.inference_mode()
    def eval_batch() -> None:  # what Space.error, rewards and evaluations run per batch
        model.eval()
        with amp:
            (model(images, arch).argmax(1) == labels).sum().item()
        model.train()

    eval_batch()
    out["cnn_eval_batch_s"] = U.summary([U.timed(eval_batch) for _ in range(args.reps)])
    # The reward's 20 batches and the forgetting metric's 4 as CNNSpace runs them: together up to
    # --cnn_eval_images per forward (default: 1024 on CUDA, one batch at a time on the CPU).
    cap = out["cnn_eval_images"] = eval_images(args.cnn_eval_images, U.DEVICE)
    for name, count in (("reward", CNN_REWARD_BATCHES), ("error", CNN_ERROR_BATCHES)):
        batches = [(images, labels)] * count

        @torch.inference_mode()
        def evaluate(batches: list[tuple[torch.Tensor, torch.Tensor]] = batches) -> None:
            with amp:
                int(queue_count(model, arch, batches, cap, U.DEVICE)[0])
            model.train()

        evaluate()
        out[f"cnn_{name}_s"] = U.summary([U.timed(evaluate) for _ in range(args.reps)])
        for key, value in U.profile_counts(evaluate).items():
            if key != "cell_ops":
                out[f"cnn_{name}_{key}"] = value
    from models.controller import Controller

    where = torch.device("cpu") if args.controller_device == "cpu" else U.DEVICE  # --controller_device
    controller = Controller(cnn.decision_sizes(s.cnn_blocks, len(ops), len(ops)), 100, 8.0, 2.5).to(where)
    ctrl_optim = torch.optim.Adam(controller.parameters(), lr=3.5e-3)

    def controller_update() -> None:  # a REINFORCE step without its reward's forward passes
        sample = controller(1)
        [cnn.decode(t, ops, ops) for t in sample.tokens.tolist()]
        loss = -(sample.log_probs * 0.5).sum()
        ctrl_optim.zero_grad(set_to_none=True)
        loss.backward()
        ctrl_optim.step()

    controller_update()
    out["cnn_controller_update_s"] = U.summary([U.timed(controller_update) for _ in range(args.reps)])

