"""The design's promise, checked: a new regulariser, sampler, search space or task-sequence strategy is one file
plus one registry entry, its own options included.

Each plug-in below is written as a new module in a temporary folder (on ``sys.path`` for the test only) and
named in its registry by one entry (``Registry.targets``, and ``Registry.options`` for the option declaration
in the same file; restored afterwards); nothing else in the repository changes. Then ``main.main`` runs a tiny
search (or task sequence) with it, the option parser offering its name and its option like any built-in one's,
and the run's files show it was the one used, with the option's value; a value outside the option's declared
domain is refused in one line. (A built-in plug-in keeps its declaration in a light module beside it instead,
so that ``--help`` does not import torch; the test's plug-ins import it, and the test does not mind.)
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import config
import main
from modes.continual import build_config
from options.registry import Registry
from spaces import SPACES
from regularizers import REGULARIZERS, SEARCH_IMPORTANCES
from samplers import SAMPLERS

TINY = ["--dataset=tiny", "--max_epoch=2", "--shared_max_step=2", "--num_batch_per_iter=2", "--save_epoch=1",
        "--shared_embed=8", "--shared_hid=8", "--batch_size=4", "--test_batch_size=2", "--num_blocks=3",
        "--derive_num_sample=3", "--num_gpu=0", "--forgetting_eval_batches=1", "--use_tensorboard=False",
        "--controller_max_step=2"]

# A regulariser for the search: WPL whose importance is --uniform_level everywhere (a plain pull to the anchors).
UNIFORM = '''
from dataclasses import dataclass

from options.domains import POSITIVE
from options.plugin import PluginOptions
from regularizers.wpl_search import SearchWPL


@dataclass(frozen=True)
class UniformConfig:
    uniform_level: float


class UniformWPL(SearchWPL):
    label = "uniform WPL"
    Config = UniformConfig

    def __init__(self, groups, cfg, own):
        super().__init__(groups, cfg)
        self.level = own.uniform_level

    def update_fisher(self, names, alpha=None):
        _, importance, _ = self.gather(list(names))
        for f in importance:
            f.fill_(self.level)


def add(p):
    p.group("uniform WPL").add_argument("--uniform_level", type=float, default=1.0, help="the importance of every weight")


OPTIONS = PluginOptions(add, {"uniform_level": POSITIVE})
'''

# A sampler: random search that always proposes the same architecture, every decision --zeros_token (or its last).
ZEROS = '''
from dataclasses import dataclass

from options.domains import NATURAL
from options.plugin import PluginOptions
from samplers.random import RandomSampler


@dataclass(frozen=True)
class ZeroConfig:
    random_seed: int
    zeros_token: int


class ZeroSampler(RandomSampler):
    Config = ZeroConfig

    @classmethod
    def build(cls, space, cfg, device, run):
        sampler = cls(space, cfg.random_seed)
        sampler.token = cfg.zeros_token
        return sampler

    def sample(self, n):
        return [self.space.decode([min(self.token, size - 1) for size in self.space.decision_sizes]) for _ in range(n)]


def add(p):
    p.group("zeros sampler").add_argument("--zeros_token", type=int, default=0, help="the token of every decision")


OPTIONS = PluginOptions(add, {"zeros_token": NATURAL})
'''

# A search space: one weight w, the "architecture" a choice among 3 targets, loss (w - target)^2.
TARGETS = '''
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from options.domains import POSITIVE
from options.plugin import PluginOptions
from spaces.base import Loss, OptimSpec, SpacePlugin

TARGETS = (1.0, 2.0, 3.0)


@dataclass(frozen=True)
class Target:
    index: int

    def to_dict(self):
        return {"type": "targets", "index": self.index}


class TargetSpace:
    metric = "ppl"
    error_unit = "squared distance"
    decision_sizes = [len(TARGETS)]

    def __init__(self, lr):
        self.lr = lr
        self.model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.model.weight.zero_()

    def decode(self, tokens):
        return Target(int(tokens[0]))

    def arch_from_dict(self, d):
        return Target(int(d["index"]))

    def random_arch(self, generator):
        return Target(int(torch.randint(len(TARGETS), (1,), generator=generator)))

    def wpl_groups(self):
        return {"w": [self.model.weight]}

    def groups_for(self, arch):
        return ["w"]

    def optim_spec(self):
        return OptimSpec(lr=self.lr, weight_decay=0.0, grad_clip=0.0)

    def _loss(self, arch):
        loss = (self.model(torch.ones(1, 1)).squeeze() - TARGETS[arch.index]) ** 2
        return Loss(loss, loss, None)

    def train_loss(self, arch):
        return self._loss(arch)

    def fisher_loss(self, arch):
        return self._loss(arch)

    def error(self, arch):
        return float(self._loss(arch).total.detach())

    def reward(self, arch, num_batches, reward_c, square):
        return reward_c / (1.0 + self.error(arch)), self.error(arch)

    def evaluate(self, arch, split, model=None):
        return {f"{split}_ppl": 1.0 + self.error(arch)}

    def draw(self, arch, path):
        return path

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def add(p):
    p.group("targets space").add_argument("--targets_lr", type=float, default=0.1, help="the weight's learning rate")


PLUGIN = SpacePlugin(build=lambda args, device: TargetSpace(args.targets_lr))
OPTIONS = PluginOptions(add, {"targets_lr": POSITIVE})
'''

# A task-sequence strategy with a strength option: the L2 pull, its per-scenario strengths in a table beside it.
SHRINK = '''
from options.domains import NON_NEGATIVE
from options.plugin import Strength, StrategyOptions
from regularizers.mas import L2

SCENARIO_STRENGTHS = {protocol: {"task": {"strength": 0.25}, "domain": {"strength": 0.5}, "class": {"strength": 4.0}}
                      for protocol in ("vandeven2019", "hsu2018")}


class Shrink(L2):
    label = "shrink"


def add(p):
    p.group("continual").add_argument("--shrink_lambda", type=float, default=None,
                                      help="shrink strength; default: the protocol's for the scenario")


OPTIONS = StrategyOptions(add, {"shrink_lambda": NON_NEGATIVE},
                          strength=Strength("shrink_lambda", "proof_shrink:SCENARIO_STRENGTHS"))
'''


def plug_in(monkeypatch: pytest.MonkeyPatch, folder: Path, table: Registry[Any], name: str, module: str, source: str,
            attribute: str) -> None:
    """One new file (``folder/module.py``) and one registry entry (``name -> module:attribute``, its options
    ``module:OPTIONS``)."""
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(table.targets, name, f"{module}:{attribute}")
    monkeypatch.setitem(table.options, name, f"{module}:OPTIONS")


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line ``main.main(argv)`` exits with (code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main.main(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def search(argv: list[str], log_dir: Path) -> Path:
    assert main.main([*TINY, *argv, f"--log_dir={log_dir}", "--comment=proof"]) == 0
    return next(log_dir.iterdir())


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_new_search_regulariser_is_one_file_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plug_in(monkeypatch, tmp_path / "plugins", SEARCH_IMPORTANCES, "uniform", "proof_uniform", UNIFORM, "UniformWPL")
    argv = ["--wpl_importance=uniform", "--alpha_fisher=5", "--sampler=random", f"--data_dir={data_dir}"]
    run = search([*argv, "--uniform_level=2"], tmp_path / "logs")
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["config"]["wpl_importance"] == "uniform" and state["config"]["uniform_level"] == 2.0
    importance = [t for key, t in state["regularizer"].items() if key.startswith("fisher/")]
    # the plug-in's importance, not a Fisher: its option's value on the groups an architecture trained, 0 elsewhere
    assert importance and all(bool((t == 2).all()) or bool((t == 0).all()) for t in importance)
    assert any(bool((t == 2).all()) for t in importance)
    assert records(run)[1]["shared_wpl"] > 0
    assert refused([*TINY, *argv, "--uniform_level=0"], capsys).endswith("--uniform_level=0.0: must be a finite number > 0")


def test_a_new_sampler_is_one_file_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plug_in(monkeypatch, tmp_path / "plugins", SAMPLERS, "zeros", "proof_zeros", ZEROS, "ZeroSampler")
    run = search(["--sampler=zeros", "--alpha_fisher=0", f"--data_dir={data_dir}"], tmp_path / "logs")
    best = json.loads((run / "best_arch.json").read_text())
    arch = best.get("arch", best)
    assert set(arch["activations"]) == {arch["activations"][0]} and set(arch["parents"]) == {0}  # all tokens 0
    run = search(["--sampler=zeros", "--zeros_token=1", "--alpha_fisher=0", f"--data_dir={data_dir}"],
                 tmp_path / "logs_token")
    best = json.loads((run / "best_arch.json").read_text())
    assert set(best.get("arch", best)["activations"]) == {"ReLU"}  # token 1 of tanh, ReLU, identity, sigmoid
    assert refused([*TINY, "--sampler=zeros", "--zeros_token=-1"], capsys).endswith(
        "--zeros_token=-1: must be an integer >= 0")


def test_a_new_search_space_is_one_file_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    plug_in(monkeypatch, tmp_path / "plugins", SPACES, "targets", "proof_targets", TARGETS, "PLUGIN")
    argv = ["--network_type=targets", "--dataset=none", "--sampler=random", "--alpha_fisher=0"]
    run = search([*argv, "--targets_lr=0.05"], tmp_path / "logs")
    assert [r["epoch"] for r in records(run)] == [0, 1]
    best = json.loads((run / "best_arch.json").read_text())
    assert best.get("arch", best)["type"] == "targets"
    assert json.loads((run / "params.json").read_text())["targets_lr"] == 0.05
    assert refused([*TINY, *argv, "--targets_lr=0"], capsys).endswith("--targets_lr=0.0: must be a finite number > 0")


def test_a_new_task_sequence_strategy_with_a_strength_is_one_file_and_one_entry(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from family_harness import write_mnist

    plug_in(monkeypatch, tmp_path / "plugins", REGULARIZERS, "shrink", "proof_shrink", SHRINK, "Shrink")
    write_mnist(tmp_path / "data" / "mnist", train=200)
    argv = ["--mode=continual", f"--data_dir={tmp_path / 'data'}", f"--log_dir={tmp_path / 'logs'}", "--comment=t",
            "--scenario=class", "--strategies=none,shrink", "--seeds=1", "--cl_iters=2", "--cl_eval_every=2",
            "--cl_hidden=8", "--use_tensorboard=False"]
    # left out, the strength is the protocol's for the scenario, from the table beside the strategy
    assert build_config(config.parse_args(argv), set()).strengths["shrink"] == 4.0
    assert main.main([*argv, "--shrink_lambda=3"]) == 0
    results = json.loads((tmp_path / "logs" / "split_mnist_t" / "continual_results.json").read_text())
    assert results["config"]["strengths"]["shrink"] == 3.0 and "shrink/12345" in results["runs"]
    assert refused([*argv, "--comment=bad", "--shrink_lambda=-1"], capsys).endswith(
        "--shrink_lambda=-1.0: must be a finite number >= 0")
