"""The benchmarks' own arithmetic: the roofline counts the matmuls a batch really makes; the worker
benchmark's parallel records equal its serial ones.

``bench_util.rnn_matmuls`` lists, by shape, the products of one batch through the fused cell and the
decoder; ``bench_search`` turns it into the floor a step cannot beat (each shape at its own measured
rate). The list is only as good as its agreement with the model, so the test records every matmul
the project dispatches in one training batch (and in one reward forward) and compares the shapes.
"""

from __future__ import annotations

import argparse
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
