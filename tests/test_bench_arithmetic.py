"""The benchmarks' own arithmetic: the roofline counts the matmuls a batch really makes; the worker
benchmark's parallel records equal its serial ones.

``bench_util.rnn_matmuls`` lists, by shape, the products of one batch through the fused cell and the
decoder; ``bench_search`` turns it into the floor a step cannot beat (each shape at its own measured
rate). The list is only as good as its agreement with the model, so the test records every matmul
the project dispatches in one training batch (and in one reward forward) and compares the shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import bench_rnn
from benchmarks import bench_util as U

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default,
           torch.ops.aten.addmm.out, torch.ops.aten.addmm_.default}


class RecordMatmuls(TorchDispatchMode):
    """Every ``[m x k] @ [k x n]`` dispatched while active, as ``(m, k, n)``."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: Counter[tuple[int, int, int]] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.linear.default:  # not decomposed under inference_mode
            x, w = args[0], args[1]
            self.shapes[(x.numel() // x.shape[-1], w.shape[1], w.shape[0])] += 1
        elif func in MATMULS:
            a, b = (args[0], args[1]) if func in (torch.ops.aten.mm.default, torch.ops.aten.mm.out) else (args[1], args[2])
            self.shapes[(a.shape[0], a.shape[1], b.shape[1])] += 1
        return func(*args, **(kwargs or {}))


def as_counter(matmuls: list[tuple[int, int, int, int]]) -> Counter[tuple[int, int, int]]:
    out: Counter[tuple[int, int, int]] = Counter()
    for m, k, n, count in matmuls:
        out[(m, k, n)] += count
    return out


@pytest.fixture
def trainer_and_arch() -> tuple[Any, Any]:
    torch.set_num_threads(1)
    args = argparse.Namespace(seed=3, amp=False, compile=False, cuda_graphs=False, controller_device="cpu",
                              preset="paper", plain_cell=False)
    trainer, _ = bench_rnn.build_trainer(U.SIZES["tiny"], args)
    return trainer, trainer.space.random_arch(torch.Generator().manual_seed(3))


def test_training_batch_matmuls_are_the_listed_ones(trainer_and_arch: tuple[Any, Any]) -> None:
    trainer, arch = trainer_and_arch
    bench_rnn.shared_batch(trainer, arch, None)  # first call: lazily built state
    with RecordMatmuls() as rec:
        bench_rnn.shared_batch(trainer, arch, None)
    assert rec.shapes == as_counter(U.rnn_matmuls(U.SIZES["tiny"], training=True))


def test_reward_forward_matmuls_are_the_listed_ones(trainer_and_arch: tuple[Any, Any]) -> None:
    trainer, arch = trainer_and_arch
    with RecordMatmuls() as rec:
        trainer.space.reward(arch, 1, 80.0, False)
    assert rec.shapes == as_counter(U.rnn_matmuls(U.SIZES["tiny"], training=False))


def test_listed_flops_are_the_step_flops() -> None:
    for size in U.SIZES.values():
        flops = sum(2 * m * k * n * c for m, k, n, c in U.rnn_matmuls(size, training=True))
        into_h0 = 2 * size.batch * 2 * size.hid * size.hid  # the product the backward skips
        assert flops == U.rnn_step_flops(size) - into_h0


def test_worker_benchmark_records_equal_a_serial_run(tmp_path: Path) -> None:
    from benchmarks import bench_workers

    out = bench_workers.main(["--units", "2", "--batches", "1", "--hid", "16", "--nodes", "2", "--workers", "2",
                              "--json", str(tmp_path / "w.json")])
    assert out["records_equal"] is True
    assert json.loads((tmp_path / "w.json").read_text()) == out


def test_profile_counts_tell_computing_operators_from_views() -> None:
    a, b = torch.randn(4, 6), torch.randn(6, 3)
    counts = U.profile_counts(lambda: (a.t().t() @ b.view(6, 3)).to(torch.float32).to(torch.float64).sum())
    # t, t, view, mm, to (a no-op), to (copies), sum: 7 operators, 3 of which compute
    assert (counts["ops"], counts["kernel_ops"]) == (7, 3)


def test_graph_content_counts_per_node_by_hand() -> None:
    """What the cell's CUDA graphs hold, counted on the CPU: each further node adds, per time step, 7
    kernels to inference (parent's gather, matmul, both sigmoids, tanh, relu, the activation's gather,
    lerp) and 19 to training (forward 9: the gate's copy and the mix as sub + addcmul instead of lerp;
    backward 10: the children's product, the gate's 2, the activations' 4 and their gather, the input's,
    the matmul), plus 2 per node in the weight gradient (gather, matmul)."""
    from benchmarks.bench_rnn import graph_content_counts
    from models.rnn_arch import RNNArch
    from models.rnn_cell import Plan

    size = dataclasses.replace(U.SIZES["tiny"], bptt=5)
    counts = []
    for n in (3, 4):
        out: dict[str, Any] = {}
        graph_content_counts(size, Plan(RNNArch(("tanh",) * n, tuple(range(n - 1))), "avg"), out)
        counts.append(out)
    assert counts[1]["graph_infer_kernel_ops"] - counts[0]["graph_infer_kernel_ops"] == 7 * 5
    assert counts[1]["graph_train_kernel_ops"] - counts[0]["graph_train_kernel_ops"] == 19 * 5 + 2
