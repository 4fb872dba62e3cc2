"""The side-by-side harness against the original WPL code (benchmarks/bench_original.py).

The original repository is not stored here: the end-to-end test runs when ``WPL_ORIGINAL`` names a
checkout (or git directory) of kcyu2014/multi-model-forgetting, and skips otherwise. The export,
the patches' failure mode and the cell conversion are tested on files written here.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
from pathlib import Path

import pytest

from benchmarks import bench_original as B

Node = collections.namedtuple("Node", ["id", "name"])


def fake_original(root: Path, patched_text: bool) -> Path:
    for name in B.FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x = 1\n")
    if patched_text:
        (root / "models/shared_rnn.py").write_text("mask = " + B.PATCHES[0][1] + "\n")
    return root


def test_export_applies_the_patches_and_writes_stand_ins(tmp_path: Path) -> None:
    src = fake_original(tmp_path / "src", patched_text=True)
    dest = tmp_path / "out"
    B.export(src, "HEAD", dest)
    assert (dest / "models/shared_rnn.py").read_text() == "mask = " + B.PATCHES[0][2] + "\n"
    assert (dest / "models/__init__.py").read_text() == ""
    spec = importlib.util.spec_from_file_location("cv2_stand_in", dest / "cv2.py")
    assert spec is not None and spec.loader is not None
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    with pytest.raises(RuntimeError, match="stand-in"):
        stub.imread("a.png")


def test_export_stops_with_one_line_when_a_patch_does_not_apply(tmp_path: Path) -> None:
    src = fake_original(tmp_path / "src", patched_text=False)
    with pytest.raises(SystemExit, match="patch for models/shared_rnn.py does not apply") as err:
        B.export(src, "HEAD", tmp_path / "out")
    assert "\n" not in str(err.value)


def test_cell_becomes_the_originals_dag() -> None:
    # node 1 reads 0, node 2 reads 0, node 3 reads 1: loose ends 2 and 3 feed the average (node 4).
    dag = B.to_dag(Node, ["tanh", "ReLU", "identity", "sigmoid"], [0, 0, 1], 4)
    assert dag == {-1: [Node(0, "tanh")], 0: [Node(1, "relu"), Node(2, "identity")], 1: [Node(3, "sigmoid")],
                   2: [Node(4, "avg")], 3: [Node(4, "avg")]}


@pytest.mark.skipif(not os.environ.get("WPL_ORIGINAL"), reason="WPL_ORIGINAL does not name a checkout of the original code")
def test_same_model_side_by_side_at_tiny_size(tmp_path: Path) -> None:
    out = B.main(["--original", os.environ["WPL_ORIGINAL"], "--size", "tiny", "--pairs", "1", "--reps", "1",
                  "--threads", "1", "--json", str(tmp_path / "o.json")])
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved == out
    assert saved["loss_project"] == pytest.approx(saved["loss_original"], rel=1e-5)
    assert saved["speed_ratio"]["median"] > 0 and saved["peak_rss_mib"]["original"]["median"] > 0
