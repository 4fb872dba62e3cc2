"""Figures saved as PNG, headless: the panel grid, curves with a shaded spread, annotated matrices, bars with intervals.

matplotlib is imported on first use with the Agg backend, so nothing here needs a display and
modules that only compute results do not pay for the import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(rows: int, cols: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, np.ndarray]:
    """A figure and its ``rows x cols`` axes, always as a 2-D array (``axes[row][col]``)."""
    return pyplot().subplots(rows, cols, figsize=figsize, squeeze=False, **kwargs)


def save(fig: Any, path: Path, dpi: int = 120, tight: bool = True) -> None:
    """Write ``fig`` to ``path`` (parents created; the format from its suffix) and free it. Rendered in memory,
    then renamed into place (``utils.atomic_write_bytes``): a stop or a full disk never leaves half a picture
    over the previous one."""
    import io

    from utils import atomic_write_bytes

    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format=Path(path).suffix.lstrip(".").lower() or "png")
    finally:
        pyplot().close(fig)
    atomic_write_bytes(Path(path), lambda f: f.write(buffer.getvalue()))


def band(ax: Any, x: Sequence[float], mean: Sequence[float], spread: Sequence[float], *, color: str,
         style: str = "-", label: str | None = None, alpha: float = 0.15) -> None:
    """``mean`` as a line and ``mean ± spread`` (a std over seeds, an interval) shaded in the same colour."""
    m, s = np.asarray(mean, dtype=float), np.asarray(spread, dtype=float)
    ax.plot(x, m, style, color=color, label=label)
    ax.fill_between(x, m - s, m + s, color=color, alpha=alpha)


def heatmap(ax: Any, matrix: Sequence[Sequence[float]], *, vmin: float, vmax: float,
            text: Callable[[float], str] = "{:.2g}".format, dark_below: float | None = None, fontsize: int = 7) -> None:
    """``matrix`` as an image with every entry written on it (white text below ``dark_below``)."""
    values = np.asarray(matrix, dtype=float)
    ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis")
    threshold = (vmin + vmax) / 2 if dark_below is None else dark_below
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, text(v), ha="center", va="center", fontsize=fontsize, color="w" if v < threshold else "k")


def bar_ci(ax: Any, names: Sequence[str], means: Sequence[float], intervals: Sequence[tuple[float, float]], *,
           color: str = "tab:blue") -> None:
    """One bar per name with its ``(lo, hi)`` interval as error bars, and the zero line."""
    m = np.asarray(means, dtype=float)
    ci = np.asarray(intervals, dtype=float).reshape(-1, 2)
    ax.bar(names, m, yerr=[m - ci[:, 0], ci[:, 1] - m], capsize=6, color=color, alpha=0.7)
    ax.axhline(0, color="grey", lw=0.8)


def no_data(ax: Any, text: str = "no data in these runs") -> None:
    """A grey note in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
