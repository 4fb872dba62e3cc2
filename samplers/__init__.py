"""Architecture samplers behind one interface (:class:`samplers.base.Sampler`), chosen with ``--sampler``.

``SAMPLERS[name].build(space, cfg, device, run)`` builds one, ``cfg`` being its ``Config`` filled
from the same-named options. A new sampler is one file plus one entry here.
"""

from __future__ import annotations

from samplers.base import Sampler
from samplers.evolution import EvolutionConfig, EvolutionSampler
from samplers.random import RandomConfig, RandomSampler
from samplers.reinforce import ReinforceConfig, ReinforceSampler

SAMPLERS: dict[str, type] = {"reinforce": ReinforceSampler, "random": RandomSampler, "evolution": EvolutionSampler}

__all__ = ["SAMPLERS", "EvolutionConfig", "EvolutionSampler", "RandomConfig", "RandomSampler", "ReinforceConfig", "ReinforceSampler", "Sampler"]
