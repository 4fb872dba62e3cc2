"""Search spaces: each owns its data streams, losses, rewards, drawing and retraining plan.

``SPACES`` names the spaces ``--network_type`` chooses from (config.py takes its choices from it); each
entry is the space module's ``PLUGIN`` (:class:`spaces.base.SpacePlugin`). Entries are imported on first
use (:mod:`options.registry`), so reading the names does not import torch. A new search space is its
module (the space and its ``PLUGIN``) plus one entry here; one with options of its own also names their
declaration in ``options=`` (:mod:`options.plugin`). The networks themselves live in ``models/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from options.registry import Registry

if TYPE_CHECKING:  # the plug-ins import torch; the names must not
    from spaces.base import SpacePlugin

SPACES: Registry[SpacePlugin] = Registry("search space", {
    "rnn": "spaces.rnn:PLUGIN",
    "rnn32": "spaces.rnn32:PLUGIN",
    "micro_cnn": "spaces.cnn:PLUGIN",
})
