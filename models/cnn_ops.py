"""The micro-CNN's operations: what an edge of a cell computes, in the paper code's and in ENAS's form.

Two choices shape an op (``models.cnn.CNNStyle`` holds them):

- ``depthwise``: ``grouped`` is the paper code's ``depthwise_KxK`` (kcyu2014/multi-model-forgetting,
  models/cnn_layers.py): the input's ReLU, one KxK convolution with ``groups = input channels`` and an
  affine batch norm, no pointwise convolution. ``separable`` is ENAS's unit: ReLU, depthwise KxK,
  pointwise 1x1, batch norm without affine parameters.
- ``adapt``: whether the op itself maps a cell input's channels and resolution to the cell's (the
  paper's code, which has no calibration layers: convolutions expand channels through their groups,
  identity subsamples and pooling pools, then both repeat the channels), or every input is calibrated
  beforehand and ops map ``c`` channels to ``c`` (ENAS; a stride-2 identity is then a factorized reduce).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

OPS = ("identity", "avg3x3", "max3x3", "depthwise_3x3", "depthwise_5x5", "sep_conv_3x3", "sep_conv_5x5")
DEPTHWISE = ("grouped", "separable")


class BatchStatsNorm(nn.BatchNorm2d):
    """Batch norm on batch statistics only (``models.cnn`` explains why), optionally per group of images.

    With ``groups = G > 1`` an input of ``G * B`` images is ``G`` batches run together: each is
    normalised with its own statistics, as if it had been run alone. That is how the reward and the
    forgetting metric run their 20 or 4 validation batches in one forward (``models.cnn.batched``):
    on a GPU the micro-CNN is launch-bound, and one forward launches what one batch does. The
    grouped path is the same arithmetic as ``F.batch_norm``'s (biased variance, ``eps``), in another
    order of operations; ``groups = 1`` is ``nn.BatchNorm2d`` itself.
    """

    groups: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.groups:
            raise ValueError(f"{n} images are not {self.groups} equal batches")
        xg = x.view(self.groups, n // self.groups, c, h, w)  # splits the outermost dimension: any layout
        var, mean = torch.var_mean(xg, dim=(1, 3, 4), correction=0, keepdim=True)
        scale = (var + self.eps).rsqrt_()  # (groups, 1, c, 1, 1): few, tiny kernels
        if self.weight is not None:
            scale = scale * self.weight.view(1, 1, c, 1, 1)
        bias = self.bias.view(1, 1, c, 1, 1) if self.bias is not None else torch.zeros_like(scale)
        shift = torch.addcmul(bias, mean, scale, value=-1)
        return torch.addcmul(shift, xg, scale).view(n, c, h, w)  # the one pass over the images


def batch_norm(channels: int, affine: bool) -> BatchStatsNorm:
    """Batch norm on batch statistics only (``models.cnn`` explains why)."""
    return BatchStatsNorm(channels, affine=affine, track_running_stats=False)


class _ChannelCat(torch.autograd.Function):
    """``torch.cat`` along channels whose backward hands every input a dense gradient.

    Autograd's own cat backward passes each input a channel slice of the output's gradient: a
    strided view that the batch norms behind it take a slow path for (on the CPU, in channels-last,
    their backward is 6-10x slower than on a dense gradient). One copy per input is much cheaper.
    """

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> Tensor:
        ctx.sizes = [t.size(1) for t in tensors]
        return torch.cat(tensors, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        layout = torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return tuple(g.contiguous(memory_format=layout) for g in grad.split(ctx.sizes, 1))


def cat_channels(tensors: Sequence[Tensor]) -> Tensor:
    return _ChannelCat.apply(*tensors)


class FactorizedReduce(nn.Module):
    """Halve the resolution without skipping pixels: two stride-2 1x1 convs, one shifted by a pixel.

    Both are written as a subsample followed by a stride-1 1x1 conv (the same function and the same
    parameters): oneDNN's weight gradient of a strided 1x1 conv in channels-last layout corrupts the heap
    on AVX2-only CPUs (torch 2.14.1), and the subsample reads the pixels without a padded copy anyway.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = False) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, bias=False)  # reads the even pixels
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)  # reads the odd pixels (below)
        self.bn = batch_norm(c_out, affine)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        a = self.conv_a(x[:, :, ::2, ::2])  # pixels (2i, 2j)
        # Pixels (2i + 1, 2j + 1): a stride-2 conv of x shifted by one pixel, zero-padded at the end
        # when a side is odd. Subsampling first reads the same pixels without a padded copy of x
        # (whose backward is a strided gradient several times slower to work with).
        b = self.conv_b(x[:, :, 1::2, 1::2])
        if b.shape[-2:] != a.shape[-2:]:
            b = F.pad(b, (0, a.size(-1) - b.size(-1), 0, a.size(-2) - b.size(-2)))
        return self.bn(cat_channels([a, b]))


