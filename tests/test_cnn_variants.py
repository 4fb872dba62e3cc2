"""The micro-CNN's modelling choices: the paper code's model (default) and ENAS's (``--preset=enas``).

Parameter counts are computed by hand here from the layer definitions (a KxK conv from ``c_in`` to
``c_out`` in ``g`` groups has ``c_out * (c_in / g) * K * K`` weights, an affine batch norm ``2c``), and
an old run written by commit 3cc66f1 (tests/fixtures/legacy_cnn, made by its make_fixture.py) must
resume, derive and test exactly as it did.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cnn_fixtures import ALL_OPS, VERBATIM, cifar_files, fake_cifar, one_thread, random_arch  # noqa: F401 - fixtures
from test_cnn import train_argv

from modes import builders
import config
import main
from modes import retrain
from models.cnn import Cell, CNNArch, CNNStyle, SharedCNN, live_nodes, make_op
from spaces.cnn import CNNSpaceConfig, cnn_style
from spaces.base import pick
from engine.runlog import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_cnn"
PAPER, ENAS = CNNStyle(), CNNStyle.enas()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -------------------------------------------------------------------------------------------- ops
def test_grouped_depthwise_is_one_grouped_conv_and_an_affine_batch_norm_after_the_relu() -> None:
    op = make_op("depthwise_3x3", 2, 4, 1, depthwise="grouped")
    assert count(op) == 4 * 1 * 3 * 3 + 2 * 4  # each output channel sees one input channel; BN weight + bias
    x = torch.randn(3, 2, 5, 5)
    conv = op[1]
    expected = torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x.relu(), conv.weight, padding=1, groups=2),
                                              None, None, op[2].weight, op[2].bias, training=True)
    assert torch.allclose(op(x), expected, atol=1e-6)
    assert op(x).shape == (3, 4, 5, 5) and make_op("depthwise_5x5", 2, 4, 2)(x).shape == (3, 4, 3, 3)
    with pytest.raises(ValueError, match="multiple"):
        make_op("depthwise_3x3", 3, 4, 1)


def test_separable_depthwise_is_depthwise_pointwise_and_a_plain_batch_norm() -> None:
    op = make_op("depthwise_5x5", 2, 4, 1, depthwise="separable")
    assert count(op) == 2 * 5 * 5 + 4 * 2  # depthwise 5x5 + pointwise 1x1; the batch norm has no parameters
    assert count(make_op("sep_conv_3x3", 2, 4, 2, depthwise="separable")) == (2 * 9 + 4 * 2) + (4 * 9 + 4 * 4)
    assert count(make_op("sep_conv_3x3", 2, 4, 2, depthwise="grouped")) == (4 * 9 + 8) + (4 * 9 + 8)


def test_adapting_identity_and_pooling_subsample_and_repeat_the_channels() -> None:
    x = torch.randn(2, 3, 7, 7)
    identity = make_op("identity", 3, 6, 2)
    assert count(identity) == 0 and torch.equal(identity(x), torch.cat([x[:, :, ::2, ::2]] * 2, 1))
    pooled = make_op("max3x3", 3, 6, 1)(x)
    assert torch.equal(pooled, torch.cat([torch.nn.functional.max_pool2d(x, 3, 1, 1)] * 2, 1))
    # calibrated inputs (ENAS): a stride-2 identity is a factorized reduce, two 1x1 convs of c x c/2
    assert count(make_op("identity", 6, 6, 2, adapt=False)) == 6 * 3 + 6 * 3


# ------------------------------------------------------------------------------------------ cells
def test_a_node_averages_or_sums_its_inputs_and_the_cell_outputs_its_last_node() -> None:
    s0, s1 = torch.full((1, 1, 3, 3), 10.0), torch.arange(9.0).view(1, 1, 3, 3)
    spec = (((0, "identity"), (1, "identity")), ((1, "identity"), (1, "identity")), ((2, "identity"), (0, "identity")))
    assert live_nodes(spec, "last") == [0, 2] and live_nodes(spec, "concat") == [0, 1, 2]
    cell = Cell(3, 1, 1, 1, reduction=False, input0_reduced=False, ops=["identity"])
    assert torch.equal(cell(s0, s1, spec), ((s0 + s1) / 2 + s0) / 2)  # node 2 = avg(node 0, s0); node 1 is dropped
    summing = Cell(3, 1, 1, 1, reduction=False, input0_reduced=False, ops=["identity"],
                   style=dataclasses.replace(PAPER, node_combine="sum"))
    assert torch.equal(summing(s0, s1, spec), (s0 + s1) + s0)


def test_with_the_last_node_as_output_the_nodes_it_does_not_read_never_run() -> None:
    model = SharedCNN(3, 10, 3, 12, 2, 1, ALL_OPS, ALL_OPS, image_size=(8, 8))
    arch = random_arch(3, ALL_OPS, ALL_OPS, seed=1)
    cut = dataclasses.replace(arch, normal=(((0, "depthwise_3x3"), (1, "depthwise_5x5")), ((0, "depthwise_5x5"), (1, "max3x3")),
                                            ((1, "depthwise_3x3"), (3, "max3x3"))))  # node 2 reads node 1, nobody node 0
    model(torch.randn(2, 3, 8, 8), cut).sum().backward()
    groups = model.op_groups()
    trained = {name for name, params in groups.items() if any(p.grad is not None for p in params)}
    assert trained == set(model.groups_for(cut))
    assert not any(name.startswith(f"cell{c}.node0.") for name in trained for c in (0, 2))  # normal cells' node 0


# ----------------------------------------------------------------------------------------- models
# A tiny network by hand: 1 node, only depthwise_3x3, first width 6, two modules (cells: normal 6,
# reduce 12, normal 12), 3x8x8 images, 10 classes. A grouped 3x3 to c_out channels: 9 c_out + 2 c_out.
GROUPED_TO_6, GROUPED_TO_12 = 6 * 9 + 12, 12 * 9 + 24
FLATTEN = 12 * 4 * 4 * 10 + 10  # the final 12 x 4 x 4 feature map, flattened
GAP = 12 * 10 + 10
STEM = 6 * 3 * 9 + 12
PROJECTIONS = (6 * 6 + 12) + 2 * (12 * 12 + 24)  # concat: a 1x1 conv of c x c per loose end, affine BN
SEPARABLE = (3 * 9 + 3 * 6) * 2 + (3 * 9 + 3 * 12) + (6 * 9 + 6 * 12) * 2 + (12 * 9 + 12 * 12)
CALIBRATIONS = 2 * (3 * 6 + 12) + (3 * 12 + 24) + (6 * 12 + 24) + (6 * 6 * 2 + 24)  # 1x1 conv + BN, factorized reduce
HAND_COUNTS = {
    "paper": (PAPER, 2 * GROUPED_TO_6 + 4 * GROUPED_TO_12 + FLATTEN),
    "gap": (dataclasses.replace(PAPER, classifier="gap"), 2 * GROUPED_TO_6 + 4 * GROUPED_TO_12 + GAP),
    "stem": (dataclasses.replace(PAPER, stem=True), STEM + 2 * GROUPED_TO_6 + 4 * GROUPED_TO_12 + FLATTEN),
    "separable": (dataclasses.replace(PAPER, depthwise="separable"), SEPARABLE + FLATTEN),
    "concat": (dataclasses.replace(PAPER, cell_output="concat"), 2 * GROUPED_TO_6 + 4 * GROUPED_TO_12 + PROJECTIONS + FLATTEN),
    "calibrate": (dataclasses.replace(PAPER, cell_inputs="calibrate"), CALIBRATIONS + 2 * GROUPED_TO_6 + 4 * GROUPED_TO_12 + FLATTEN),
    # stem; 1x1 calibrations 6 -> 12 of the reduction cell and a factorized reduce; separable 6 -> 6 and 12 -> 12
    "enas": (ENAS, STEM + 2 * (6 * 12 + 24) + (6 * 6 * 2 + 24) + 2 * (6 * 9 + 6 * 6) + 4 * (12 * 9 + 12 * 12)
             + PROJECTIONS + GAP),
}


@pytest.mark.parametrize("name", list(HAND_COUNTS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_parameter_counts_and_shapes_of_each_variant_at_a_tiny_size(name: str, channels_last: bool) -> None:
    style, expected = HAND_COUNTS[name]
    model = SharedCNN(3, 10, 1, 12, 2, 1, ["depthwise_3x3"], ["depthwise_3x3"], style, image_size=(8, 8),
                      channels_last=channels_last)
    assert count(model) == expected
    shapes: list[tuple[int, ...]] = []
    for cell in model.cells:
        cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    node = ((0, "depthwise_3x3"), (1, "depthwise_3x3"))
    arch = CNNArch(normal=(node,), reduce=(node,))
    logits = model(torch.randn(2, 3, 8, 8), arch)
    logits.sum().backward()
    assert logits.shape == (2, 10) and shapes == [(2, 6, 8, 8), (2, 12, 4, 4), (2, 12, 4, 4)]
    assert all(p.grad is not None for p in model.parameters())  # a one-node cell uses every parameter


def paper_command_model(*extra: str) -> SharedCNN:
    """The shared CNN of the paper's CNN command (5 nodes, 5 normal cells per module, defaults otherwise)."""
    args = config.parse_args([*shlex.split(VERBATIM), *extra])
    cfg = pick(CNNSpaceConfig, args)
    ops = list(args.shared_cnn_types)  # the paper code's five ops in both cells
    return SharedCNN(3, 10, cfg.num_blocks, cfg.cnn_final_filter_size, cfg.cnn_num_modules, cfg.cnn_num_repeat_normal,
                     ops, ops, cnn_style(cfg))


