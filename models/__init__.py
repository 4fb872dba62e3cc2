"""Networks and search spaces.

``SPACES`` names the search spaces ``--network_type`` chooses from (config.py takes its choices from it);
each entry is the space module's ``from_options(args, device)``. Entries are imported on first use
(:mod:`options.registry`), so reading the names does not import torch. A new search space is its module
(the space and its ``from_options``) plus one entry here.
"""

from __future__ import annotations

from typing import Any

from options.registry import Registry

# name -> ``from_options(args, device)``, the function that builds the space the options describe.
SPACES: Registry[Any] = Registry("search space", {
    "rnn": "models.rnn_space:from_options",
    "rnn32": "models.rnn32_space:from_options",
    "micro_cnn": "models.cnn_space:from_options",
})
