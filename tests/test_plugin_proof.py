"""The design's promise, checked: a new regulariser, sampler or search space is one file plus one registry entry.

Each plug-in below is written as a new module in a temporary folder (on ``sys.path`` for the test only) and
named in its registry by one entry (``Registry.targets``, restored afterwards); nothing else in the
repository changes. Then ``main.main`` runs a tiny search with it, the option parser offering its name like
any built-in one's, and the run's files show it was the one used.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import main
from spaces import SPACES
from regularizers import SEARCH_IMPORTANCES
from samplers import SAMPLERS

TINY = ["--dataset=tiny", "--max_epoch=2", "--shared_max_step=2", "--num_batch_per_iter=2", "--save_epoch=1",
        "--shared_embed=8", "--shared_hid=8", "--batch_size=4", "--test_batch_size=2", "--num_blocks=3",
        "--derive_num_sample=3", "--num_gpu=0", "--forgetting_eval_batches=1", "--use_tensorboard=False",
        "--controller_max_step=2"]

# A regulariser for the search: WPL whose importance is 1 everywhere (a plain pull towards the anchors).
UNIFORM = '''
from regularizers.wpl_search import SearchWPL


class UniformWPL(SearchWPL):
    label = "uniform WPL"

    def update_fisher(self, names, alpha=None):
        _, importance, _ = self.gather(list(names))
        for f in importance:
            f.fill_(1.0)
'''

# A sampler: random search that always proposes the all-zero architecture.
ZEROS = '''
from samplers.random import RandomSampler


class ZeroSampler(RandomSampler):
    def sample(self, n):
        return [self.space.decode([0] * len(self.space.decision_sizes)) for _ in range(n)]
'''

# A search space: one weight w, the "architecture" a choice among 3 targets, loss (w - target)^2.
TARGETS = '''
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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

    def __init__(self):
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
        return OptimSpec(lr=0.1, weight_decay=0.0, grad_clip=0.0)

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


PLUGIN = SpacePlugin(build=lambda args, device: TargetSpace())
'''


def plug_in(monkeypatch: pytest.MonkeyPatch, folder: Path, table: object, name: str, module: str, source: str,
            attribute: str) -> None:
    """One new file (``folder/module.py``) and one registry entry (``name -> module:attribute``)."""
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(table.targets, name, f"{module}:{attribute}")  # type: ignore[attr-defined]


def search(argv: list[str], log_dir: Path) -> Path:
    assert main.main([*TINY, *argv, f"--log_dir={log_dir}", "--comment=proof"]) == 0
    return next(log_dir.iterdir())


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_new_search_regulariser_is_one_file_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            data_dir: Path) -> None:
    plug_in(monkeypatch, tmp_path / "plugins", SEARCH_IMPORTANCES, "uniform", "proof_uniform", UNIFORM, "UniformWPL")
    run = search(["--wpl_importance=uniform", "--alpha_fisher=5", "--sampler=random", f"--data_dir={data_dir}"],
                 tmp_path / "logs")
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["config"]["wpl_importance"] == "uniform"
    importance = [t for key, t in state["regularizer"].items() if key.startswith("fisher/")]
    # the plug-in's importance, not a Fisher: 1 on the groups an architecture trained, 0 on the others
    assert importance and all(bool((t == 1).all()) or bool((t == 0).all()) for t in importance)
    assert any(bool((t == 1).all()) for t in importance)
    assert records(run)[1]["shared_wpl"] > 0


def test_a_new_sampler_is_one_file_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 data_dir: Path) -> None:
    plug_in(monkeypatch, tmp_path / "plugins", SAMPLERS, "zeros", "proof_zeros", ZEROS, "ZeroSampler")
    run = search(["--sampler=zeros", "--alpha_fisher=0", f"--data_dir={data_dir}"], tmp_path / "logs")
    best = json.loads((run / "best_arch.json").read_text())
    arch = best.get("arch", best)
    assert set(arch["activations"]) == {arch["activations"][0]} and set(arch["parents"]) == {0}  # all tokens 0


def test_a_new_search_space_is_one_file_and_one_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plug_in(monkeypatch, tmp_path / "plugins", SPACES, "targets", "proof_targets", TARGETS, "PLUGIN")
    run = search(["--network_type=targets", "--dataset=none", "--sampler=random",
                  "--alpha_fisher=0"], tmp_path / "logs")
    assert [r["epoch"] for r in records(run)] == [0, 1]
    best = json.loads((run / "best_arch.json").read_text())
    assert best.get("arch", best)["type"] == "targets"
