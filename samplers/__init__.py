"""Architecture samplers behind one interface (:class:`samplers.base.Sampler`), chosen with ``--sampler``.

``SAMPLERS[name].build(space, cfg, device, run)`` builds one, ``cfg`` being its ``Config`` filled
from the same-named options. A new sampler is one file plus one entry here; ``--sampler`` takes its
choices from this table. A sampler with options of its own also names their declaration in ``options=``
(:mod:`options.plugin`; built-in ones keep it in a light module beside them, as ``nao_options``). Entries,
declarations and the names below are imported on first use (:mod:`options.registry`), so reading the table
(config.py, ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from options.registry import Registry

SAMPLERS: Registry[Any] = Registry("sampler", {
    "reinforce": "samplers.reinforce:ReinforceSampler",
    "random": "samplers.random:RandomSampler",
    "evolution": "samplers.evolution:EvolutionSampler",
    "nao": "samplers.nao:NAOSampler",
}, options={
    "evolution": "samplers.evolution_options:OPTIONS",
    "nao": "samplers.nao_options:OPTIONS",
})

_HOMES = {"Sampler": "samplers.base", "EvolutionConfig": "samplers.evolution", "EvolutionSampler": "samplers.evolution",
          "NAOConfig": "samplers.nao", "NAOSampler": "samplers.nao", "RandomConfig": "samplers.random", "RandomSampler": "samplers.random",
          "ReinforceConfig": "samplers.reinforce", "ReinforceSampler": "samplers.reinforce"}


def __getattr__(name: str) -> Any:
    """The package's classes, imported when first asked for (PEP 562)."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'samplers' has no attribute {name!r}")


if TYPE_CHECKING:
    from samplers.base import Sampler
    from samplers.evolution import EvolutionConfig, EvolutionSampler
    from samplers.nao import NAOConfig, NAOSampler
    from samplers.random import RandomConfig, RandomSampler
    from samplers.reinforce import ReinforceConfig, ReinforceSampler

__all__ = ["SAMPLERS", "EvolutionConfig", "EvolutionSampler", "NAOConfig", "NAOSampler", "RandomConfig", "RandomSampler", "ReinforceConfig", "ReinforceSampler", "Sampler"]
