"""``--mode=continual``'s options, declared beside the experiment (config.py collects them into the option table).

Defaults are van de Ven & Tolias (2019)'s split-MNIST protocol; ``--cl_protocol`` sets another published
one (``options.presets.CL_PROTOCOLS``) and each strength left out is the protocol's value for the scenario
(the ``SCENARIO_STRENGTHS`` tables beside the regularisers, read by :mod:`modes.continual`). Free of heavy
imports (``--help``).
"""

from __future__ import annotations

from typing import Any

from options import presets
from options.parsing import choice, str2bool, str_list


def add(p: Any) -> None:
    from regularizers import REGULARIZERS  # the registry --strategies names (light: no torch at import)

    g = p.group(
        "continual", "--mode=continual: task sequences compared over paired seeds (docs/continual.md). --cl_protocol sets a "
        "published split-MNIST protocol (default: van de Ven & Tolias 2019, 'Three scenarios for continual learning': "
        "MLP 2x400 ReLU, Adam lr 1e-3 betas (0.9, 0.999), batch 128, 2000 iterations per task) and each strength's "
        "per-scenario default.", tier=1)
    g.add_argument("--cl_protocol", type=choice(*presets.CL_PROTOCOLS), default="vandeven2019",
                   help="published protocol: iterations, batch, lr, widths, EWC's Fisher, and the per-scenario strengths "
                        "(SCENARIO_STRENGTHS in regularizers/); options given explicitly win")
    g.add_argument("--benchmark", type=choice("split_mnist", "seq_mnist_0-2_3-5", "permuted_mnist", "split_cifar10", "folder"),
                   default="split_mnist", help="task sequence; the run is <log_dir>/<benchmark>_<comment>")
    g.add_argument("--scenario", type=choice("task", "domain", "class"), default="task",
                   help="heads (van de Ven & Tolias 2019): one per task / one shared per-task-sized / one over every class")
    g.add_argument("--strategies", type=str_list, default=["none", "joint", "ewc", "online_ewc", "si", "mas", "wpl"],
                   help=f"none (fine-tuning), joint (all tasks so far), {', '.join(REGULARIZERS)}")
    g.add_argument("--seeds", type=int, default=5, help="paired seeds --random_seed, +1, ...")
    g.add_argument("--num_tasks", type=int, default=5, help="permuted_mnist: tasks (the first unpermuted)")
    g.add_argument("--task_split", type=str, default="", help='folder: JSON {"folder": NAME, "tasks": [[class, ...], ...]}')
    g.add_argument("--cl_iters", type=int, default=2000, help="iterations per task")
    g.add_argument("--cl_batch_size", type=int, default=128, help="batch size")
    g.add_argument("--cl_lr", type=float, default=1e-3, help="Adam learning rate (betas 0.9, 0.999)")
    g.add_argument("--cl_hidden", type=str, default="400,400", help="MLP hidden widths, comma-separated")
    g.add_argument("--cl_eval_every", type=int, default=100, help="iterations between test evaluations of every task")
    g.add_argument("--importance_samples", type=int, default=1000, help="training samples per task for EWC's Fisher and MAS")
    g.add_argument("--ewc_lambda", type=float, default=None,
                   help="EWC strength lambda (lambda/2 sum F (theta - theta*)^2); default: the protocol's for the scenario")
    g.add_argument("--ewc_fisher", type=choice("empirical", "true", "predicted"), default="predicted",
                   help="EWC: labels from the data, sampled from the model, or the model's predicted class")
    g.add_argument("--ewc_per_task", type=str2bool, default=True, help="EWC: one penalty per past task (else merged, anchored at the latest weights)")
    g.add_argument("--online_ewc_lambda", type=float, default=None, help="online EWC strength; default: the protocol's")
    g.add_argument("--online_ewc_gamma", type=float, default=None,
                   help="online EWC: decay of the running Fisher; default: the protocol's")
    g.add_argument("--si_c", type=float, default=None, help="SI strength c (c sum Omega (theta - theta*)^2); default: the protocol's")
    g.add_argument("--si_xi", type=float, default=0.1, help="SI damping xi (also the search's, --wpl_importance=si)")
    g.add_argument("--mas_lambda", type=float, default=None,
                   help="MAS strength lambda (lambda sum Omega (theta - theta*)^2); default: the protocol's")
    g.add_argument("--l2_lambda", type=float, default=None, help="L2 baseline strength; default: the protocol's")
    g.add_argument("--wpl_alpha", type=float, default=None,
                   help="WPL strength alpha (Fisher: moving average of squared batch gradients); default: the protocol's")
    g.add_argument("--wpl_mode", type=choice("loss", "compound"), default="loss", help="WPL arithmetic (with --lambda_fisher, --momentum, --fisher_clip_by_norm)")
