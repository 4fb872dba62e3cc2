"""Animate the architecture drawings of a run, in epoch order.

    python generate_gif.py --model_name=ptb_rnn-train --output=sample.gif [--log_dir=logs] [--max_frame=50]

Frames come from ``<log_dir>/<model_name>/networks/<epoch>-<kind>.png`` (``--kind`` derived or
sampled); each is padded to a common size on white and stamped with its epoch.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.stopping import Stopped, stop_on_signals
from options.parsing import StrictParser, choice
from options.safe_io import one_line_errors
from utils import UserError, atomic_write_bytes

FRAME_NAME = re.compile(r"(\d+)-(\w+)\.png$")


def collect_frames(networks: Path, kind: str, max_frame: int) -> list[tuple[int, Path]]:
    frames = []
    for path in networks.glob("*.png"):
        match = FRAME_NAME.search(path.name)
        if match and (kind == "all" or match.group(2) == kind):
            frames.append((int(match.group(1)), path))
    frames.sort()
    if max_frame > 0 and len(frames) > max_frame:  # keep first and last, evenly spaced between
        keep = np.linspace(0, len(frames) - 1, max_frame).round().astype(int)
        frames = [frames[i] for i in sorted(set(keep.tolist()))]
    return frames


def open_drawing(path: Path) -> Any:
    """One drawing as RGB; a corrupt, truncated or decompression-bomb file is one line naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read the drawing {path} ({type(err).__name__}: {str(err)[:120]})") from err


def render_frames(frames: list[tuple[int, Path]], title: str) -> list[np.ndarray]:
    from PIL import Image, ImageDraw

    images = [open_drawing(p) for _, p in frames]
    banner = 24
    width = max(im.width for im in images)
    height = max(im.height for im in images) + banner
    out = []
    for (epoch, _), im in zip(frames, images):
        canvas = Image.new("RGB", (width, height), "white")
        canvas.paste(im, ((width - im.width) // 2, banner))
        ImageDraw.Draw(canvas).text((6, 6), f"{title}  epoch {epoch}".strip(), fill="black")
        out.append(np.asarray(canvas))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = StrictParser(prog="generate_gif.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--model_name", required=True, help="run folder name under --log_dir")
    p.add_argument("--output", default="sample.gif", help="GIF file to write")
    p.add_argument("--log_dir", default="logs", help="folder holding the runs")
    p.add_argument("--max_frame", type=int, default=50, help="at most this many frames (evenly spaced; <= 0: all)")
    p.add_argument("--title", default="", help="text stamped before the epoch on each frame")
    p.add_argument("--kind", type=choice("derived", "sampled", "all"), default="derived", help="which drawings")
    p.add_argument("--duration", type=float, default=0.5, help="seconds per frame")
    args = p.parse_args(argv)
    if not (math.isfinite(args.duration) and args.duration > 0):
        p.error(f"--duration={args.duration}: expected a finite number of seconds > 0")
    if Path(args.output).suffix.lower() != ".gif":
        p.error(f"--output={args.output}: expected a .gif file")
    try:
        with stop_on_signals(), one_line_errors():
            write_gif(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:  # the GIF is written in one rename at the end: nothing half-written
        print(f"stopped by {stop.name}: no GIF written", file=sys.stderr)
        return stop.exit_code
    return 0


def write_gif(args: Any) -> None:
    """Collect, render and write the frames; prints what was written."""
    networks = Path(args.log_dir) / args.model_name / "networks"
    frames = collect_frames(networks, args.kind, args.max_frame)
    if not frames:
        raise UserError(f"no {args.kind} drawings (*.png) in {networks}: is graphviz's dot (or graphviz-pure) installed?")
    import imageio.v3 as iio

    # Encoded in memory, then written atomically by this process: imageio opening the file itself left an
    # "Exception ignored" traceback behind when the folder could not be written.
    data = iio.imwrite("<bytes>", render_frames(frames, args.title), extension=".gif",
                       duration=int(args.duration * 1000), loop=0)
    atomic_write_bytes(Path(args.output), lambda f: f.write(data))
    print(f"wrote {args.output} ({len(frames)} frames)")


if __name__ == "__main__":
    sys.exit(main())
