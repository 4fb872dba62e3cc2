"""This project's shared RNN step side by side with the original WPL code's, on the same model.

The original is the paper authors' repository (``kcyu2014/multi-model-forgetting``, docs/fidelity.md):
nothing of it is stored here. ``--original`` names a checkout of it (a work tree, or a git directory
read at ``--commit``); the script exports the four files its shared RNN needs into a temporary
folder, applies the patches listed in ``PATCHES`` (each one says why; the run stops with one line if
a patch no longer applies), and runs each side in its own process, alternately:

* ``project``: ``bench_rnn.build_trainer`` (the search's trainer, WPL at the paper's strength) at
  ``--size``; it writes the shared weights (under the original's names), the sampled cell and one
  batch, and reports the loss of that batch in eval mode;
* ``original``: the original ``models.shared_rnn.RNN`` built with the paper command's settings,
  loaded with those weights and the same cell (its ``dag``), the loss of the same batch in eval mode
  (checked equal to the project's), then its training batch as its ``Trainer.train_shared`` runs it
  (forward, cross-entropy, backward, ``clip_grad_norm_`` 0.25, SGD lr 20 with L2 1e-7).

Both time ``--reps`` training batches after a warm-up, read the peak resident memory (``VmHWM``),
then run two WPL batches and read it again: the project builds its WPL state (the Fisher; anchors
are lazy) with the trainer, so its first figure already holds it; the original makes its state
(``init_wpl_weights``: an anchor and a Fisher for every edge) when WPL starts. The project side
keeps freed memory in the heap as ``main.py`` does on the CPU. Usage::

    git clone https://github.com/kcyu2014/multi-model-forgetting /tmp/wpl-original
    python -m benchmarks.bench_original --original /tmp/wpl-original --size paper --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FILES = ("models/shared_base.py", "models/shared_rnn.py", "models/wpl_module.py", "utils.py")
# (file, text in the original, replacement, why). Nothing else is changed.
PATCHES = [
    ("models/shared_rnn.py", "torch.FloatTensor(mask).cuda()", "torch.tensor(mask, dtype=hidden.dtype, device=hidden.device)",
     "the hidden-norm clip builds its mask on the GPU unconditionally; here it follows the hidden state's device"),
]
PAPER = dict(tie_weights=True, shared_wdrop=0.5, shared_dropout=0.4, shared_dropoute=0.1, shared_dropouti=0.65,
             mode="train", cuda=False, alpha_fisher=60.0, lambda_fisher=0.9, momentum=True, fisher_clip_by_norm=10.0,
             alpha_decay=2.0, alpha_decay_after=15.0)  # its config.py defaults and the paper's RNN command
LR, L2, CLIP = 20.0, 1e-7, 0.25
# Modules the exported files import but the shared RNN never uses: empty stand-ins.
STUBS = {"IPython": "interactive debugging", "cv2": "reading and writing images (utils.py's fallback for scipy.misc)"}


STUB_BODY = '''def __getattr__(name):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{__name__}.{name} is a stand-in in this benchmark")
    return unavailable
'''


def read_original(source: Path, commit: str, name: str) -> str:
    if (source / name).is_file():
        return (source / name).read_text()
    git_dir = source if (source / "HEAD").is_file() else source / ".git"
    done = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{commit}:{name}"], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_original: cannot read {name} from {source} at {commit}: {done.stderr.strip()}")
    return done.stdout


def export(source: Path, commit: str, dest: Path) -> None:
    """The original's RNN files, patched, under ``dest`` (an importable ``models`` package and
    ``utils``), and the empty stand-ins of ``STUBS``."""
    texts = {name: read_original(source, commit, name) for name in FILES}
    for name, old, new, _why in PATCHES:
        if old not in texts[name]:
            raise SystemExit(f"bench_original: patch for {name} does not apply ({old!r} not found): "
                             "is --original the kcyu2014/multi-model-forgetting repository?")
        texts[name] = texts[name].replace(old, new)
    for name, text in texts.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    (dest / "models" / "__init__.py").write_text("")
    for module, why in STUBS.items():
        (dest / f"{module}.py").write_text(f'"""Stand-in: the original imports {module} for {why} only."""\n\n\n' + STUB_BODY)


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------- sides
def project_side(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    from benchmarks import bench_rnn
    from benchmarks import bench_util as U
    from utils import keep_freed_memory

    keep_freed_memory()  # as main.py does on the CPU
    s = U.SIZES[args.size]
    trainer, wpl = bench_rnn.build_trainer(s, argparse.Namespace(seed=args.seed, amp=False, compile=False, cuda_graphs=False,
                                                                 controller_device="cpu", preset="paper", plain_cell=False))
    model, arch = trainer.space.model, trainer.space.random_arch(torch.Generator().manual_seed(args.seed))
    g = torch.Generator().manual_seed(args.seed)
    inputs = torch.randint(s.ntokens, (s.bptt, s.batch), generator=g)
    targets = torch.randint(s.ntokens, (s.bptt * s.batch,), generator=g)
    if not args.state.exists():
        torch.save({"weights": original_names(model), "activations": list(arch.activations), "parents": list(arch.parents),
                    "inputs": inputs, "targets": targets}, args.state)
    model.eval()
    with torch.no_grad():
        out = model(inputs, model.init_hidden(s.batch), arch)
        loss = float(F.cross_entropy(out.logits.reshape(-1, s.ntokens), targets))
    times = [timed(lambda: bench_rnn.shared_batch(trainer, arch, None)) for _ in range(args.warmup + args.reps)]
    plain_rss = peak_rss_mib()
    bench_rnn.shared_batch(trainer, arch, wpl)
    bench_rnn.fisher_refresh(trainer, arch, wpl)
    bench_rnn.shared_batch(trainer, arch, wpl)
    return {"loss": loss, "step_s": times[args.warmup:], "peak_rss_mib_plain": plain_rss, "peak_rss_mib": peak_rss_mib(),
            "arch": str(arch)}


def original_names(model: Any) -> dict[str, Any]:
    """The project's shared RNN weights under the original's parameter names (node 0's fused
    ``[W_c; W_h]`` rows split; the batch norm's statistics included)."""
    h = model.hid
    out = {"encoder.weight": model.encoder.weight, "decoder.bias": model.decoder.bias,
           "w_xc.weight": model.w_x0[:h], "w_xh.weight": model.w_x0[h:], "w_xc.bias": model.b_x0[:h], "w_xh.bias": model.b_x0[h:],
           "w_hc_raw": model.w_h0[:h], "w_hh_raw": model.w_h0[h:]}
    for name, edge in model.edges.items():
        out[f"edge_c/{name}"], out[f"edge_h/{name}"] = edge.w_c, edge.w_h
    for key, value in model.output_norm.state_dict().items():
        out[f"batch_norm.{key}"] = value
    return {k: v.detach().clone() for k, v in out.items()}


def original_side(args: argparse.Namespace) -> dict[str, Any]:
    import collections
    import logging

    import torch
    from torch.nn import functional as F

    logging.disable(logging.INFO)
    from models import shared_rnn  # the original's: this process runs in the export folder (run_side)
    if not Path(shared_rnn.__file__).resolve().is_relative_to(args.export.resolve()):
        raise SystemExit(f"bench_original: models resolved to {shared_rnn.__file__}, not the export in {args.export}")
    from models.wpl_module import WPLModule

    from benchmarks import bench_util as U

    s = U.SIZES[args.size]
    state = torch.load(args.state, weights_only=True)
    cfg = argparse.Namespace(shared_hid=s.hid, shared_embed=s.hid, num_blocks=s.num_blocks, **PAPER)
    model = shared_rnn.RNN(cfg, argparse.Namespace(num_tokens=s.ntokens))
    load_original(model, state["weights"])
    Node = collections.namedtuple("Node", ["id", "name"])  # the original's cell reads .id and .name
    dag = to_dag(Node, state["activations"], state["parents"], s.num_blocks)
    inputs, targets = state["inputs"], state["targets"]
    del state  # the loaded copy of the weights (557 MiB at paper size) would count in the peak RSS
    model.eval()
    with torch.no_grad():
        out, _, _ = model(inputs, dag)
        loss = float(F.cross_entropy(out.reshape(-1, s.ntokens), targets))
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=L2)
    hidden = [model.init_training(s.batch)]

    # WPL through the base class: the RNN's own overrides call dag_to_keys(dag) without its `args`.
    def step(wpl: bool = False) -> None:
        optim.zero_grad()
        out, h, _ = model(inputs, dag, hidden=hidden[0])
        loss = F.cross_entropy(out.reshape(-1, s.ntokens), targets)
        if wpl:
            keys = shared_rnn.dag_to_keys(dag, cfg)
            loss = loss + 0.5 * WPLModule.compute_weight_plastic_loss_with_update_fisher(model, keys)
        loss.backward()
        if wpl:
            WPLModule.update_fisher(model, shared_rnn.dag_to_keys(dag, cfg))
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optim.step()
        hidden[0] = h.detach()

    times = [timed(step) for _ in range(args.warmup + args.reps)]
    plain_rss = peak_rss_mib()
    model.init_wpl_weights()
    step(wpl=True)
    step(wpl=True)
    return {"loss": loss, "step_s": times[args.warmup:], "peak_rss_mib_plain": plain_rss, "peak_rss_mib": peak_rss_mib(),
            "params": int(sum(p.numel() for p in model.parameters()))}


