"""The micro-CNN's CUDA paths (``-m cuda``, skipped without a device; see tests/test_cuda.py): both
layouts on cuDNN against the CPU in float64, bf16 autocast, and a search reading pinned batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_cuda import DEVICE, NUM_GPU, exact_fp32, records, rel_err  # noqa: F401  (exact_fp32: the autouse fixture)
from torch.nn import functional as F

import main
from models.cnn import OPS, CNNStyle, SharedCNN, decision_sizes, decode

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]


def cnn_step(model: SharedCNN, images: torch.Tensor, labels: torch.Tensor, seed: int, amp: bool = False
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ops = list(OPS)
    arch = decode([int(torch.randint(n, (1,), generator=g)) for n in decision_sizes(3, len(ops), len(ops))], ops, ops)
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(images, arch)
    F.cross_entropy(logits.float(), labels).backward()
    return logits.detach().float(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("style", [CNNStyle(), CNNStyle.enas()], ids=["paper", "enas"])
def test_cnn_in_both_layouts_on_the_device_is_as_accurate_as_the_cpu(style: CNNStyle) -> None:
    """Logits and every gradient of both layouts against the CPU model in float64.

    Error model: no further from float64 than 8x the CPU's fp32 NCHW model, plus 2e-5 (~170 fp32
    epsilons). Legitimate fp32 kernels sum in other orders: the CPU's own channels-last path is up to
    6.9x its NCHW error and 9e-6 off on a batch norm's bias gradient (a sum over pixels whose terms
    cancel), cuDNN on an H200 up to 2.7x; the error reaches 1e-3 on weights whose gradient cancels to
    1e-5 behind a batch norm. A fixed bound of 2e-2 on the
    device-vs-CPU difference hid nothing and caught a real bug: the padded average pool's channels-
    last CUDA backward (models.cnn_ops.AvgPool), 20-90 % off in the ENAS cells that average.
    """
    if DEVICE.type == "cuda":
        assert torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    torch.manual_seed(0)
    size = (15, 15)  # odd: padding
    ref = SharedCNN(3, 10, 3, 24, 2, 1, list(OPS), list(OPS), style, image_size=size, channels_last=False)
    exact = SharedCNN(3, 10, 3, 24, 2, 1, list(OPS), list(OPS), style, image_size=size, channels_last=False).double()
    exact.load_state_dict(ref.state_dict())
    models = {}
    for layout in (False, True):
        models[layout] = SharedCNN(3, 10, 3, 24, 2, 1, list(OPS), list(OPS), style, image_size=size,
                                   channels_last=layout).to(DEVICE)
        models[layout].load_state_dict(ref.state_dict())
    if style.stem:
        assert models[True].stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(6, 3, *size, generator=g), torch.randint(10, (6,), generator=g)
    for seed in range(3):  # seeds 1 and 2 sample reduction cells that average
        cpu_logits, cpu_grads = cnn_step(ref, images, labels, seed)
        exact_logits, exact_grads = cnn_step(exact, images.double(), labels, seed)
        for layout, model in models.items():
            logits, grads = cnn_step(model, images.to(DEVICE), labels.to(DEVICE), seed)
            assert rel_err(logits, exact_logits) <= 8 * rel_err(cpu_logits, exact_logits) + 2e-5, (layout, seed)
            assert grads.keys() == exact_grads.keys()
            for name, ref_grad in exact_grads.items():
                dev_err, cpu_err = rel_err(grads[name], ref_grad), rel_err(cpu_grads[name], ref_grad)
                assert dev_err <= 8 * cpu_err + 2e-5, (layout, seed, name, dev_err, cpu_err)


@pytest.mark.parametrize("style", [CNNStyle(), CNNStyle.enas()], ids=["paper", "enas"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cnn_bf16_autocast_stays_close_and_keeps_fp32_gradients(channels_last: bool, style: CNNStyle) -> None:
    torch.manual_seed(0)
    model = SharedCNN(3, 10, 3, 24, 2, 1, list(OPS), list(OPS), style, image_size=(16, 16),
                      channels_last=channels_last).to(DEVICE)
    g = torch.Generator().manual_seed(4)
    images, labels = torch.randn(8, 3, 16, 16, generator=g).to(DEVICE), torch.randint(10, (8,), generator=g).to(DEVICE)
    fp32, fp32_grads = cnn_step(model, images, labels, 0)
    bf16, bf16_grads = cnn_step(model, images, labels, 0, amp=True)
    assert rel_err(bf16, fp32) < 5e-2
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in bf16_grads.values())
    low, full = (torch.cat([v.flatten() for v in grads.values()]).double().cpu() for grads in (bf16_grads, fp32_grads))
    assert float(F.cosine_similarity(low, full, dim=0)) > 0.98  # bf16 over batch-8 batch norms: ~12% off, same direction



def test_cnn_search_on_the_device_reads_pinned_batches_with_workers(tmp_path: Path) -> None:
    """A micro-CNN search from an image folder: DataLoader workers, pinned memory, --amp, channels-last."""
    from cnn_fixtures import write_image_folder

    write_image_folder(tmp_path / "data" / "shapes", {"train": 8, "valid": 4, "test": 2})
    argv = ["--network_type=micro_cnn", "--dataset=shapes", f"--data_dir={tmp_path / 'data'}", f"--log_dir={tmp_path}",
            "--comment=cnn", "--num_blocks=2", "--cnn_num_modules=2", "--cnn_final_filter_size=8",
            "--cnn_num_repeat_normal=1", "--batch_size=4", "--test_batch_size=4", "--num_workers=2", "--max_epoch=1",
            "--shared_max_step=2", "--num_batch_per_iter=2", "--controller_max_step=2", "--train_controller=True",
            "--nb_batch_reward_controller=2", "--start_using_fisher=0", "--alpha_fisher=60", "--derive_num_sample=2",
            "--amp=True", "--cnn_channels_last=True", NUM_GPU]
    assert main.main(argv) == 0
    run = tmp_path / "shapes_cnn"
    record = records(run)[0]
    assert 0 <= record["valid_acc"] <= 100 and math.isfinite(record["shared_loss"]) and record["fisher_norm"] > 0
    assert f"on {DEVICE.type}" in (run / "train.log").read_text()
    assert main.main(["--mode=test", f"--load_path={run}", "--num_gpu=0"]) == 0  # device checkpoint, CPU test
    assert 0 <= json.loads((run / "test_results.json").read_text())["test_acc"] <= 100


@pytest.mark.parametrize("layout", [False, True], ids=["nchw", "nhwc"])
def test_batches_run_together_on_the_device_give_their_own_logits(layout: bool) -> None:
    """``--cnn_eval_images`` (on by default on CUDA): 20 batches in one forward, each normalised alone,
    against the same 20 forwards one by one on the device (the grouped batch norm sums in another order:
    the bound of the CPU's test, tests/test_cnn_batched.py)."""
    from models.cnn import batched

    torch.manual_seed(0)
    ops = list(OPS)
    model = SharedCNN(3, 10, 3, 24, 2, 1, ops, ops, CNNStyle(), image_size=(16, 16), channels_last=layout).to(DEVICE).eval()
    g = torch.Generator().manual_seed(4)
    arch = decode([int(torch.randint(n, (1,), generator=g)) for n in decision_sizes(3, len(ops), len(ops))], ops, ops)
    batches = [(torch.randn(8, 3, 16, 16, generator=g) + k / 10).to(DEVICE) for k in range(20)]
    with torch.inference_mode():
        alone = torch.cat([model(b, arch) for b in batches])
        with batched(model, 20):
            together = model(torch.cat(batches), arch)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
