"""Several inference batches in one micro-CNN forward (``--cnn_eval_images``): each batch normalised with
its own statistics, so the logits, rewards, errors and evaluations are those of the batches run one by one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from models import cnn
from models.cnn import SharedCNN
from models.cnn_ops import BatchStatsNorm
from modes import builders
from spaces.cnn import run_together

from cnn_fixtures import ALL_OPS, STYLES, cifar_files, cnn_args, fake_cifar, random_arch  # noqa: F401

LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "nhwc"])
def test_grouped_batch_norm_is_each_batch_normalised_alone(affine: bool, layout: torch.memory_format) -> None:
    torch.manual_seed(0)
    norm = BatchStatsNorm(5, affine=affine, track_running_stats=False)
    if affine:
        torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    batches = [torch.randn(4, 5, 3, 6) * (1 + k) + k for k in range(3)]  # other statistics per batch
    x = torch.cat(batches).contiguous(memory_format=layout)
    norm.groups = 3
    out = norm(x)
    for k, b in enumerate(batches):  # by hand: biased variance over the batch and the pixels, per channel
        mean, var = b.mean((0, 2, 3), keepdim=True), b.var((0, 2, 3), keepdim=True, unbiased=False)
        expected = (b - mean) / torch.sqrt(var + norm.eps)
        if affine:
            expected = expected * norm.weight.view(1, 5, 1, 1) + norm.bias.view(1, 5, 1, 1)
        torch.testing.assert_close(out[4 * k:4 * k + 4], expected, rtol=1e-5, atol=1e-5)
        norm.groups = 1
        torch.testing.assert_close(norm(b), expected, rtol=1e-5, atol=1e-5)  # and F.batch_norm itself agrees
        norm.groups = 3
    assert out.is_contiguous(memory_format=layout)
    with pytest.raises(ValueError, match="not 3 equal batches"):
        norm(x[:10])


@pytest.mark.parametrize("style", STYLES, ids=["paper", "enas"])
@pytest.mark.parametrize("layout", [False, True], ids=["nchw", "nhwc"])
def test_a_batched_forward_gives_each_batch_its_own_logits(style: cnn.CNNStyle, layout: bool) -> None:
    torch.manual_seed(1)
    model = SharedCNN(3, 10, 3, 24, 2, 1, ALL_OPS, ALL_OPS, style, image_size=(8, 8), channels_last=layout).eval()
    batches = [torch.randn(4, 3, 8, 8) + k for k in range(5)]
    with torch.inference_mode():
        for seed in range(3):
            arch = random_arch(3, ALL_OPS, ALL_OPS, seed)
            alone = torch.cat([model(b, arch) for b in batches])
            with cnn.batched(model, 5):
                together = model(torch.cat(batches), arch)
            torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, BatchStatsNorm))  # restored on leaving
    with pytest.raises(ValueError), cnn.batched(model, 3):
        model(torch.cat(batches[:2]), arch)  # 8 images are not 3 batches
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, BatchStatsNorm))  # restored on an error too


def test_run_together_joins_consecutive_batches_of_one_size_up_to_the_cap() -> None:
    sizes = [8, 8, 8, 8, 8, 4, 4, 8]
    batches = [(torch.full((n, 1), float(k)), torch.full((n,), k)) for k, n in enumerate(sizes)]
    groups = list(run_together(batches, 24))
    assert [(len(images), g) for images, _, g in groups] == [(24, 3), (16, 2), (8, 2), (8, 1)]
    assert torch.equal(torch.cat([labels for _, labels, _ in groups]), torch.cat([b[1] for b in batches]))
    assert torch.equal(torch.cat([images for images, _, _ in groups]), torch.cat([b[0] for b in batches]))
    assert [g for *_, g in run_together(batches, 0)] == [1] * len(sizes)  # 0: one batch per forward
    alone = list(run_together(batches[:1], 1024))
    assert alone[0][0] is batches[0][0] and alone[0][2] == 1  # a single batch is passed through, not copied


def test_rewards_errors_and_evaluations_equal_one_batch_per_forward(fake_cifar: Path) -> None:
    """The space's counts with batches run together (16 images a forward) equal those of one batch per forward."""
    figures = []
    for images in (0, 16):
        torch.manual_seed(0)
        space = builders.build_space(cnn_args(fake_cifar, f"--cnn_eval_images={images}"), torch.device("cpu"))
        arch = space.random_arch(torch.Generator().manual_seed(0))
        figures.append((space.reward(arch, 2, 1.0, False), space.error(arch), space.evaluate(arch, "valid"),
                        space.evaluate(arch, "test")))
    assert figures[0] == figures[1]
    space = builders.build_space(cnn_args(fake_cifar), torch.device("cpu"))
    assert space._eval_images == 0  # -1 (the default) on the CPU: one batch per forward


def test_grouped_batch_norm_matches_f_batch_norm_in_double() -> None:
    """The grouped arithmetic against ``F.batch_norm`` in float64, where rounding cannot hide a difference."""
    torch.manual_seed(2)
    norm = BatchStatsNorm(3, affine=True, track_running_stats=False).double()
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    norm.groups = 2
    expected = torch.cat([F.batch_norm(b, None, None, norm.weight, norm.bias, True, 0.0, norm.eps) for b in x.split(3)])
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
