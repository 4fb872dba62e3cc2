"""Networks and search spaces.

``SPACES`` names the search spaces ``--network_type`` chooses from (config.py takes its choices from it);
modes/builders.py builds each from the options. Entries are imported on first use (:mod:`options.registry`), so reading
the names does not import torch. A new search space is its module, one entry here and its builder.
"""

from __future__ import annotations

from typing import Any

from options.registry import Registry

SPACES: Registry[Any] = Registry("search space", {
    "rnn": "models.rnn_space:RNNSpace",
    "rnn32": "models.rnn32_space:RNN32Space",
    "micro_cnn": "models.cnn_space:CNNSpace",
})
