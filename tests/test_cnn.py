"""The micro-CNN search space: image data and streams, ops and cells, architectures, WPL groups, the CLI.

CIFAR-10 is faked in its real python layout (pickled batches) and read by torchvision's own loader,
whose MD5 table is pointed at the fake files so its integrity check still runs.
"""

from __future__ import annotations

import copy
import json
import logging
import shlex
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from modes import builders
import config
import main
from models.cnn import (Cell, CNNArch, CNNStyle, FactorizedReduce, SharedCNN, cat_channels, decision_sizes, decode, encode,
                        loose_ends, make_op)
from spaces.cnn import cnn_dot
from models.controller import Controller
from utils import UserError

from cnn_fixtures import (ALL_OPS, ENAS, PER_BATCH, SMALL, STYLES, VERBATIM, cifar_files, cnn_args, fake_cifar,  # noqa: F401
                          one_thread, random_arch, write_fake_cifar, write_image_folder)


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
                    module.register_forward_hook(lambda m, x, o, name=model.group_name(c, j, i, op): ran.add(name))  # noqa: B008
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
