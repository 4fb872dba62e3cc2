"""Networks for task sequences: a trunk shared by every task and one or more output heads."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class MultiHeadNet(nn.Module):
    """``heads[head](trunk(x))``: the trunk's layers are the parameter groups a regulariser protects."""

    def __init__(self, trunk: nn.Sequential, features: int, head_sizes: Sequence[int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in head_sizes)

    def forward(self, x: Tensor, head: int = 0) -> Tensor:
        return self.heads[head](self.trunk(x))

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """One group per trunk layer with weights (``trunk.<i>``) and one per head (``head.<t>``)."""
        groups = {f"trunk.{i}": list(m.parameters()) for i, m in enumerate(self.trunk) if list(m.parameters())}
        groups.update({f"head.{t}": list(h.parameters()) for t, h in enumerate(self.heads)})
        return groups


def mlp(inputs: int, hidden: Sequence[int], head_sizes: Sequence[int]) -> MultiHeadNet:
    """ReLU MLP (van de Ven & Tolias 2019 use two hidden layers of 400 units for split MNIST)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return MultiHeadNet(nn.Sequential(*layers), inputs, head_sizes)


def small_cnn(channels: int, size: Sequence[int], head_sizes: Sequence[int], width: int = 32) -> MultiHeadNet:
    """Two conv-ReLU-pool blocks and a 256-unit layer: a small CNN for 32x32 images on CPU."""
    h, w = size[0] // 4, size[1] // 4
    trunk = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(2 * width * h * w, 256), nn.ReLU())
    return MultiHeadNet(trunk, 256, head_sizes)
