"""The micro-CNN tests' fixtures: CIFAR-10 faked in its real python layout (pickled batches, read by
torchvision's own loader with its MD5 table pointed at the fake files), image folders, the paper's
command, small options and random architectures (tests/test_cnn*.py, tests/test_cuda_cnn.py)."""

from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10

import config
from models.cnn import OPS, CNNArch, CNNStyle, decision_sizes, decode

PER_BATCH = 20  # images per fake CIFAR file: 100 training images (10 per class), 20 test images
ALL_OPS = list(OPS)
ENAS = CNNStyle.enas()  # this project's model before the fidelity change
STYLES = [CNNStyle(), ENAS]
VERBATIM = (
    "--comment='cnn-train' --dataset='cifar10' --network_type='micro_cnn' --num_blocks=5 --cnn_num_repeat_normal=5 "
    "--batch_size=32 --test_batch_size=16 --train_controller=True --start_using_fisher=50000 "
    "--start_training_controller=2 --max_epoch=310 --controller_max_step=100 --save_epoch=10 "
    "--fisher_clip_by_norm=10.0 --momentum=False --alpha_decay_mode=1 --alpha_fisher=60.0 --alpha_decay=1. "
    "--alpha_decay_after=15 --num_batch_per_iter=7 --set_fisher_zero_per_iter=3 --stop_training_controller=1000 "
    "--nb_batch_reward_controller=20 --log_level='INFO' --entropy_coeff=0.0001 --controller_lr=0.0035 "
    "--controller_max_step=1000 --policy_batch_size=1 --shared_max_step=70 --reward_c=1. --ema_baseline_decay=0.99 "
    "--softmax_temperature=8. --resume=True --resume_with_new_params=False"
)
SMALL = ["--cnn_final_filter_size=12", "--cnn_num_repeat_normal=1", "--max_epoch=2", "--shared_max_step=2",
         "--num_batch_per_iter=2", "--controller_max_step=2", "--nb_batch_reward_controller=1", "--start_using_fisher=0",
         "--start_training_controller=0", "--save_epoch=1", "--derive_num_sample=2", "--num_workers=0",
         "--valid_size=20", "--batch_size=8", "--test_batch_size=8", "--num_gpu=0", "--use_tensorboard=True"]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    """These tensors are tiny: a second intra-op thread only adds synchronisation, and on a busy
    shared machine an oversubscribed OpenMP team can stall a forward pass for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_fake_cifar(root: Path) -> dict[str, str]:
    """``root/cifar-10-batches-py`` with tiny batches (2 images per class each); returns every file's MD5."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    contents = {f"data_batch_{i}": None for i in range(1, 6)} | {"test_batch": None}
    for name in contents:
        labels = [k % 10 for k in range(PER_BATCH)]
        contents[name] = {"batch_label": name, "labels": labels, "filenames": [f"{name}_{k}.png" for k in labels],
                          "data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)}
    contents["batches.meta"] = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                "horse", "ship", "truck"], "num_cases_per_batch": PER_BATCH, "num_vis": 3072}
    md5 = {}
    for name, content in contents.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return md5


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_fake_cifar(root)


@pytest.fixture()
def fake_cifar(cifar_files: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data_dir of the fake CIFAR-10, with torchvision's checksums set to the fake files'."""
    root, md5 = cifar_files
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


def write_image_folder(folder: Path, splits: dict[str, int], size: tuple[int, int] = (10, 12)) -> None:
    """Grey PNGs ``folder/<split>/<class>/k.png`` for classes a, b, c; one training image has another size."""
    rng = np.random.default_rng(1)
    for split, per_class in splits.items():
        for name in ("a", "b", "c"):
            (folder / split / name).mkdir(parents=True)
            for k in range(per_class):
                shape = (size[0] + 4, size[1] + 2) if (split, name, k) == ("train", "a", 0) else size
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode="L").save(folder / split / name / f"{k}.png")


def cnn_args(data_dir: Path, *extra: str) -> argparse.Namespace:
    return config.parse_args(["--network_type=micro_cnn", "--dataset=cifar10", "--num_blocks=5", f"--data_dir={data_dir}", *SMALL, *extra])


def random_arch(num_blocks: int, normal: list[str], reduce: list[str], seed: int) -> CNNArch:
    g = torch.Generator().manual_seed(seed)
    return decode([int(torch.randint(n, (1,), generator=g)) for n in decision_sizes(num_blocks, len(normal), len(reduce))],
                  normal, reduce)