@pytest.mark.parametrize("extra, total", [((), 3_237_130), (("--preset=enas",), 56_654_122)])
def test_parameter_counts_at_the_paper_command_sizes(extra: tuple[str, ...], total: int) -> None:
    model = paper_command_model(*extra)
    assert count(model) == total
    assert model.style == (ENAS if extra else PAPER)
    # the flattened 384 x 8 x 8 map: the paper code's classifier alone is 245,770 parameters
    assert count(model.classifier) == (384 * 8 * 8 * 10 + 10 if not extra else 384 * 10 + 10)


def test_config_defaults_are_the_paper_code_and_the_dataclass_agrees() -> None:
    args = config.parse_args([])
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(CNNSpaceConfig))  # nothing to drift
    for key in ("cnn_stem", "cnn_cell_inputs", "cnn_depthwise", "cnn_node_combine", "cnn_cell_output", "cnn_classifier"):
        assert key in config.SHAPE_KEYS and key in config.SEARCH_KEYS
    assert cnn_style(pick(CNNSpaceConfig, args)) == PAPER
    assert cnn_style(pick(CNNSpaceConfig, config.parse_args(["--preset=enas"]))) == ENAS
    explicit = config.parse_args(["--preset=enas", "--cnn_classifier=flatten"])
    assert cnn_style(pick(CNNSpaceConfig, explicit)) == dataclasses.replace(ENAS, classifier="flatten")