@functools.cache
def nhwc_avg_pool_backward_is_wrong(device: torch.device) -> bool:
    """Whether ``device``'s channels-last backward of a padded average pool disagrees with the NCHW one.

    Probed once per device on a 2x3x5x5 ramp with a non-uniform output gradient: cheap, and it lets a
    torch build whose kernel is right (CPU, or a CUDA build with pytorch/pytorch#188345) keep the
    channels-last kernel.
    """
    x = torch.arange(150, dtype=torch.float32, device=device).view(2, 3, 5, 5) / 10
    grads = []
    with torch.enable_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            xi = x.clone(memory_format=layout).requires_grad_(True)
            out = F.avg_pool2d(xi, 3, stride=1, padding=1, count_include_pad=False)
            out.backward(torch.linspace(-1.0, 1.0, out.numel(), device=device).view(out.shape))
            grads.append(xi.grad)
    return not torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def _pool_on_nchw(x: Tensor, padding: Any) -> bool:
    """Whether a padded average pool of ``x`` must run on an NCHW copy (see ``AvgPool``)."""
    return (x.is_cuda and padding != 0 and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) and nhwc_avg_pool_backward_is_wrong(x.device))


class AvgPool(nn.AvgPool2d):
    """``nn.AvgPool2d`` whose gradient is right in channels-last layout on CUDA too.

    torch's CUDA kernel for the channels-last backward of a padded average pool maps input pixels to
    the wrong windows (pytorch/pytorch#188344): forward right, input gradients silently wrong. Seen on
    an H200 with torch 2.11 + CUDA 13: an ENAS-style cell whose reduction cell averages gave gradients
    20-90 % off in channels-last, right in NCHW. Where ``nhwc_avg_pool_backward_is_wrong`` finds the
    device's kernel wrong, the pool runs on an NCHW copy and its result returns to channels-last.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if _pool_on_nchw(x, self.padding):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class Subsample(nn.Module):
    """Every ``stride``-th pixel from the first (the paper code's stride-2 identity, a 1x1 average pool)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride]


class RepeatChannels(nn.Module):
    """``times`` copies of the input stacked along channels (how the paper's code widens identity and pooling)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x: Tensor) -> Tensor:
        return cat_channels([x] * self.times)


def relu_conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """Channel calibration of a cell input: ReLU, 1x1 conv, batch norm."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), batch_norm(c_out, affine=True))


def _times(c_in: int, c_out: int, what: str) -> int:
    if c_out % c_in:
        raise ValueError(f"{what} cannot map {c_in} to {c_out} channels: the output channels must be a multiple of the input's")
    return c_out // c_in


def grouped(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """The paper code's ``depthwise_KxK``: ReLU, one KxK conv with ``groups = c_in``, affine batch norm."""
    _times(c_in, c_out, f"a grouped {kernel}x{kernel} convolution")
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=c_in, bias=False),
        batch_norm(c_out, affine=True),
    )


def separable(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """ENAS's depthwise-separable unit: ReLU, depthwise KxK conv, pointwise 1x1 conv, batch norm (no affine)."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=kernel // 2, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        batch_norm(c_out, affine=False),
    )


def _widened(module: nn.Module, c_in: int, c_out: int, what: str) -> nn.Module:
    times = _times(c_in, c_out, what)
    return module if times == 1 else nn.Sequential(module, RepeatChannels(times))


def make_op(name: str, c_in: int, c_out: int, stride: int, *, depthwise: str = "grouped", adapt: bool = True) -> nn.Module:
    """The module of op ``name`` from ``c_in`` to ``c_out`` channels; ``adapt=False`` needs ``c_in == c_out``."""
    if depthwise not in DEPTHWISE:
        raise ValueError(f"depthwise unit must be one of {DEPTHWISE}, got {depthwise!r}")
    if not adapt and c_in != c_out:
        raise ValueError(f"op {name} maps {c_in} to {c_out} channels, but inputs are calibrated (adapt=False)")
    unit = grouped if depthwise == "grouped" else separable
    if name == "identity":
        if c_in == c_out and stride == 1:
            return nn.Identity()
        if not adapt:
            return FactorizedReduce(c_in, c_out)
        return _widened(Subsample(stride) if stride > 1 else nn.Identity(), c_in, c_out, "identity")
    if name in ("avg3x3", "max3x3"):
        pool = (AvgPool(3, stride=stride, padding=1, count_include_pad=False) if name == "avg3x3"
                else nn.MaxPool2d(3, stride=stride, padding=1))
        return _widened(pool, c_in, c_out, name)
    if name.startswith("depthwise_"):
        return unit(c_in, c_out, int(name[-1]), stride)
    if name.startswith("sep_conv_"):  # ENAS's separable convolution: the unit twice, only the first strided
        kernel = int(name[-1])
        return nn.Sequential(unit(c_in, c_out, kernel, stride), unit(c_out, c_out, kernel, 1))
    raise ValueError(f"unknown op {name!r}; known: {list(OPS)}")
