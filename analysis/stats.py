"""Statistics over seeds: mean and spread, 95% t interval, percentile-bootstrap interval, paired differences.

Every experiment summarises its per-seed numbers here, so an interval means the same thing in
every table of the project. A bootstrap over fewer than ``MIN_PAIRS`` pairs is not reported: with two
pairs it can only return the two values themselves, an interval that looks tight beside the honest
(very wide) t interval of the same numbers. Such results carry ``lo = hi = None`` and ``note``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import numpy as np

MIN_PAIRS = 5
TOO_FEW_PAIRS = f"n<{MIN_PAIRS}: interval not reported"


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


def reported_ci(mean: float, spread: float, n: int, spread_is_sem: bool, level: float = 0.95) -> dict[str, float]:
    """``{"mean", "lo", "hi", "n"}``: the t interval of a published ``mean ± spread`` over ``n`` runs.

    Papers report ± SEM or ± a standard deviation, neither of which is an interval of the mean; rebuilding
    the t interval from the ± and the number of runs puts a published figure on the scale of :func:`mean_ci`.
    """
    if n < 2:
        raise ValueError(f"a t interval needs at least two runs, got {n}")
    from scipy import stats

    sem = spread if spread_is_sem else spread / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sem)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


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


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int = 0, resamples: int = 10000,
                     level: float = 0.95) -> dict[str, Any]:
    """Mean of ``a - b`` over paired runs with its percentile-bootstrap interval (seeds resampled as pairs);
    below ``MIN_PAIRS`` pairs the interval is ``None`` and ``note`` says why."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < MIN_PAIRS:
        return {"mean": float(np.mean(diffs)), "lo": None, "hi": None, "n": len(diffs), "note": TOO_FEW_PAIRS}
    lo, hi = bootstrap_ci(diffs, seed, resamples, level)
    return {"mean": float(np.mean(diffs)), "lo": lo, "hi": hi, "n": len(diffs)}


def noise_floor(groups: Sequence[Sequence[float]]) -> float:
    """Pooled standard deviation across seeds at a fixed setting: the run-to-run noise of one measurement."""
    usable = [g for g in groups if len(g) > 1]
    if not usable:
        return 0.0
    dof = sum(len(g) - 1 for g in usable)
    return float(math.sqrt(sum(np.var(g, ddof=1) * (len(g) - 1) for g in usable) / dof))


def detectable_effect(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided t test on ``n`` paired differences of spread ``sd`` detects
    with probability ``power``: ``(t_{1-a/2} + t_{power}) * sd / sqrt(n)`` (infinite below two seeds)."""
    if n < 2:
        return math.inf
    from scipy import stats

    return float((stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def best_stability(table: Sequence[Sequence[float]], minimize: bool, seed: int = 0, resamples: int = 2000) -> list[float]:
    """How often each setting is the best when the seeds are resampled (rows: settings, columns: paired seeds).

    Every bootstrap draw resamples the same seeds for all settings, keeping the pairing; the result is
    the fraction of draws in which each setting has the best mean.
    """
    data = np.asarray(table, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.shape[1], size=(resamples, data.shape[1]))
    means = data[:, picks].mean(axis=2)  # settings x resamples
    best = means.argmin(axis=0) if minimize else means.argmax(axis=0)
    return [float(np.mean(best == i)) for i in range(data.shape[0])]


def ratio_bootstrap(num: Sequence[float], den: Sequence[float], seed: int = 0, resamples: int = 10000,
                    level: float = 0.95) -> dict[str, Any]:
    """``mean(num) / mean(den)`` over paired runs with a percentile-bootstrap interval (pairs resampled);
    below ``MIN_PAIRS`` pairs the interval is ``None`` and ``note`` says why."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired samples need equal, non-zero lengths, got {len(num)} and {len(den)}")
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if len(a) < MIN_PAIRS:
        return {"ratio": float(a.mean() / b.mean()), "lo": None, "hi": None, "n": len(a), "note": TOO_FEW_PAIRS}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    ratios = a[picks].mean(axis=1) / b[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return {"ratio": float(a.mean() / b.mean()), "lo": float(np.percentile(ratios, tail)),
            "hi": float(np.percentile(ratios, 100 - tail)), "n": len(a)}


def interval_text(result: dict[str, Any], key: str = "mean", fmt: str = "+.4g") -> str:
    """``value [lo, hi]``, or ``value (n<5: interval not reported)``: how a paired interval is shown."""
    if result.get("lo") is None:
        return f"{result[key]:{fmt}} ({result.get('note', TOO_FEW_PAIRS)})"
    return f"{result[key]:{fmt}} [{result['lo']:{fmt}}, {result['hi']:{fmt}}]"


# ------------------------------------------------------------------------------- rankings
def rank_agreement(scores: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """Kendall tau-b and Spearman rho between two scores **of the same items** (``scores[i]`` and ``truth[i]``
    belong to item i; never two lists of ids ordered by rank, whose tau depends on arbitrary labels).
    Ties count as tau-b and average ranks do; a constant input has no ranking: NaN."""
    from scipy import stats

    if len(scores) != len(truth) or len(scores) < 2:
        raise ValueError(f"rank agreement needs two equal-length score lists of >= 2 items, got {len(scores)} and {len(truth)}")
    a, b = np.asarray(scores, dtype=float), np.asarray(truth, dtype=float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"tau": math.nan, "rho": math.nan}
    return {"tau": float(stats.kendalltau(a, b).statistic), "rho": float(stats.spearmanr(a, b).statistic)}


def top_k_regret(scores: Sequence[float], truth: Sequence[float], k: int = 1) -> float:
    """How much worse (in ``truth``'s units, lower is better) the best of the ``k`` items ranked best by
    ``scores`` truly is than the truly best item: 0 when the search's top k holds the best one. Ties in
    ``scores`` are broken by item order (what a stable sort of the search's list picks)."""
    if len(scores) != len(truth) or not 1 <= k <= len(scores):
        raise ValueError(f"top-{k} regret of {len(scores)} scores against {len(truth)} truths")
    picked = np.argsort(np.asarray(scores, dtype=float), kind="stable")[:k]
    return float(min(truth[i] for i in picked) - min(truth))


def paired_tests(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """``a - b`` over paired seeds: mean with t and bootstrap intervals, Wilcoxon signed-rank and paired t p-values."""
    from scipy import stats

    t = paired_difference(a, b)
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    boot = paired_bootstrap(a, b, seed)
    result: dict[str, Any] = {"mean": t["mean"], "t_lo": t["lo"], "t_hi": t["hi"], "n": len(diffs),
                              "lo": boot["lo"], "hi": boot["hi"], **({"note": boot["note"]} if "note" in boot else {})}
    nonzero = diffs[diffs != 0]
    result["wilcoxon_p"] = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else None
    result["t_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) >= 2 and np.ptp(diffs) > 0 else None
    return result
