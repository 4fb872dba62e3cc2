"""The average pool's guard against a wrong channels-last CUDA backward (``models.cnn_ops.AvgPool``).

The wrong kernel exists only on some CUDA builds (tests/test_cuda.py checks the whole CNN there);
here: the CPU kernel passes the probe, and the NCHW detour computes what the pool computes, in the
layout the model expects.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import cnn_ops
from models.cnn_ops import AvgPool, nhwc_avg_pool_backward_is_wrong


def test_the_cpu_kernel_passes_the_probe_and_takes_no_detour() -> None:
    assert nhwc_avg_pool_backward_is_wrong(torch.device("cpu")) is False
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    assert not cnn_ops._pool_on_nchw(x, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_nchw_detour_equals_the_pool_and_keeps_channels_last(stride: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cnn_ops, "_pool_on_nchw", lambda x, padding: True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 7, generator=g).contiguous(memory_format=torch.channels_last)
    grad_out = None
    results = []
    for pool in (AvgPool(3, stride=stride, padding=1, count_include_pad=False),
                 nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)):
        xi = x.clone().requires_grad_(True)
        out = pool(xi)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=g)
        out.backward(grad_out)
        results.append((out.detach(), xi.grad))
    (out, grad), (ref_out, ref_grad) = results
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-7)
    # count_include_pad=False by hand: the corner output averages the 4 pixels its window covers
    assert float(out[0, 0, 0, 0]) == pytest.approx(float(x[0, 0, :2, :2].mean()), rel=1e-6)
