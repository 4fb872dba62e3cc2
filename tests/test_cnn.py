"""The micro-CNN search space: image data and streams, ops and cells, architectures, WPL groups, the CLI.

CIFAR-10 is faked in its real python layout (pickled batches) and read by torchvision's own loader,
whose MD5 table is pointed at the fake files so its integrity check still runs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import pickle
import shlex
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.datasets import CIFAR10

import builders
import config
import main
from data.image import ImageData, TensorImages, load_images, stratified_holdout
from data.image_stream import BatchStream, Preprocess, iterate_split
from models.cnn import (OPS, Cell, CNNArch, CNNStyle, FactorizedReduce, SharedCNN, cat_channels, decision_sizes, decode, encode,
                        loose_ends, make_op)
from models.cnn_space import cnn_dot
from models.controller import Controller
from utils import UserError

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


# ----------------------------------------------------------------------------------------- data
def test_fake_cifar_is_read_by_torchvision_with_a_held_out_stratified_validation(fake_cifar: Path) -> None:
    data = load_images(fake_cifar, "cifar10", valid_size=20, seed=3)
    assert (data.channels, data.size, len(data.classes), data.flip, data.padding) == (3, (32, 32), 10, True, 4)
    assert (len(data.train), len(data.valid), len(data.test)) == (80, 20, PER_BATCH)
    assert torch.bincount(data.valid.labels).tolist() == [2] * 10  # class-stratified
    # pixels arrive as CHW in the pickles' channel-major order, and valid images are not training images
    raw = pickle.loads((fake_cifar / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(data.test.images[3], torch.from_numpy(raw["data"][3]).view(3, 32, 32))
    train_rows = {bytes(x.flatten().numpy()) for x in data.train.images}
    assert not train_rows & {bytes(x.flatten().numpy()) for x in data.valid.images}
    again = load_images(fake_cifar, "cifar10", valid_size=20, seed=3)
    assert torch.equal(again.valid.images, data.valid.images)


def test_missing_cifar_offline_is_one_line_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(UserError) as err:
        load_images(tmp_path, "cifar10", valid_size=10, seed=0)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-batches-py") in message


def test_image_folder_sets_channels_size_and_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "shapes", {"train": 6, "test": 2})
    data = load_images(tmp_path, "shapes", valid_size=3, seed=0)
    assert (data.channels, data.size, data.classes) == (1, (10, 12), ["a", "b", "c"])
    assert (len(data.train), len(data.valid), len(data.test)) == (15, 3, 6) and data.valid_held_out
    assert torch.bincount(data.valid.labels).tolist() == [1, 1, 1]
    images, _ = data.train.__getitems__(list(range(len(data.train))))  # the odd-sized image is resized
    assert images.shape == (15, 1, 10, 12) and images.dtype == torch.uint8
    assert 0 < min(data.std) and all(0 < m < 1 for m in data.mean)

    write_image_folder(tmp_path / "own_valid", {"train": 2, "valid": 1})
    data = load_images(tmp_path, "own_valid", valid_size=3, seed=0)
    assert (len(data.train), len(data.valid), data.test, data.valid_held_out) == (6, 3, None, False)
    with pytest.raises(UserError, match="expected cifar10, mnist or an image folder"):
        load_images(tmp_path, "nothing_here", valid_size=3, seed=0)


def test_mnist_in_its_raw_idx_files_is_grey_28x28_without_flips(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        pixels = np.random.default_rng(2).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(k % 10 for k in range(n)))
    data = load_images(tmp_path, "mnist", valid_size=10, seed=0)
    assert (data.channels, data.size, len(data.classes), data.flip, data.padding) == (1, (28, 28), 10, False, 3)
    assert (len(data.train), len(data.valid), len(data.test)) == (20, 10, 10)
    assert torch.bincount(data.valid.labels).tolist() == [1] * 10


def test_stratified_holdout_is_proportional_seeded_and_disjoint() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    train, valid = stratified_holdout(labels, 10, seed=5)
    assert torch.bincount(labels[valid]).tolist() == [6, 3, 1]
    assert sorted(train.tolist() + valid.tolist()) == list(range(100))
    assert torch.equal(valid, stratified_holdout(labels, 10, seed=5)[1])
    assert not torch.equal(valid, stratified_holdout(labels, 10, seed=6)[1])
    with pytest.raises(UserError):
        stratified_holdout(labels, 100, seed=0)


def small_data(n: int = 10) -> ImageData:
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, 4, 4)
    split = TensorImages(images, torch.arange(n))
    return ImageData("tiny", [str(k) for k in range(n)], 3, (4, 4), (0.5,) * 3, (0.25,) * 3, True, split, split, split)


def test_stream_rolls_over_epochs_and_resumes_on_the_same_batches() -> None:
    prep = Preprocess(small_data(), torch.device("cpu"))
    stream = BatchStream(small_data().train, 3, prep, seed=1, salt=1, augment=True, num_workers=0)
    seen = [stream.next() for _ in range(7)]
    epoch0 = torch.cat([labels for _, labels in seen[:3]])
    assert len(set(epoch0.tolist())) == 9 and stream.state_dict() == {"epoch": 2, "pos": 1}  # 3 full batches an epoch
    assert not torch.equal(epoch0, torch.cat([labels for _, labels in seen[3:6]]))  # reshuffled per epoch

    replay = BatchStream(small_data().train, 3, prep, seed=1, salt=1, augment=True, num_workers=0)
    replay.load_state_dict({"epoch": 1, "pos": 1})
    for images, labels in seen[4:]:
        again = replay.next()
        assert torch.equal(again[0], images) and torch.equal(again[1], labels)


def test_evaluation_reads_every_image_once_in_a_fixed_class_mixed_order() -> None:
    data = small_data(10)  # stored class by class, like an image folder
    prep = Preprocess(data, torch.device("cpu"))
    batches = [labels for _, labels in iterate_split(data.valid, 4, prep, 0, seed=3)]
    assert [len(b) for b in batches] == [4, 4, 2]
    order = torch.cat(batches).tolist()
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert torch.cat([labels for _, labels in iterate_split(data.valid, 4, prep, 0, seed=3)]).tolist() == order


def test_augmentation_is_a_crop_of_the_zero_padded_image_maybe_flipped() -> None:
    data = small_data(6)
    prep = Preprocess(data, torch.device("cpu"))
    images = data.train.images.clamp(min=1)  # no zero pixels, so padding is recognisable
    out = prep.augment(images, torch.Generator().manual_seed(0))
    padded = F.pad(images, (1, 1, 1, 1))  # padding 1 for 4x4 images
    for k in range(len(images)):
        windows = [padded[k, :, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[k], w) or torch.equal(out[k], w.flip(2)) for w in windows)
    assert not torch.equal(out, images)
    normalised = prep(images[:2])
    assert torch.allclose(normalised, (images[:2].float() / 255 - 0.5) / 0.25)


# -------------------------------------------------------------------------------- ops and cells
@pytest.mark.parametrize("depthwise", ["grouped", "separable"])
@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_keeps_channels_and_applies_its_stride(op: str, depthwise: str) -> None:
    for size in (8, 7):
        x = torch.randn(2, 6, size, size)
        for adapt in (True, False):
            assert make_op(op, 6, 6, 1, depthwise=depthwise, adapt=adapt)(x).shape == (2, 6, size, size)
            assert make_op(op, 6, 6, 2, depthwise=depthwise, adapt=adapt)(x).shape == (2, 6, (size + 1) // 2, (size + 1) // 2)
        # the paper code's ops also widen a cell input themselves
        assert make_op(op, 6, 12, 2, depthwise=depthwise)(x).shape == (2, 12, (size + 1) // 2, (size + 1) // 2)


@pytest.mark.parametrize("size", [8, 7])
def test_factorized_reduce_is_two_strided_convs_one_on_the_shifted_padded_input(size: int) -> None:
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 6)
    x = torch.randn(2, 4, size, size, requires_grad=True)
    relu = F.relu(x)
    shifted = F.pad(relu[:, :, 1:, 1:], (0, 1, 0, 1))  # the definition: shift by one pixel, pad the end
    a = F.conv2d(relu, fr.conv_a.weight, stride=2)
    b = F.conv2d(shifted, fr.conv_b.weight, stride=2)
    expected = F.batch_norm(torch.cat([a, b], 1), None, None, training=True)
    out = fr(x)
    assert out.shape == (2, 6, (size + 1) // 2, (size + 1) // 2)
    assert torch.allclose(out, expected, atol=1e-5)
    g = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, x, g)
    (reference,) = torch.autograd.grad(expected, x, g)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_cat_channels_gives_every_input_a_dense_gradient_in_its_layout() -> None:
    cl = torch.channels_last
    xs = [torch.randn(2, c, 5, 5).contiguous(memory_format=cl).requires_grad_(True) for c in (3, 4)]
    out = cat_channels(xs)
    assert torch.equal(out, torch.cat(xs, 1))
    g = torch.randn(2, 7, 5, 5).contiguous(memory_format=cl)
    grads = torch.autograd.grad(out, xs, g)
    assert torch.equal(grads[0], g[:, :3]) and torch.equal(grads[1], g[:, 3:])
    assert all(gr.is_contiguous(memory_format=cl) for gr in grads)  # autograd's cat would give strided slices


@pytest.mark.parametrize("style", STYLES)
def test_channels_last_computes_what_nchw_computes(style: CNNStyle) -> None:
    torch.manual_seed(0)
    nchw = SharedCNN(3, 10, 3, 24, 2, 1, ALL_OPS, ALL_OPS, style, image_size=(15, 15))
    nhwc = SharedCNN(3, 10, 3, 24, 2, 1, ALL_OPS, ALL_OPS, style, image_size=(15, 15), channels_last=True)
    nhwc.load_state_dict(nchw.state_dict())
    first_conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 15, 15)  # odd sizes: factorized reduce pads
    for seed in range(3):
        arch = random_arch(3, ALL_OPS, ALL_OPS, seed)
        outs = []
        for model in (nchw, nhwc):
            model.zero_grad(set_to_none=True)
            logits = model(images, arch)
            logits.square().sum().backward()
            outs.append((logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
        (a, ga), (b, gb) = outs
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        assert ga.keys() == gb.keys()
        for name in ga:
            assert torch.allclose(ga[name], gb[name], rtol=1e-3, atol=1e-4), name


@pytest.mark.parametrize("style", STYLES)
def test_normal_cells_keep_and_reduction_cells_halve_resolution_and_double_channels(style: CNNStyle) -> None:
    model = SharedCNN(3, 10, 3, 24, 3, 2, ALL_OPS, ALL_OPS, style)
    shapes: dict[int, tuple[int, ...]] = {}
    op_shapes: list[tuple[int, tuple[int, ...]]] = []
    for c, cell in enumerate(model.cells):
        cell.register_forward_hook(lambda m, i, o, c=c: shapes.__setitem__(c, tuple(o.shape)))
        for node in cell.nodes:
            for ops in node:
                for module in ops.values():
                    module.register_forward_hook(lambda m, i, o, c=c: op_shapes.append((c, tuple(o.shape))))
    assert [cell.reduction for cell in model.cells] == [False, False, True, False, False, True, False, False]
    for seed in range(4):
        logits = model(torch.randn(2, 3, 32, 32), random_arch(3, ALL_OPS, ALL_OPS, seed))
        assert logits.shape == (2, 10)
        assert [shapes[c] for c in range(8)] == [(2, 6, 32, 32)] * 2 + [(2, 12, 16, 16)] * 3 + [(2, 24, 8, 8)] * 3
        assert op_shapes and all(shape == shapes[c] for c, shape in op_shapes)  # every op output has its cell's shape
        op_shapes.clear()


def test_hand_checked_cell_sums_its_inputs_and_joins_the_loose_ends() -> None:
    s0 = torch.full((1, 1, 3, 3), 10.0)
    s1 = torch.arange(9.0).view(1, 1, 3, 3)
    avg = torch.tensor([[2, 2.5, 3], [3.5, 4, 4.5], [5, 5.5, 6]]).view(1, 1, 3, 3)  # 3x3 means of the valid neighbours
    # node 0 = s0 + avg3x3(s1); node 1 = s1 + s1; both are loose ends
    spec = (((0, "identity"), (1, "avg3x3")), ((1, "identity"), (1, "identity")))
    assert loose_ends(spec) == [0, 1]
    cell = Cell(2, 1, 1, 1, reduction=False, input0_reduced=False, ops=["identity", "avg3x3"], style=CNNStyle.enas(cell_output="avg"))
    assert torch.allclose(cell(s0, s1, spec), ((10 + avg) + 2 * s1) / 2)
    # concat: ReLU, the projection columns of the loose ends, batch norm on the batch's statistics (eval mode too)
    cell = Cell(2, 1, 1, 1, reduction=False, input0_reduced=False, ops=["identity", "avg3x3"], style=ENAS).eval()
    w = cell.project.detach().flatten()

    def normalised(y: torch.Tensor) -> torch.Tensor:
        return (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + 1e-5)

    assert torch.allclose(cell(s0, s1, spec), normalised(w[0] * (10 + avg) + w[1] * 2 * s1), atol=1e-5)
    reads_node0 = (((0, "identity"), (1, "avg3x3")), ((2, "avg3x3"), (0, "identity")))  # only node 1 is loose
    expected = normalised(w[1] * (F.avg_pool2d(10 + avg, 3, 1, 1, count_include_pad=False) + 10))
    assert torch.allclose(cell(s0, s1, reads_node0), expected, atol=1e-5)


def test_only_the_sampled_ops_run_and_receive_gradients() -> None:
    model = SharedCNN(3, 10, 4, 16, 2, 1, ALL_OPS, ALL_OPS, ENAS)
    arch = random_arch(4, ALL_OPS, ALL_OPS, seed=11)
    ran: set[str] = set()
    for c, cell in enumerate(model.cells):
        for j, node in enumerate(cell.nodes):
            for i, ops in enumerate(node):
                for op, module in ops.items():
                    module.register_forward_hook(lambda m, x, o, name=model.group_name(c, j, i, op): ran.add(name))
    model(torch.randn(2, 3, 16, 16), arch).sum().backward()
    used = {model.group_name(c, j, i, op) for c, cell in enumerate(model.cells)
            for j, node in enumerate(arch.reduce if cell.reduction else arch.normal) for i, op in node}
    assert ran == used
    groups = model.op_groups()
    with_grad = {name for name, params in groups.items() if any(p.grad is not None for p in params)}
    assert with_grad == set(model.groups_for(arch)) == used & set(groups)


@pytest.mark.parametrize("style", STYLES)
def test_batch_norm_normalises_with_the_batch_in_eval_mode_too(style: CNNStyle) -> None:
    model = SharedCNN(3, 10, 2, 12, 2, 1, ALL_OPS, ALL_OPS, style, image_size=(16, 16))
    arch = random_arch(2, ALL_OPS, ALL_OPS, seed=0)
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(model.train()(x, arch), model.eval()(x, arch))
    assert not list(model.buffers())  # no running statistics to go stale under weight sharing


# ------------------------------------------------------------------------------- architectures
def test_controller_layout_decodes_into_architectures() -> None:
    normal, reduce = ALL_OPS, ["max3x3", "identity", "sep_conv_5x5"]
    sizes = decision_sizes(2, len(normal), len(reduce))
    assert sizes == [2, 7, 2, 7, 3, 7, 3, 7, 2, 3, 2, 3, 3, 3, 3, 3]
    controller = Controller(sizes)
    for tokens in controller(8, generator=torch.Generator().manual_seed(0)).tokens.tolist():
        arch = decode(tokens, normal, reduce)
        assert encode(arch, normal, reduce) == tokens
        assert all(op in reduce for node in arch.reduce for _, op in node)
    arch = decode([1, 0, 0, 6, 2, 1, 1, 2, 0, 1, 1, 0, 2, 2, 0, 0], normal, reduce)
    assert arch.normal == (((1, "identity"), (0, "sep_conv_5x5")), ((2, "avg3x3"), (1, "max3x3")))
    assert arch.reduce == (((0, "identity"), (1, "max3x3")), ((2, "sep_conv_5x5"), (0, "max3x3")))


def test_arch_round_trips_and_rejects_impossible_cells() -> None:
    arch = random_arch(3, ALL_OPS, ALL_OPS, seed=2)
    d = json.loads(json.dumps(arch.to_dict()))
    assert d["type"] == "micro_cnn" and CNNArch.from_dict(d) == arch
    assert str(arch).startswith("normal: n0=") and "| reduce: n0=" in str(arch)
    with pytest.raises(ValueError, match="cannot read input 3"):
        CNNArch(normal=(((3, "identity"), (0, "identity")),), reduce=(((0, "identity"), (0, "identity")),))
    with pytest.raises(ValueError, match="unknown op"):
        CNNArch(normal=(((0, "conv7x7"), (0, "identity")),), reduce=(((0, "identity"), (0, "identity")),))
    with pytest.raises(ValueError, match="not a micro-CNN"):
        CNNArch.from_dict({**d, "type": "rnn"})


def test_wpl_groups_are_exactly_the_parameterised_ops_an_arch_uses() -> None:
    model = SharedCNN(3, 10, 3, 16, 3, 1, ALL_OPS, ALL_OPS, ENAS)
    groups = model.op_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))  # disjoint
    for name, params in groups.items():
        c, j, i, op = name.split(".")
        module = model.cells[int(c[4:])].nodes[int(j[4:])][int(i[2:])][op]
        assert [id(p) for p in params] == [id(p) for p in module.parameters()]
        assert op not in ("avg3x3", "max3x3")
        assert op != "identity" or (model.cells[int(c[4:])].reduction and int(i[2:]) < 2)  # factorized reduce
    for seed in range(5):
        arch = random_arch(3, ALL_OPS, ALL_OPS, seed)
        expected = []
        for c, cell in enumerate(model.cells):
            for j, node in enumerate(arch.reduce if cell.reduction else arch.normal):
                for i, op in node:
                    parameterised = op not in ("avg3x3", "max3x3") and (op != "identity" or (cell.reduction and i < 2))
                    if parameterised:
                        expected.append(model.group_name(c, j, i, op))
        assert model.groups_for(arch) == list(dict.fromkeys(expected))


def test_drawing_has_both_cells(tmp_path: Path) -> None:
    arch = random_arch(3, ALL_OPS, ALL_OPS, seed=4)
    source = cnn_dot(arch, "concat")
    assert "subgraph cluster_normal" in source and "subgraph cluster_reduce" in source
    assert source.count(" -> normal_n") == 6 and source.count(" -> reduce_n") == 6
    assert source.count("-> normal_out") == len(loose_ends(arch.normal))


# -------------------------------------------------------------------------------- search space
def test_space_losses_rewards_and_state(fake_cifar: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wpl"):
        space = builders.build_space(cnn_args(fake_cifar), torch.device("cpu"))
    assert "--test_batch_size=8" in caplog.text  # batch statistics need bigger test batches
    arch = space.random_arch(torch.Generator().manual_seed(0))
    assert space.metric == "acc" and len(space.decision_sizes) == 40
    loss = space.train_loss(arch)
    assert space.model.training and loss.total is loss.ce and loss.ce.requires_grad and 0 <= float(loss.accuracy) <= 1
    loss = space.fisher_loss(arch)
    assert not space.model.training and loss.ce.requires_grad
    error = space.error(arch)
    assert 0 <= error <= 100 and space.error(arch) == error  # fixed batches, eval mode
    reward, acc = space.reward(arch, 2, 2.0, False)
    assert reward == pytest.approx(2.0 * acc / 100)
    reward, acc = space.reward(arch, 1, 1.0, True)
    assert reward == pytest.approx((acc / 100) ** 2)
    result = space.evaluate(arch, "valid")
    assert result["valid_images"] == 20 and 0 <= result["valid_acc"] <= 100
    blank = copy.deepcopy(space.model)  # another model of the architecture, evaluated in place of the shared one
    for p in blank.parameters():
        torch.nn.init.zeros_(p)
    majority = 100.0 * float((space.data.valid.labels == 0).float().mean())  # zero logits: class 0 everywhere
    assert space.evaluate(arch, "valid", model=blank)["valid_acc"] == pytest.approx(majority)
    assert space.evaluate(arch, "valid") == result  # the shared model itself untouched
    assert space.evaluate(arch, "test")["test_images"] == PER_BATCH
    spec = space.optim_spec()
    assert (spec.lr, spec.lr_min, spec.momentum, spec.nesterov, spec.schedule) == (0.05, 0.0005, 0.9, True, "cosine")

    state = json.loads(json.dumps(space.state_dict()))  # plain integers
    expected = next(space.train_batches())
    space.load_state_dict(state)
    assert torch.equal(next(space.train_batches())[0], expected[0])


def test_image_folder_space_decodes_in_workers_and_needs_a_test_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "shapes", {"train": 6, "valid": 2})
    args = config.parse_args(["--network_type=micro_cnn", "--dataset=shapes", f"--data_dir={tmp_path}", "--num_blocks=2",
                              "--cnn_num_modules=2", "--cnn_final_filter_size=4", "--cnn_num_repeat_normal=1",
                              "--batch_size=4", "--num_workers=1", "--num_gpu=0"])
    space = builders.build_space(args, torch.device("cpu"))
    assert space._streams["train"].loader.num_workers == 1 and next(m for m in space.model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
    arch = space.random_arch(torch.Generator().manual_seed(0))
    state = space.state_dict()
    first = [space.train_loss(arch).ce.item() for _ in range(5)]  # 18 images: 4 full batches, then a new epoch
    space.load_state_dict(state)
    assert [space.train_loss(arch).ce.item() for _ in range(5)] == first
    assert space.evaluate(arch, "valid")["valid_images"] == 6
    with pytest.raises(UserError, match="no test split"):
        space.evaluate(arch, "test")


def test_space_rejects_unknown_ops_and_macro_mode(fake_cifar: Path) -> None:
    args = cnn_args(fake_cifar)  # the command line refuses unknown ops already; the space does too
    args.shared_cnn_reduce_types = ["identity", "conv9x9"]
    with pytest.raises(UserError, match="unknown"):
        builders.build_space(args, torch.device("cpu"))
    with pytest.raises(UserError, match="macro"):
        builders.build_space(cnn_args(fake_cifar, "--search_mode=macro"), torch.device("cpu"))
    with pytest.raises(UserError, match="2\\^"):
        builders.build_space(cnn_args(fake_cifar, "--cnn_final_filter_size=6"), torch.device("cpu"))


# ---------------------------------------------------------------------------------- end to end
def read_scalars(run: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def train_argv(tmp: Path, data_dir: Path, *extra: str) -> list[str]:
    return [*shlex.split(VERBATIM), *SMALL, f"--data_dir={data_dir}", f"--log_dir={tmp}", *extra]


def test_verbatim_command_trains_derives_tests_and_resumes(fake_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(train_argv(tmp_path, fake_cifar)) == 0
    run = tmp_path / "cifar10_cnn-train"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert 0 <= r["valid_acc"] <= 100 and 0 <= r["shared_acc"] <= 100 and "controller_reward" in r
        assert "forgetting_mean_diff" in r and r["alpha"] == 60.0
    assert max(r["shared_wpl"] for r in records) > 0
    scalars = read_scalars(run)
    for tag in ("shared/loss", "shared/ce", "shared/wpl", "shared/acc", "controller/reward", "controller/acc",
                "forgetting/mean_diff", "eval/valid_acc"):
        assert scalars.get(tag), tag
    assert len(scalars["eval/valid_acc"]) == 2 and len(scalars["shared/loss"]) == 4
    drawings = sorted(p.name for p in (run / "networks").iterdir())
    assert {"0000-derived.png", "0000-sampled.png", "0001-derived.png"} <= set(drawings)
    best = json.loads((run / "best_arch.json").read_text())
    assert best["metric"] == "valid_acc" and CNNArch.from_dict(best["arch"]).num_blocks == 5

    assert main.main(["--mode=derive", f"--load_path={run}", "--derive_num_sample=3"]) == 0
    assert "valid_acc" in capsys.readouterr().out and (run / "networks" / "derived_arch.png").is_file()
    assert main.main(["--mode=test", f"--load_path={run}"]) == 0
    result = json.loads((run / "test_results.json").read_text())
    assert 0 <= result["test_acc"] <= 100 and result["test_images"] == PER_BATCH and result["arch"]["type"] == "micro_cnn"

    assert main.main(train_argv(tmp_path, fake_cifar, "--max_epoch=3")) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]


def test_a_resumed_run_repeats_the_uninterrupted_one(fake_cifar: Path, tmp_path: Path) -> None:
    base = ["--num_blocks=2", "--cnn_num_modules=2", "--start_using_fisher=1"]
    assert main.main(train_argv(tmp_path, fake_cifar, *base, "--comment=straight")) == 0
    assert main.main(train_argv(tmp_path, fake_cifar, *base, "--comment=halves", "--max_epoch=1")) == 0
    assert main.main(train_argv(tmp_path, fake_cifar, *base, "--comment=halves")) == 0
    straight, halves = ([json.loads(line) for line in (tmp_path / f"cifar10_{name}" / "metrics.jsonl").read_text().splitlines()]
                        for name in ("straight", "halves"))
    for key in ("shared_loss", "shared_wpl", "controller_reward", "forgetting_mean_diff", "valid_acc"):
        assert straight[1][key] == halves[1][key], key
