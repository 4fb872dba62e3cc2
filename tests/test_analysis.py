"""analysis/: statistics by hand, tables read back cell by cell, figures read back as PNG images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from analysis import plots
from analysis.stats import bootstrap_ci, columns_mean_std, mean_std
from analysis.tables import aligned, cell, markdown, pm
from regularizers import REGULARIZERS


def test_mean_std_by_hand() -> None:
    assert mean_std([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "std": pytest.approx(math.sqrt(7 / 3))}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0}
    assert columns_mean_std([[1.0, 10.0], [3.0, 10.0]]) == [{"mean": 2.0, "std": pytest.approx(math.sqrt(2))},
                                                            {"mean": 10.0, "std": 0.0}]
    with pytest.raises(ValueError):
        mean_std([])


def test_bootstrap_interval_brackets_the_mean_and_degenerates_for_one_value() -> None:
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], resamples=2000)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=7) == bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=7)


def test_markdown_table_cells_and_escapes() -> None:
    text = markdown(["run", "value"], [["a|b", cell(0.123456)], ["c", cell(None)], ["d", cell(float("nan"))]], "Title")
    lines = text.splitlines()
    assert lines[:2] == ["### Title", ""]
    assert lines[2:4] == ["| run | value |", "|---|---|"]
    assert lines[4] == "| a\\|b | 0.1235 |" and lines[5] == "| c | – |" and lines[6] == "| d | – |"
    assert markdown(["x"], []).splitlines() == ["| x |", "|---|"]


def test_aligned_text_and_plus_minus() -> None:
    assert pm(90.0812, 0.157, "6.2f", "4.2f") == " 90.08 ± 0.16"
    assert pm(1.0, 0.5) == "1.00 ± 0.50"
    lines = aligned(["k", "alpha"], [[1, "100"], [3, "0"]], [2, 6]).splitlines()
    assert lines == [" k  alpha", " 1    100", " 3      0"]
    with pytest.raises(ValueError):
        aligned(["k"], [[1, 2]], [2])


def test_figures_are_written_as_png(tmp_path: Path) -> None:
    import imageio.v3 as iio

    fig, axes = plots.panels(1, 3, (9, 3))
    assert axes.shape == (1, 3)
    plots.band(axes[0][0], [0, 1, 2], [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], color="tab:blue", label="a")
    plots.heatmap(axes[0][1], [[0.1, 0.9], [0.5, 0.7]], vmin=0, vmax=1)
    plots.bar_ci(axes[0][2], ["x", "y"], [1.0, -0.5], [(0.5, 1.5), (-1.0, 0.0)])
    assert len(axes[0][1].texts) == 4
    plots.save(fig, tmp_path / "sub" / "f.png", dpi=50)
    image = iio.imread(tmp_path / "sub" / "f.png")
    assert image.shape[:2] == (150, 450)


def test_set_importance_replaces_one_group_and_checks_shapes() -> None:
    layer = nn.Linear(2, 1)
    reg = REGULARIZERS["l2"]({"w": [layer.weight, layer.bias]}, 2.0)
    reg.set_importance("w", [torch.tensor([[1.0, 3.0]]), torch.tensor([0.5])])
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert float(reg.penalty(["w"])) == pytest.approx(0.5 * 2.0 * (1.0 + 3.0))
    with pytest.raises(ValueError):
        reg.set_importance("w", [torch.zeros(2)])
    with pytest.raises(KeyError):
        reg.set_importance("v", [])
