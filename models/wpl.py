"""Weight Plasticity Loss: the implementation lives in :mod:`regularizers.wpl` (on the shared quadratic store)."""

from regularizers.store import CHUNK as _CHUNK
from regularizers.wpl import MODES, WPL, Mode, alpha_schedule

__all__ = ["MODES", "WPL", "Mode", "alpha_schedule", "_CHUNK"]
