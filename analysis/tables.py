"""Tables of results as text: markdown for reports and stdout, right-aligned columns for terminals.

Experiments build their rows from plain values and format numbers with :func:`pm` and
:func:`cell`, so every table of the project prints intervals and missing values the same way.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

MISSING = "–"


def cell(value: Any, spec: str = ".4g") -> str:
    """A number formatted with ``spec`` (``None`` and non-finite floats as ``–``); anything else as ``str``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return format(value, spec) if isinstance(value, float) else str(value)


def pm(center: float, spread: float, spec: str = ".2f", spread_spec: str | None = None) -> str:
    """``"center ± spread"`` (a mean and its std or interval half-width)."""
    return f"{center:{spec}} ± {spread:{spread_spec or spec}}"


def markdown(head: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A markdown table; cells are ``str``-ed and their ``|`` escaped; ``title`` becomes a heading above it."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {title}", ""] if title else []
    lines += [line(head), "|" + "---|" * len(head)]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def aligned(head: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int]) -> str:
    """Fixed-width text: every cell right-aligned to its column's width, columns one space apart."""
    if len(widths) != len(head) or any(len(row) != len(head) for row in rows):
        raise ValueError("aligned: every row needs one cell per column")
    return "\n".join(" ".join(str(c).rjust(w) for c, w in zip(cells, widths)) for cells in [head, *rows])
