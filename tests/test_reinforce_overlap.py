"""The REINFORCE step with the reward queued on the device and the controller's backward done meanwhile
(``ReinforceSampler.overlap``: on where the shared model is on a GPU and the controller on the CPU). It
must take the same steps, up to fp32 rounding, as the step that back-propagates after the reward; here
it is forced on, on the CPU, where the queueing changes nothing but the order of the work."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

from benchmarks import bench_rnn
from benchmarks.bench_util import SIZES
from spaces.base import start_reward


def controller_run(overlap: bool) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    args = argparse.Namespace(seed=0, amp=False, compile=False, cuda_graphs=False, controller_device="cpu",
                              preset="paper", plain_cell=False)
    trainer, _ = bench_rnn.build_trainer(SIZES["tiny"], args)
    sampler = trainer.sampler
    assert not sampler.overlap  # the CPU: off unless forced
    sampler.overlap = overlap
    before = {k: v.clone() for k, v in sampler.controller.state_dict().items()}
    stats = [sampler.learn(0) for _ in range(8)]  # one REINFORCE step each
    return stats, before, sampler.controller.state_dict()


def test_overlapped_reinforce_steps_equal_the_plain_ones() -> None:
    plain_stats, start, plain = controller_run(False)
    overlap_stats, _, overlapped = controller_run(True)
    assert any(not torch.equal(start[k], plain[k]) for k in plain)  # the controller did learn
    for key in ("controller_reward", "controller_loss", "controller_baseline", "controller_entropy"):
        assert [s[key] for s in overlap_stats] == pytest.approx([s[key] for s in plain_stats], rel=1e-5, abs=1e-7), key
    for key in plain:
        torch.testing.assert_close(overlapped[key], plain[key], rtol=1e-5, atol=1e-7)


def test_start_reward_falls_back_to_the_reward_of_a_space_without_it() -> None:
    calls: list[Any] = []

    class Space:  # a plug-in space with only the protocol's reward
        def reward(self, arch: Any, num_batches: int, reward_c: float, square: bool) -> tuple[float, float]:
            calls.append(arch)
            return 0.5 * reward_c, 50.0

    finish = start_reward(Space(), "cell", 1, 2.0, False)  # type: ignore[arg-type]
    assert calls == ["cell"]  # computed at once
    assert finish() == (1.0, 50.0)