# ----------------------------------------------------------------------------------- old runs
def test_a_retrain_inherits_the_old_model_from_an_old_params_json(tmp_path: Path) -> None:
    saved = json.loads((FIXTURE / "run" / "params.json").read_text())
    assert "cnn_stem" not in saved and saved["cnn_cell_output"] == "concat"
    (tmp_path / "params.json").write_text(json.dumps(saved))
    argv = ["--mode=retrain", f"--load_path={tmp_path}", "--cnn_depthwise=grouped"]
    args = retrain.with_search_config(config.parse_args(argv), config.explicit_options(argv))
    assert (args.cnn_stem, args.cnn_cell_inputs, args.cnn_node_combine, args.cnn_cell_output, args.cnn_classifier) == (
        True, "calibrate", "sum", "concat", "gap")
    assert args.cnn_depthwise == "grouped"  # the command line still wins


def test_an_old_checkpoint_resumes_derives_and_tests_exactly_as_before(fake_cifar: Path, tmp_path: Path) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    state = load_checkpoint(FIXTURE / "run" / "checkpoints" / "latest.pt", torch.device("cpu"))
    assert "cnn_stem" not in state["config"]  # written before the option existed
    merged = builders.merge_config(state["config"], config.parse_args([]), set(), config.SHAPE_KEYS)
    assert merged.cnn_stem and merged.cnn_classifier == "gap"
    common = [f"--data_dir={fake_cifar}", "--num_workers=0", "--num_gpu=0"]

    resumed = tmp_path / "resumed"
    shutil.copytree(FIXTURE / "run", resumed / "cifar10_legacy")
    assert main.main(["--comment=legacy", "--dataset=cifar10", "--max_epoch=2", "--resume=True", f"--log_dir={resumed}",
                      *common]) == 0
    records = [json.loads(line) for line in (resumed / "cifar10_legacy" / "metrics.jsonl").read_text().splitlines()]
    timing = ("epoch_s", "elapsed_s")
    assert [leaves(r, timing) for r in records] == [close_to(r, timing) for r in expected["resumed_metrics"]]

    derived = tmp_path / "derived"
    shutil.copytree(FIXTURE / "run", derived)
    assert main.main(["--mode=derive", f"--load_path={derived}", "--derive_num_sample=3", *common]) == 0
    assert json.loads((derived / "derived_arch.json").read_text()) == expected["best_arch"]
    # the derived cell ties the run's best_arch.json (valid_acc 10), which derive therefore keeps: test the derived one
    assert main.main(["--mode=test", f"--load_path={derived}", f"--arch={derived / 'derived_arch.json'}", *common]) == 0
    result = json.loads((derived / "test_results.json").read_text())
    assert leaves(result, ("checkpoint",)) == close_to(expected["test_results"], ("checkpoint",))