def load_original(model: Any, weights: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for key, value in weights.items():
            if key.startswith("edge_"):  # edge_c/i_j: the original's w_c[i][j]
                i, j = (int(v) for v in key.split("/")[1].split("_"))
                target = (model.w_c if key[5] == "c" else model.w_h)[i][j].weight
            elif key.startswith("batch_norm.") and not key.endswith(("weight", "bias")):
                target = model.get_buffer(key)
            else:
                target = model.get_parameter(key)
            if target.shape != value.shape:
                raise SystemExit(f"bench_original: {key}: the original has {tuple(target.shape)}, the project {tuple(value.shape)}")
            target.copy_(value)


def to_dag(node: Any, activations: list[str], parents: list[int], num_blocks: int) -> dict[int, list[Any]]:
    """The project's cell as the original's ``dag``: node 0 hangs from -1, every other node from its
    parent, and each loose end from the averaging node ``num_blocks``."""
    name = {"ReLU": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "identity": "identity"}
    dag: dict[int, list[Any]] = {-1: [node(0, name[activations[0]])]}
    for j, p in enumerate(parents, start=1):
        dag.setdefault(p, []).append(node(j, name[activations[j]]))
    for leaf in set(range(num_blocks)) - set(parents):
        dag[leaf] = [node(num_blocks, "avg")]
    return dag


# ----------------------------------------------------------------------------------------- main
def run_side(side: str, args: argparse.Namespace, export_dir: Path, state: Path) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    # The original side starts in the export folder, so its `models` and `utils` come first on the path
    # and this repository (for `benchmarks`) comes from PYTHONPATH after them.
    cwd = export_dir if side == "original" else root
    if side == "original":
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "benchmarks.bench_original", "--side", side, "--export", str(export_dir), "--state", str(state),
           "--size", args.size, "--reps", str(args.reps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"bench_original: the {side} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=Path, help="a checkout (or git directory) of kcyu2014/multi-model-forgetting")
    p.add_argument("--commit", default="HEAD", help="the commit to read when --original is a git directory")
    p.add_argument("--size", default="paper", choices=["paper", "small", "tiny"])
    p.add_argument("--pairs", type=int, default=3, help="alternated (project, original) runs; the order flips each pair")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--side", choices=["project", "original"], help=argparse.SUPPRESS)
    p.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps((project_side if args.side == "project" else original_side)(args)))
        return {}
    if args.original is None or not args.original.exists():
        p.error("--original: give a checkout of https://github.com/kcyu2014/multi-model-forgetting")
    work = Path(tempfile.mkdtemp(prefix="bench_original_"))
    try:
        export(args.original, args.commit, work / "original")
        runs: dict[str, list[dict[str, Any]]] = {"project": [], "original": []}
        for pair in range(args.pairs):
            for side in ("project", "original") if pair % 2 == 0 else ("original", "project"):
                runs[side].append(run_side(side, args, work / "original", work / "state.pt"))
                print(f"  pair {pair} {side}: median {statistics.median(runs[side][-1]['step_s']):.3f} s  "
                      f"loss {runs[side][-1]['loss']:.6f}  peak RSS {runs[side][-1]['peak_rss_mib']:.0f} MiB",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from benchmarks import bench_util as U
    from benchmarks.bench_search import fmt

    s = U.SIZES[args.size]
    tokens = s.batch * s.bptt
    med = {side: [statistics.median(r["step_s"]) for r in rs] for side, rs in runs.items()}
    out: dict[str, Any] = {
        "size": args.size, "threads": args.threads, "pairs": args.pairs, "reps": args.reps, "patches": [p[3] for p in PATCHES],
        "params": runs["original"][0]["params"], "loss_project": runs["project"][0]["loss"],
        "loss_original": runs["original"][0]["loss"],
        "tokens_per_s": {side: U.summary([tokens / t for t in ts]) for side, ts in med.items()},
        "speed_ratio": U.summary([o / q for o, q in zip(med["original"], med["project"])]),
        "peak_rss_mib_plain": {side: U.summary([r["peak_rss_mib_plain"] for r in rs]) for side, rs in runs.items()},
        "peak_rss_mib": {side: U.summary([r["peak_rss_mib"] for r in rs]) for side, rs in runs.items()},
        "loadavg_end": U.loadavg(),
    }
    if abs(out["loss_project"] - out["loss_original"]) > 1e-4 * abs(out["loss_original"]):
        raise SystemExit(f"bench_original: not the same model: eval loss {out['loss_project']} here, "
                         f"{out['loss_original']} in the original")
    print(f"== bench_original --size {args.size}, {args.threads} thread(s), {args.pairs} pairs x {args.reps} reps ==")
    print(f"same model: {out['params']:,} parameters, eval loss {out['loss_project']:.6f} (project) "
          f"{out['loss_original']:.6f} (original)")
    for side in ("original", "project"):
        print(f"{side:9s} tokens/s {fmt(out['tokens_per_s'][side])}   peak RSS after the plain batches "
              f"{fmt(out['peak_rss_mib_plain'][side], ' MiB', 4)}, after the WPL batches {fmt(out['peak_rss_mib'][side], ' MiB', 4)}")
    print(f"speed ratio project / original (per pair) {fmt(out['speed_ratio'])}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
