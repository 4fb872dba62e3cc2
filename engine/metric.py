"""Which way a metric improves, in one place (perplexity down, accuracy up)."""

from __future__ import annotations

import math

HIGHER_IS_BETTER = {"ppl": False, "acc": True}  # the search spaces' metrics


def higher_is_better(metric: str) -> bool:
    try:
        return HIGHER_IS_BETTER[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(HIGHER_IS_BETTER)})") from None


def improves(metric: str, score: float, best: float | None) -> bool:
    """Whether ``score`` beats ``best`` (``None``: nothing yet); a non-finite score never does."""
    if not math.isfinite(score):
        return False
    if best is None:
        return True
    return score > best if higher_is_better(metric) else score < best
