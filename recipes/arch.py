"""Which architecture a retrain trains, and what it inherits from the search that found it.

``--arch=random`` (a seeded uniform draw, the random-search baseline), ``--arch=FILE`` (best_arch.json,
arch.json or a bare architecture dict) or ``--load_path=<search run>`` (its best_arch.json). The search
run's space and regularisation options (``config.SEARCH_KEYS``) come from its params.json unless the
command line gives them; its node count and network type from the architecture itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

import config
from spaces.base import SearchSpace
from utils import UserError, load_json

log = logging.getLogger("wpl")
MAX_ARCH_NODES = 256  # the node count of an architecture file (a retrain builds a cell of that size)


def random_arch(space: SearchSpace, seed: int) -> Any:
    """A uniformly random architecture of ``space``, the same for the same seed (random-search baseline)."""
    return space.random_arch(torch.Generator().manual_seed(seed))


def read_arch_dict(path: Path) -> dict[str, Any]:
    """The architecture in a JSON file: ``{"arch": {...}, ...}`` (best_arch.json, arch.json) or a bare dict."""
    data = load_json(path)
    arch = data.get("arch", data) if isinstance(data, dict) else None
    if not isinstance(arch, dict):
        raise UserError(f"{path} holds no architecture")
    return arch


def arch_shape(d: dict[str, Any], origin: str) -> dict[str, Any]:
    """The network type and node count an architecture dict implies (so they need not be repeated as options)."""
    if d.get("type") == "rnn" and isinstance(d.get("activations"), list):
        shape = {"network_type": "rnn", "num_blocks": len(d["activations"])}
    elif d.get("type") == "micro_cnn" and isinstance(d.get("normal"), list):
        shape = {"network_type": "micro_cnn", "num_blocks": len(d["normal"])}
    else:
        shape = {}
    if shape and not 1 <= shape["num_blocks"] <= MAX_ARCH_NODES:  # 20,000 nodes ran for minutes before failing
        raise UserError(f"{origin}: an architecture of {shape['num_blocks']} nodes; this project builds 1 to "
                        f"{MAX_ARCH_NODES} (the paper's cells have 12 or fewer)")
    if shape:
        return shape
    raise UserError(f"{origin}: not an architecture of this project (type={d.get('type')!r})")


def make_arch(space: SearchSpace, d: dict[str, Any] | None, seed: int) -> Any:
    """``d`` checked against ``space``, or a random architecture of it when ``d`` is None."""
    if d is None:
        return random_arch(space, seed)
    try:
        return space.arch_from_dict(d)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"not a valid architecture for this search space: {err}") from err


def arch_from_option(space: SearchSpace, value: str, seed: int) -> Any:
    """``--arch``'s architecture: ``random`` (seeded by ``seed``) or a JSON file."""
    return make_arch(space, None if value == "random" else read_arch_dict(Path(value)), seed)


def run_dir_of(path: Path) -> Path:
    """The run directory a ``--load_path`` names: itself, or the run holding a checkpoint or file."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def search_run_of(load_path: str, arch: str) -> Path | None:
    """The search run a retrain inherits from: ``load_path``, else the folder of ``arch`` if it holds params.json."""
    if load_path:
        path = Path(load_path)
        if not path.exists():
            raise UserError(f"--load_path={path} does not exist")
        return run_dir_of(path)
    if arch and arch != "random" and (Path(arch).parent / "params.json").is_file():
        return Path(arch).parent
    return None


def inherited_options(run: Path, explicit: set[str]) -> dict[str, Any]:
    """The search run's ``config.SEARCH_KEYS`` values the command line did not give (``explicit``)."""
    params = run / "params.json"
    if not params.is_file():
        raise UserError(f"{params} is missing: --load_path must name a search run directory or checkpoint")
    saved = load_json(params)
    saved = {**{k: v for k, v in config.LEGACY_VALUES.items() if k not in saved}, **saved}  # what older runs did
    inherited = {k: saved[k] for k in config.SEARCH_KEYS - explicit if k in saved}
    log.info("search configuration from %s: %s", params, ", ".join(f"{k}={v}" for k, v in sorted(inherited.items())))
    return inherited


def find_arch(arch: str, load_path: str, seed: int) -> tuple[dict[str, Any] | None, str]:
    """The architecture dict to retrain (None: draw a random one) and where it came from."""
    if arch == "random":
        return None, f"random (seed {seed})"
    if arch:
        path = Path(arch)
    elif load_path:
        path = search_run_of(load_path, arch) / "best_arch.json"  # type: ignore[operator]
        if not path.is_file():
            raise UserError(f"{path} is missing: run --mode=derive on the search first, or pass --arch=FILE")
    else:
        raise UserError("--mode=retrain needs --arch=FILE, --arch=random or --load_path=<search run>")
    return read_arch_dict(path), str(path)
