"""The two presets of the modelling choices, NAO's two sizes, PathNet's two styles, and what runs saved before
an option existed meant.

Kept apart from the option table (config.py, which re-exports both names) because they are data about
the models, not options: ``--preset`` picks one of ``PRESETS``; ``LEGACY_VALUES`` fills saved
configurations that predate a key.
"""

from __future__ import annotations

from typing import Any

# Modelling choices whose default follows the paper's public code (the authors' repository, built on
# carpedm20/ENAS-pytorch); ``--preset=enas`` switches each to the ENAS paper's choice at once, and an
# option given explicitly still wins. docs/fidelity.md has the full table with the sources.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "enas": {
        "shared_wdrop_scope": "all",
        "rnn_output_norm": "none",
        "rnn_next_state": "avg",
        "rnn_input_bias": False,
        "cnn_stem": True,
        "cnn_cell_inputs": "calibrate",
        "cnn_depthwise": "separable",
        "cnn_node_combine": "sum",
        "cnn_cell_output": "concat",
        "cnn_classifier": "gap",
    },
}

# --nao_size: NAO-WS's pool schedule (the options' defaults, renqianluo/NAO) or one sized for CPU runs that
# keeps its ratios (pool : top : new : random = 1000 : 100 : 300 : 50 = 40 : 4 : 12 : 2). Explicit options win.
NAO_SIZES: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"nao_pool": 40, "nao_top_k": 4, "nao_new": 12, "nao_random": 2, "nao_controller_epochs": 100,
              "nao_round_every": 2},
}

# --pathnet_style: the paper's binary MNIST setting (the options' defaults; the stopping rule is ours, see
# docs/fidelity.md) or the public TF code's (jaesik817/pathnet, binary_mnist_pathnet.py and pathnet.py; its
# README's "Settings"). Explicit options win. docs/pathnet.md lists each value with its line of the TF code.
PATHNET_STYLES: dict[str, dict[str, Any]] = {
    "paper": {},
    "tf": {
        "pathnet_population": 20,  # --candi
        "pathnet_module_kinds": "tf",  # module2: skip, ReLU, residual ReLU by index mod 3
        "pathnet_aggregate": "mean_all",  # np.sum(layer_modules_list) / M
        "pathnet_init": "tf",  # truncated_normal(stddev=0.1), constant 0.1
        "pathnet_batch_draw": "shuffle",  # np.random.shuffle(idx) before each path's T batches
        "pathnet_lr": 0.05,  # --learning_rate, GradientDescentOptimizer
        "pathnet_converge": 0.99,  # if(acc >= 0.99)
        "pathnet_converge_window": 1,
        "pathnet_max_generations": 10000,  # --max_steps
        "pathnet_count_from": 0,  # prints the loop index i of the converging tournament
        "pathnet_mutation": "tf",  # get_geopath, mutation
        "pathnet_data": "tf",  # rand >= 0.5 adds rand, once per image
        "pathnet_frozen_active": True,  # geopath_insert[l, m] = 1.0 where fixed_list is '1'
    },
}

# --cl_protocol: a published split-MNIST protocol for --mode=continual (explicit options win). The options'
# defaults are vandeven2019's row. Each regulariser's per-scenario strength is declared beside it
# (SCENARIO_STRENGTHS in regularizers/*.py) and chosen by this name and --scenario; docs/continual.md cites both.
# vandeven2019: van de Ven & Tolias 2019, "Three scenarios for continual learning" (arXiv:1904.07734), and its code
#   (GMvandeVen/continual-learning, param_values.py at f0b1461e: iters 2000, lr 0.001, fc_units 400, batch 128;
#   the Fisher from the predicted class). Adam betas (0.9, 0.999) and two hidden layers are fixed in ContinualConfig.
# hsu2018: Hsu et al. 2018, "Re-evaluating continual learning scenarios" (arXiv:1810.12488), scripts
#   split_MNIST_incremental_*.sh of GT-RIPL/Continual-Learning-Benchmark at dff5200c: MLP400, Adam lr 0.001,
#   batch 128, --schedule 4 (4 epochs of about 12,000 images per task = about 375 batches; this loop draws
#   batches, it does not run epochs), the Fisher from the predicted class (agents/regularization.py).
CL_PROTOCOLS: dict[str, dict[str, Any]] = {
    "vandeven2019": {"cl_iters": 2000, "cl_batch_size": 128, "cl_lr": 1e-3, "cl_hidden": "400,400",
                     "ewc_fisher": "predicted"},
    "hsu2018": {"cl_iters": 375, "cl_batch_size": 128, "cl_lr": 1e-3, "cl_hidden": "400,400", "ewc_fisher": "predicted"},
}

# What a configuration saved before an option existed meant: a checkpoint or params.json that lacks
# the key was written by code that behaved like this value (not like today's default).
LEGACY_VALUES: dict[str, Any] = {
    "preset": "paper",
    "shared_wdrop_scope": "all",
    "rnn_output_norm": "none",
    "rnn_input_bias": False,
    "cnn_stem": True,
    "cnn_cell_inputs": "calibrate",
    "cnn_depthwise": "separable",
    "cnn_node_combine": "sum",
    "cnn_classifier": "gap",  # cnn_cell_output is older than these: saved runs have theirs
}
