"""Statistics over seeds: mean and spread, 95% t interval, percentile-bootstrap interval, paired differences.

Every experiment summarises its per-seed numbers here, so an interval means the same thing in
every table of the project.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}``: mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def columns_mean_std(rows: Sequence[Sequence[float]]) -> list[dict[str, float]]:
    """:func:`mean_std` of every column of equal-length ``rows`` (e.g. one curve per seed)."""
    return [mean_std(column) for column in zip(*rows)]


def t_halfwidth(values: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the t interval of the mean (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``{"mean", "lo", "hi", "n"}`` with the t interval."""
    mean = float(np.mean(values))
    half = t_halfwidth(values, level)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(values)}


def bootstrap_ci(values: Sequence[float], seed: int = 0, resamples: int = 10000, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean (both ends equal the value for a single value)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over paired runs (same seed) with its t interval."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], level)
