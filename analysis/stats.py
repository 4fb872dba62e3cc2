"""Statistics over seeds: mean with a 95% t interval, percentile-bootstrap interval, paired differences."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


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
    """Percentile-bootstrap interval of the mean."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over paired runs (same seed) with its t interval."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], level)


def ratio_bootstrap(num: Sequence[float], den: Sequence[float], seed: int = 0, resamples: int = 10000,
                    level: float = 0.95) -> dict[str, float]:
    """``mean(num) / mean(den)`` over paired runs with a percentile-bootstrap interval (pairs resampled)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired samples need equal, non-zero lengths, got {len(num)} and {len(den)}")
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    ratios = a[picks].mean(axis=1) / b[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return {"ratio": float(a.mean() / b.mean()), "lo": float(np.percentile(ratios, tail)),
            "hi": float(np.percentile(ratios, 100 - tail)), "n": len(a)}