def leaves(value: Any, skip: tuple[str, ...] = (), path: str = "") -> dict[str, Any]:
    """A JSON value as ``{dotted path: leaf}`` (top-level keys in ``skip`` left out). pytest.approx compares
    only flat containers (pytest 9 refuses nested dicts), so nested results are compared leaf by leaf."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items() if not (path == "" and k in skip)]
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {path: value}
    flat: dict[str, Any] = {path: type(value).__name__} if path else {}  # an empty dict or list stays visible
    for key, item in items:
        flat.update(leaves(item, skip, f"{path}.{key}" if path else key))
    return flat


def close_to(expected: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``leaves(expected)`` with every float leaf approximate: the fixture was recorded on another CPU, and
    float kernels (AVX2 vs AVX-512) may differ in the last digits."""
    return {k: pytest.approx(v, rel=1e-5, abs=1e-12) if isinstance(v, float) else v
            for k, v in leaves(expected, skip).items()}


# ------------------------------------------------------------------------------ paper command
@pytest.mark.parametrize("preset", ["paper", "enas"])
def test_the_paper_cnn_command_runs_verbatim_with_each_preset(fake_cifar: Path, tmp_path: Path, preset: str) -> None:
    extra = [] if preset == "paper" else ["--preset=enas"]
    assert main.main(train_argv(tmp_path, fake_cifar, "--max_epoch=1", "--use_tensorboard=False", *extra)) == 0
    run = tmp_path / "cifar10_cnn-train"
    params = json.loads((run / "params.json").read_text())
    assert params["cnn_stem"] is (preset == "enas") and params["cnn_classifier"] == ("gap" if extra else "flatten")
    weights = load_checkpoint(run / "checkpoints" / "latest.pt", torch.device("cpu"))["model"]
    assert ("stem.0.weight" in weights) is (preset == "enas")
    assert weights["classifier.weight"].shape == ((10, 12) if extra else (10, 12 * 8 * 8))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 0 and 0 <= record["valid_acc"] <= 100
