"""``--mode=continual``'s options, declared beside the experiment (config.py collects them through ``modes.MODES``).

Defaults are van de Ven & Tolias (2019)'s split-MNIST protocol; ``--cl_protocol`` sets another published
one (``options.presets.CL_PROTOCOLS``) and each strength left out is the protocol's value for the scenario:
tuned on the validation split where it has been (``TUNED_STRENGTHS``), else the paper's (``SCENARIO_STRENGTHS``),
both beside the regularisers and read by :mod:`modes.continual`; ``--cl_strengths=published`` asks for the paper's. Each regulariser's
own options join this group from its declaration (``regularizers/*_options.py``). Free of heavy imports (``--help``).
"""

from __future__ import annotations


from options import presets
from options.domains import COUNT, POSITIVE, Domain
from options.parsing import StrictParser, choice, str_list
from options.plugin import ModeOptions

GROUP = "continual"
# --cl_task_order: split MNIST's digit pairs, as data.tasks.split_mnist_groups draws them
TASK_ORDERS = ("fixed", "shuffled")
# --cl_eval_split: what every metric is measured on (data.tasks.EVAL_SPLITS; not imported: no torch for --help)
EVAL_SPLITS = ("test", "valid")
# --cl_strengths: where a strength left out comes from (modes.continual.scenario_values)
STRENGTH_SOURCES = ("tuned", "published")
FRACTION = Domain(lo=0, hi=1, lo_open=True, hi_open=True)  # a held-out part: some images, never all


def add(p: StrictParser) -> None:
    from regularizers import REGULARIZERS  # the registry --strategies names (light: no torch at import)

    g = p.group(
        GROUP, "--mode=continual: task sequences compared over paired seeds (docs/continual.md). --cl_protocol sets a "
        "published split-MNIST protocol (default: van de Ven & Tolias 2019, 'Three scenarios for continual learning': "
        "MLP 2x400 ReLU, Adam lr 1e-3 betas (0.9, 0.999), batch 128, 2000 iterations per task) and each strength's "
        "per-scenario default.", tier=1)
    g.add_argument("--cl_protocol", type=choice(*presets.CL_PROTOCOLS), default="vandeven2019",
                   help="published protocol: iterations, batch, lr, widths, EWC's Fisher, and the per-scenario strengths "
                        "(see --cl_strengths); options given explicitly win")
    g.add_argument("--cl_strengths", type=choice(*STRENGTH_SOURCES), default="tuned",
                   help="each strength left out: tuned, the value chosen on the validation split by experiments/continual/"
                        "tune.py (TUNED_STRENGTHS beside each regulariser; the published one for a scenario not tuned "
                        "yet), or published: the paper's (SCENARIO_STRENGTHS; what runs before this option used)")
    g.add_argument("--benchmark", type=choice("split_mnist", "seq_mnist_0-2_3-5", "permuted_mnist", "split_cifar10", "folder"),
                   default="split_mnist", help="task sequence; the run is <log_dir>/<benchmark>_<comment>")
    g.add_argument("--scenario", type=choice("task", "domain", "class"), default="task",
                   help="heads (van de Ven & Tolias 2019): one per task / one shared per-task-sized / one over every class")
    g.add_argument("--strategies", type=str_list, default=["none", "joint", "ewc", "online_ewc", "si", "mas", "wpl"],
                   help=f"none (fine-tuning), joint (all tasks so far), {', '.join(REGULARIZERS)}")
    g.add_argument("--cl_task_order", type=choice(*TASK_ORDERS), default="fixed",
                   help="split_mnist: fixed pairs 0/1, 2/3, ..., 8/9, or shuffled: the 10 digits permuted by each seed's "
                        "generator, then paired (van de Ven & Tolias's code); every strategy of a seed sees the same tasks")
    g.add_argument("--cl_eval_split", type=choice(*EVAL_SPLITS), default="test",
                   help="what R, the curves and the integrated loss measure: each task's test split, or valid: a held-out "
                        "--cl_valid_fraction of its training data (the same images for every seed and strategy; the test "
                        "split is then not read). Tune strengths on valid, never on test")
    g.add_argument("--cl_valid_fraction", type=float, default=0.1,
                   help="--cl_eval_split=valid: the part of each task's training data held out (not trained on)")
    g.add_argument("--seeds", type=int, default=5, help="paired seeds --random_seed, +1, ...")
    g.add_argument("--num_tasks", type=int, default=5, help="permuted_mnist: tasks (the first unpermuted)")
    g.add_argument("--task_split", type=str, default="", help='folder: JSON {"folder": NAME, "tasks": [[class, ...], ...]}')
    g.add_argument("--cl_iters", type=int, default=2000, help="iterations per task")
    g.add_argument("--cl_batch_size", type=int, default=128, help="batch size")
    g.add_argument("--cl_lr", type=float, default=1e-3, help="Adam learning rate (betas 0.9, 0.999)")
    g.add_argument("--cl_hidden", type=str, default="400,400", help="MLP hidden widths, comma-separated")
    g.add_argument("--cl_eval_every", type=int, default=100, help="iterations between test evaluations of every task")
    g.add_argument("--importance_samples", type=int, default=1000, help="training samples per task for EWC's Fisher and MAS")


OPTIONS = ModeOptions(add, {"seeds": COUNT, "num_tasks": COUNT, "cl_iters": COUNT, "cl_batch_size": COUNT, "cl_lr": POSITIVE,
                            "cl_valid_fraction": FRACTION,
                            "cl_eval_every": COUNT, "importance_samples": COUNT},
                      presets={"cl_protocol": presets.CL_PROTOCOLS}, group=GROUP)
