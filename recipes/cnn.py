"""DARTS's final training of a micro-CNN architecture: cosine lr, cutout, an auxiliary head.

DARTS's CIFAR-10 evaluation (Liu et al. 2019: cosine lr from 0.025, weight decay 3e-4, cutout 16,
auxiliary loss weight 0.4 after the last reduction cell), with Nesterov momentum as ENAS.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from data.image_stream import mixed_seed
from distributed import comm
from engine import scheduled_lr
from models.cnn import CNNArch, SharedCNN
from spaces.base import SearchSpace
from recipes.loop import RetrainConfig, Retrainer
from utils import UserError

CUTOUT_SALT = 5  # separates the cutout generator's seeds from data.image_stream's streams


def cutout(images: Tensor, length: int, generator: torch.Generator) -> Tensor:
    """Zero a ``length`` x ``length`` square (clipped at the borders) at a random centre of each image (DeVries
    & Taylor 2017), after normalisation as DARTS does."""
    n, _, h, w = images.shape
    cy = torch.randint(h, (n, 1), generator=generator)
    cx = torch.randint(w, (n, 1), generator=generator)
    rows = (torch.arange(h) >= cy - length // 2) & (torch.arange(h) < cy + length // 2)
    cols = (torch.arange(w) >= cx - length // 2) & (torch.arange(w) < cx + length // 2)
    keep = ~(rows[:, :, None] & cols[:, None, :])
    return images * keep[:, None].to(images.device, images.dtype)


class AuxHead(nn.Module):
    """DARTS's auxiliary classifier (Szegedy et al.), pooling adaptively to 2x2 so any image size fits."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class CNNWithAux(nn.Module):
    """A pruned SharedCNN and, optionally, an auxiliary head reading the last reduction cell (training only)."""

    def __init__(self, net: SharedCNN, num_classes: int, aux: bool) -> None:
        super().__init__()
        self.net = net
        reductions = [k for k, cell in enumerate(net.cells) if cell.reduction]
        if aux and not reductions:
            raise UserError("--retrain_aux_weight > 0 needs a reduction cell (--cnn_num_modules >= 2), or pass 0")
        self.aux_after = reductions[-1] if aux else -1
        self.aux = AuxHead(net.cells[self.aux_after].channels, num_classes) if aux else None

    def forward(self, images: Tensor, arch: CNNArch) -> Tensor:
        return self.net(images, arch)

    def forward_train(self, images: Tensor, arch: CNNArch) -> tuple[Tensor, Tensor | None]:
        """Logits and auxiliary logits; the SharedCNN's forward runs unchanged, its cell output is tapped by a hook."""
        if self.aux is None:
            return self.net(images, arch), None
        tapped: list[Tensor] = []
        handle = self.net.cells[self.aux_after].register_forward_hook(lambda _m, _i, out: tapped.append(out))
        try:
            logits = self.net(images, arch)
        finally:
            handle.remove()
        return logits, self.aux(tapped[0])

    def count_parameters(self, arch: CNNArch) -> int:
        """The network's inference parameters: the auxiliary head is not counted (as DARTS)."""
        return self.net.count_parameters(arch)


class CNNRetrainer(Retrainer):
    """DARTS's training loop: cosine lr per epoch, cutout, auxiliary loss."""

    default_epochs = 600  # DARTS on CIFAR-10

    @staticmethod
    def model_for(pruned: nn.Module, space: SearchSpace, cfg: RetrainConfig) -> nn.Module:
        return CNNWithAux(pruned, space.num_classes, cfg.aux_weight > 0)  # type: ignore[arg-type,attr-defined]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        model = self.model
        lr = scheduled_lr(self.spec, epoch, self.cfg.epochs)
        self.updater.set_lr(lr)
        model.train()
        batches = self.space.train_batches()  # type: ignore[attr-defined]
        sums = torch.zeros(3, device=self._window.device)  # summed cross-entropy, correct, images
        for images, labels in tqdm(batches, desc=f"retrain epoch {epoch}", leave=False, disable=None):
            if self.cfg.cutout > 0:
                generator = torch.Generator().manual_seed(mixed_seed(self.cfg.seed, CUTOUT_SALT, self.step))
                images = cutout(images, self.cfg.cutout, generator)
            logits, aux = model.forward_train(images, self.arch)  # type: ignore[operator]
            ce = F.cross_entropy(logits, labels)
            loss = ce + self.cfg.aux_weight * F.cross_entropy(aux, labels) if aux is not None else ce
            if self.update(loss):
                n = labels.numel()
                sums += torch.stack([ce.detach() * n, (logits.detach().argmax(1) == labels).sum().float(), ce.new_tensor(n)])
        total = comm.sum_(sums).tolist()  # every rank's images
        images = max(total[2], 1.0)
        return {"train_loss": total[0] / images, "train_acc": 100.0 * total[1] / images, "lr": lr}
