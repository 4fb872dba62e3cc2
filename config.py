"""Command-line configuration: every option of the paper's code, parsed strictly.

Defaults are those of the paper's public code unless a help text says otherwise. Parsing is strict
where the paper's code was lax: an unknown option is an error naming the closest valid ones,
booleans accept only true/false/yes/no/1/0, and list options are read with ``ast.literal_eval`` or
as comma-separated names (never ``eval``) (the machinery is options/parsing.py). A repeated option takes its
last value. An option's ``role=`` says whether a checkpoint or the command line supplies it when a run
is continued or reused (``parsing.ROLES``); ``SHAPE_KEYS``, ``RUNTIME_KEYS`` and ``SEARCH_KEYS`` are
read off those marks. A plug-in's own options (a sampler's, a mode's, a regulariser's, ...) are declared beside
it and collected here from the registries (:mod:`options.plugin`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence, TypeVar

import modes
from options import presets
from data import DEFAULT_DATA_DIR
from options.parsing import StrictParser, choice, program_name, str2bool, str_list
from options.plugin import PluginOptions
from options.registry import Registry
from regularizers import REGULARIZERS, SEARCH_IMPORTANCES
from samplers import SAMPLERS
from spaces import SPACES

C = TypeVar("C")
PRESETS = presets.PRESETS  # --preset's choices (options/presets.py)
LEGACY_VALUES = presets.LEGACY_VALUES  # what saved configurations that lack a key meant


# The modes --mode chooses from, with the line --help shows for each: the registry that runs them.
MODES = modes.MODES
FIRST_SCREEN = "start here"
# The registries whose entries may declare options of their own (options.plugin), in the order the table adds
# them: the search's plug-ins after the search's options, the modes and --strategies' regularisers after retrain.
SEARCH_PLUGINS: tuple[Registry[Any], ...] = (SAMPLERS, SPACES, SEARCH_IMPORTANCES)
EXPERIMENT_PLUGINS: tuple[Registry[Any], ...] = (MODES, REGULARIZERS)


def declarations(tables: Sequence[Registry[Any]] = SEARCH_PLUGINS + EXPERIMENT_PLUGINS) -> list[PluginOptions]:
    """The plug-ins' option declarations in ``tables``, each once (two entries may share one), in table order."""
    found: list[PluginOptions] = []
    for table in tables:
        found += [d for d in table.declarations().values() if not any(d is seen for seen in found)]
    return found


def build_parser() -> StrictParser:
    """The option table. The first group is what ``--help`` shows; choices, and the plug-ins' own options, come
    from the plug-in tables."""
    prog = program_name("main.py")
    p = StrictParser(
        prog=prog,
        usage=f"%(prog)s [--mode {{{','.join(MODES)}}}]\n{' ' * (len(prog) + 8)}[--dataset NAME] [options]   (--help-all: every option)",
        description="ENAS architecture search with Weight Plasticity Loss (Benyahia, Yu et al., ICML 2019). "
                    "README.md has the paper's commands; docs/ has one page per topic.",
        allow_abbrev=False,
        first_screen=FIRST_SCREEN,
    )
    b = str2bool

    g = p.group(FIRST_SCREEN)
    g.add_argument("--mode", type=choice(*MODES), default="train", role="runtime",
                   help="what to run (default: %(default)s):\n" + "\n".join(f"{k}: {v}" for k, v in MODES.about.items()))
    g.add_argument("--dataset", type=str, default="ptb", metavar="NAME", role=("shape", "runtime", "search"),
                   help="ptb or wikitext2 (text: --network_type=rnn), cifar10 or mnist (images: micro_cnn), or a "
                        "folder name under --data_dir")
    g.add_argument("--network_type", type=choice(*SPACES), default="rnn", help="search space", role=("shape", "search"))
    g.add_argument("--sampler", type=choice(*SAMPLERS), default="reinforce",
                   help="where architectures come from: reinforce (the ENAS controller, learning when "
                        "--train_controller=True), random, evolution or nao (docs/search-loop.md, docs/nao.md)")
    g.add_argument("--preset", type=choice(*PRESETS), default="paper",
                   help="paper: the models of the paper's public code; enas: the ENAS paper's (Pham et al. 2018); "
                        "options given explicitly win (docs/fidelity.md)")
    g.add_argument("--data_dir", type=str, default=DEFAULT_DATA_DIR, metavar="DIR", role="runtime",
                   help="where datasets live; missing ones are downloaded (MNIST only into the default folder)")
    g.add_argument("--log_dir", type=str, default="logs", metavar="DIR", help="where run directories are created", role="runtime")
    g.add_argument("--comment", type=str, default="", metavar="NAME", role="runtime",
                   help="run name suffix: <log_dir>/<dataset>_<comment> (default: a timestamp)")
    g.add_argument("--resume", type=b, default=False, help="continue <log_dir>/<dataset>_<comment> from its latest checkpoint", role="runtime")
    g.add_argument("--load_path", type=str, default="", metavar="RUN", role="runtime",
                   help="run directory or checkpoint file to load (derive/test/forgetting/retrain)")
    g.add_argument("--num_gpu", type=int, default=1, metavar="N", role="runtime",
                   help="0: CPU; 1: one CUDA device when available; N > 1: N data-parallel workers, one per GPU "
                        "(N gloo CPU workers without CUDA); docs/distributed.md")
    g.add_argument("--max_epoch", type=int, default=100, metavar="N", help="search epochs", role="runtime")

    g = p.group("WPL (weight plasticity loss)")
    g.add_argument("--start_using_fisher", type=int, default=0, help="first epoch (0-based) with the WPL penalty and Fisher updates")
    g.add_argument("--num_batch_per_iter", type=int, default=10, help="training batches per sampled architecture in the shared phase")
    g.add_argument("--set_fisher_zero_per_iter", type=int, default=-1, help="zero the Fisher at the start of every epoch divisible by this (<= 0: never)")
    g.add_argument("--lambda_fisher", type=float, default=0.9, help="weight of the new squared gradient in the Fisher update")
    g.add_argument("--fisher_clip_by_norm", type=float, default=0.0, help="rescale each Fisher tensor to this norm when larger (0: no clip)")
    g.add_argument("--alpha_fisher", type=float, default=1.0, help="WPL strength alpha (0 disables WPL)")
    g.add_argument("--wpl_alpha_mode", type=choice("compound", "loss"), default="compound",
                   help="compound: alpha multiplies the stored Fisher at every update, as the paper's code does; "
                        "loss: textbook (alpha/2) sum F (theta-theta*)^2 with alpha applied at loss time")
    g.add_argument("--wpl_importance", type=choice(*SEARCH_IMPORTANCES), default="fisher",
                   help="the search's importance: fisher (the paper's online Fisher), mas (|d mean ||f(x)||^2 / d theta| on "
                        "the validation batch, Aljundi et al. 2018) or si (path integral over each model's training batches, "
                        "Zenke et al. 2017, damping --si_xi), l2 (the control: the Fisher flattened to its mean per tensor); docs/wpl.md says which WPL options apply to which")
    g.add_argument("--momentum", type=b, default=True, help="Fisher as a moving average ((1-lambda) F + lambda g^2) instead of a sum")
    g.add_argument("--alpha_decay", type=float, default=2.0, help="alpha decrement (mode 1) or factor (mode 2) per epoch once decay starts")
    g.add_argument("--alpha_decay_after", type=float, default=15.0, help="epoch at which alpha starts to decay")
    g.add_argument("--alpha_decay_mode", type=int, choices=(1, 2), default=1, help="1: linear decay, 2: geometric decay")
    g.add_argument("--alpha_small_scale", type=float, default=0.0, help="floor that alpha never goes below once decay has started")
    g.add_argument("--shared_valid_fisher", type=b, default=True, help="Fisher from one validation batch after each step (else from the last training batch)")
    g.add_argument("--shared_ce_fisher", type=b, default=True, help="Fisher from the cross-entropy gradient only (else from the full loss)")
    g.add_argument("--train_controller", type=b, default=False, help="run the controller (REINFORCE) phase")
    g.add_argument("--start_training_controller", type=int, default=0, help="first epoch with a controller phase")
    g.add_argument("--stop_training_controller", type=int, default=1000, help="epoch from which the controller phase stops")
    g.add_argument("--nb_batch_reward_controller", type=int, default=1, help="validation batches per controller reward")
    g.add_argument("--start_evaluate_diff", type=int, default=0, help="first epoch with the forgetting metric")
    g.add_argument("--forgetting_eval_batches", type=int, default=4, help="fixed validation batches for the forgetting metric (eval mode)")
    g.add_argument("--forgetting_models", type=int, default=20, help="--mode=forgetting: architectures trained in turn")
    g.add_argument("--forgetting_variants", type=str_list, default=["none", "compound", "loss"],
                   help="--mode=forgetting: variants compared: none; compound, loss (the arithmetic, with --wpl_importance); "
                        "fisher, mas, si (the importance, with --wpl_alpha_mode)")

    g = p.group("network")
    g.add_argument("--num_blocks", type=int, default=12, help="nodes of the RNN cell / blocks of a CNN cell", role=("shape", "search"))
    g.add_argument("--tie_weights", type=b, default=True, help="tie the RNN encoder and decoder (needs shared_embed == shared_hid)",
                   role=("shape", "search"))
    g.add_argument("--controller_hid", type=int, default=100, help="controller LSTM hidden size", role="shape")
    g.add_argument("--shared_wdrop", type=float, default=0.5, help="DropConnect on hidden-to-hidden weights", role="search")
    g.add_argument("--shared_dropout", type=float, default=0.4, help="locked dropout on the cell output", role="search")
    g.add_argument("--shared_dropoute", type=float, default=0.1, help="embedding (word) dropout", role="search")
    g.add_argument("--shared_dropouti", type=float, default=0.65, help="locked dropout on the embedded input", role="search")
    g.add_argument("--shared_embed", type=int, default=1000, help="RNN embedding size", role="shape")
    g.add_argument("--shared_hid", type=int, default=1000, help="RNN hidden size", role="shape")
    g.add_argument("--shared_rnn_max_length", type=int, default=35, help="BPTT length")
    g.add_argument("--shared_rnn_activations", type=str_list, default=["tanh", "ReLU", "identity", "sigmoid"], help="RNN node activations",
                   role=("shape", "search"))
    g.add_argument("--rnn_next_state", type=choice("avg", "last"), default="last",
                   help="state carried to the next time step: last node (paper's code) or avg of loose ends (ENAS paper)", role="search")
    g.add_argument("--shared_wdrop_scope", type=choice("node0", "all"), default="node0",
                   help="weights DropConnect (--shared_wdrop) applies to: node 0's hidden-to-hidden weights (paper's code) "
                        "or those and every edge's (this project before the fidelity change)", role="search")
    g.add_argument("--rnn_output_norm", type=choice("batchnorm", "none"), default="batchnorm",
                   help="normalisation of the cell output at every time step: BatchNorm1d (paper's code) or none (ENAS paper)",
                   role=("shape", "search"))
    g.add_argument("--rnn_input_bias", type=b, default=True,
                   help="biases on node 0's input projections W_xc, W_xh (paper's code); false: none (ENAS paper)", role=("shape", "search"))
    g.add_argument("--activation_regularization", type=b, default=False, help="AR penalty on dropped outputs", role="search")
    g.add_argument("--activation_regularization_amount", type=float, default=2.0, help="AR weight", role="search")
    g.add_argument("--temporal_activation_regularization", type=b, default=False, help="TAR penalty on output slowness", role="search")
    g.add_argument("--temporal_activation_regularization_amount", type=float, default=1.0, help="TAR weight", role="search")
    g.add_argument("--norm_stabilizer_regularization", type=b, default=False, help="norm-stabiliser penalty on hidden norms", role="search")
    g.add_argument("--norm_stabilizer_regularization_amount", type=float, default=1.0, help="norm-stabiliser weight", role="search")
    g.add_argument("--norm_stabilizer_fixed_point", type=float, default=5.0, help="target hidden norm of the norm stabiliser", role="search")
    g.add_argument("--search_mode", type=choice("micro", "macro"), default="micro", help="CNN search space (only micro is implemented)",
                   role=("shape", "search"))
    g.add_argument("--cnn_final_filter_size", type=int, default=384, help="channels of the last CNN module", role="shape")
    g.add_argument("--cnn_num_repeat_normal", type=int, default=6, help="normal cells per CNN module", role="shape")
    g.add_argument("--cnn_num_modules", type=int, default=3, help="CNN modules (reduction cells between them)", role=("shape", "search"))
    g.add_argument("--num_workers", type=int, default=4, help="DataLoader worker processes for image data", role="runtime")
    g.add_argument("--shared_cnn_types", type=str_list, default=["identity", "avg3x3", "max3x3", "depthwise_3x3", "depthwise_5x5"], help="CNN ops (both cells) unless overridden below",
                   role=("shape", "search"))
    g.add_argument("--shared_cnn_normal_types", type=str_list, default=None, help="CNN ops of normal cells (default: shared_cnn_types)",
                   role=("shape", "search"))
    g.add_argument("--shared_cnn_reduce_types", type=str_list, default=None, help="CNN ops of reduction cells (default: shared_cnn_types)",
                   role=("shape", "search"))
    g.add_argument("--cnn_stem", type=b, default=False,
                   help="a 3x3 conv + BN stem before the first CNN cell (ENAS); false: the first two cells read the images (paper's code)",
                   role=("shape", "search"))
    g.add_argument("--cnn_cell_inputs", type=choice("ops", "calibrate"), default="ops",
                   help="ops: the ops reading a CNN cell input map its channels and resolution themselves (paper's code: "
                        "grouped convs, identity/pooling subsample and repeat channels); calibrate: a 1x1 conv or "
                        "factorized reduce per input first (ENAS)", role=("shape", "search"))
    g.add_argument("--cnn_depthwise", type=choice("grouped", "separable"), default="grouped",
                   help="depthwise_KxK op: ReLU, one grouped KxK conv, affine BN (paper's code); separable: ReLU, "
                        "depthwise KxK conv, pointwise 1x1 conv, BN (ENAS)", role=("shape", "search"))
    g.add_argument("--cnn_node_combine", type=choice("avg", "sum"), default="avg",
                   help="how a CNN node joins its two inputs: average (paper's code) or sum (ENAS)", role=("shape", "search"))
    g.add_argument("--cnn_cell_output", type=choice("last", "concat", "avg"), default="last",
                   help="a CNN cell's output: its last node (paper's code), its loose ends concatenated + 1x1 "
                        "projection (ENAS), or the loose ends averaged", role=("shape", "search"))
    g.add_argument("--cnn_classifier", type=choice("flatten", "gap"), default="flatten",
                   help="CNN classifier: linear layer on the flattened final feature map (paper's code), or ReLU, "
                        "global average pooling and a linear layer (ENAS)", role=("shape", "search"))
    g.add_argument("--cnn_channels_last", type=str2bool, default=True,
                   help="run the CNN in channels-last memory layout (1.7x faster steps on the CPU; false: NCHW)", role="runtime")
    g.add_argument("--cnn_cudnn_benchmark", type=b, default=True,
                   help="on a CUDA device, cuDNN times its convolution algorithms once per new shape and keeps the "
                        "fastest (the micro-CNN's shapes recur); off under --deterministic", role="runtime")
    g.add_argument("--cnn_eval_images", type=int, default=-1,
                   help="most images per CNN inference forward: the reward's, the forgetting metric's and evaluations' "
                        "batches run together up to this many, each normalised with its own statistics (the logits of "
                        "one by one, up to rounding); 0: one batch per forward; -1: 1024 on a CUDA device (launch-bound "
                        "there), 0 on the CPU (larger batches run slower there)", role="runtime")
    g.add_argument("--shared_cnn_lr", type=float, default=0.05,
                   help="CNN shared lr (ENAS micro search: SGD, Nesterov momentum 0.9, cosine from 0.05 to 0.0005); "
                        "the RNN's shared_lr of 20 diverges on images")
    g.add_argument("--shared_cnn_lr_min", type=float, default=0.0005, help="end of the CNN's cosine lr schedule")
    g.add_argument("--shared_cnn_momentum", type=float, default=0.9, help="CNN shared SGD (Nesterov) momentum")
    g.add_argument("--shared_cnn_l2_reg", type=float, default=1e-4, help="CNN shared weight decay (ENAS micro search)")
    g.add_argument("--shared_cnn_grad_clip", type=float, default=5.0, help="CNN shared gradient norm clip (ENAS micro search)")
    g.add_argument("--valid_size", type=int, default=5000, help="images held out of the training set for validation (class-stratified)",
                   role=("shape", "search"))

    g = p.group("learning")
    g.add_argument("--arch", type=str, default="", help="architecture JSON file for test/retrain, or 'random'")
    g.add_argument("--batch_size", type=int, default=64, help="training batch size", role="shape")
    g.add_argument("--test_batch_size", type=int, default=1, help="batch size of the test split")
    g.add_argument("--entropy_mode", type=choice("reward", "regularizer"), default="reward", help="entropy bonus in the reward or as a loss term")
    g.add_argument("--policy_batch_size", type=int, default=5, help="architectures per controller step")
    g.add_argument("--ppl_square", type=b, default=False, help="reward reward_c/ppl^2 (CNN: reward_c*acc^2)")
    g.add_argument("--reward_c", type=float, default=80.0, help="reward constant")
    g.add_argument("--ema_baseline_decay", type=float, default=0.95, help="decay of the reward's moving-average baseline")
    g.add_argument("--discount", type=float, default=1.0, help="discount of the reward over the controller's decisions")
    g.add_argument("--controller_max_step", type=int, default=1500, help="controller steps per epoch")
    g.add_argument("--controller_optim", type=choice("adam", "sgd"), default="adam", help="controller optimiser")
    g.add_argument("--controller_lr", type=float, default=3.5e-4, help="controller learning rate")
    g.add_argument("--controller_lr_cosine", type=b, default=False, help="cosine controller lr from controller_lr_max to controller_lr_min over max_epoch")
    g.add_argument("--controller_lr_max", type=float, default=0.05, help="cosine schedule maximum")
    g.add_argument("--controller_lr_min", type=float, default=0.001, help="cosine schedule minimum")
    g.add_argument("--controller_grad_clip", type=float, default=0.0, help="controller gradient norm clip (0: none)")
    g.add_argument("--tanh_c", type=float, default=2.5, help="logit squashing tanh_c * tanh(logits) while training")
    g.add_argument("--controller_device", type=choice("cpu", "model"), default="cpu",
                   help="where the controller runs: cpu (its LSTM of 100 units is launch-bound on a GPU: one REINFORCE "
                        "step is several times faster on the CPU) or model (the shared model's device)")
    g.add_argument("--softmax_temperature", type=float, default=5.0, help="controller logits are divided by this")
    g.add_argument("--entropy_coeff", type=float, default=1e-4, help="entropy bonus weight")
    g.add_argument("--shared_initial_step", type=int, default=0, help="warm-up shared steps before the first epoch")
    g.add_argument("--shared_max_step", type=int, default=50, help="shared steps (sampled architectures) per epoch")
    g.add_argument("--shared_num_sample", type=int, default=1, help="architectures sampled per shared step")
    g.add_argument("--shared_optim", type=choice("sgd", "adam"), default="sgd", help="shared-weight optimiser")
    g.add_argument("--shared_lr", type=float, default=20.0, help="shared-weight learning rate (RNN)")
    g.add_argument("--shared_decay", type=float, default=0.96, help="shared lr factor per epoch after shared_decay_after")
    g.add_argument("--shared_decay_after", type=float, default=15.0, help="epoch after which the shared lr decays")
    g.add_argument("--shared_lr_anneal", type=float, default=0.0,
                   help="last fraction of the run over which the shared lr falls linearly towards 0, set per shared "
                        "step (0: off, the ENAS schedule; the ranking benchmark uses 0.5, docs/ranking.md)")
    g.add_argument("--shared_l2_reg", type=float, default=1e-7, help="shared-weight L2 regularisation")
    g.add_argument("--shared_grad_clip", type=float, default=0.25, help="shared gradient norm clip")
    g.add_argument("--derive_num_sample", type=int, default=100, help="architectures scored when deriving")

    for declared in declarations(SEARCH_PLUGINS):
        declared.add(p)

    g = p.group(
        "retrain", "--mode=retrain: train one architecture from scratch (no controller, no WPL). RNN defaults: "
                   "ENAS's final PTB recipe (scripts/ptb_final.sh: SGD lr 20, batch 64, BPTT 35, clip 0.25, L2 5e-7) "
                   "with AWD-LSTM's variable BPTT and NT-ASGD (Merity et al. 2018); the dropouts are the search's. "
                   "micro-CNN defaults: DARTS's CIFAR-10 evaluation (Liu et al. 2019: 600 epochs, batch 96, lr 0.025 "
                   "cosine to 0, weight decay 3e-4, clip 5, 36 channels, 20 cells, cutout 16, auxiliary weight 0.4) "
                   "with Nesterov momentum as ENAS, and no drop-path", tier=1)
    g.add_argument("--retrain_epochs", type=int, default=0,
                   help="training epochs; 0: the recipe's (RNN 500 as AWD-LSTM on PTB, micro-CNN 600 as DARTS)")
    g.add_argument("--retrain_embed", type=int, default=1000, help="RNN embedding size (the search's default)")
    g.add_argument("--retrain_hid", type=int, default=1000, help="RNN hidden size (the search's default; ENAS's final cell used 748)")
    g.add_argument("--retrain_batch_size", type=int, default=64, help="RNN training batch size (ENAS)")
    g.add_argument("--retrain_bptt", type=int, default=35,
                   help="RNN mean BPTT length; each batch draws this (p=0.95) or half of it, then a length ~N(that, 5), at least 5, "
                        "and scales the lr by length/bptt (AWD-LSTM)")
    g.add_argument("--retrain_lr", type=float, default=20.0, help="RNN SGD learning rate (ENAS)")
    g.add_argument("--retrain_l2_reg", type=float, default=5e-7, help="RNN weight decay (ENAS)")
    g.add_argument("--retrain_grad_clip", type=float, default=0.25, help="RNN gradient norm clip (ENAS, AWD-LSTM)")
    g.add_argument("--retrain_nonmono", type=int, default=5,
                   help="NT-ASGD: average the weights once validation is worse than the best of all but the last this many epochs (AWD-LSTM); 0: never")
    g.add_argument("--retrain_layers", type=int, default=6, help="micro-CNN normal cells per module (DARTS's 20 cells: 3 x 6 + 2 reductions)")
    g.add_argument("--retrain_filters", type=int, default=36, help="micro-CNN channels of the first module, doubled at each reduction (DARTS)")
    g.add_argument("--retrain_cnn_batch_size", type=int, default=96, help="micro-CNN training batch size (DARTS)")
    g.add_argument("--retrain_cnn_lr", type=float, default=0.025, help="micro-CNN initial learning rate, cosine-annealed (DARTS)")
    g.add_argument("--retrain_cnn_lr_min", type=float, default=0.0, help="micro-CNN final learning rate of the cosine (DARTS)")
    g.add_argument("--retrain_cnn_momentum", type=float, default=0.9, help="micro-CNN SGD momentum, Nesterov when > 0 (ENAS)")
    g.add_argument("--retrain_cnn_l2_reg", type=float, default=3e-4, help="micro-CNN weight decay (DARTS)")
    g.add_argument("--retrain_cnn_grad_clip", type=float, default=5.0, help="micro-CNN gradient norm clip (DARTS)")
    g.add_argument("--retrain_cutout", type=int, default=16, help="micro-CNN cutout square side in pixels, 0: off (DARTS)")
    g.add_argument("--retrain_aux_weight", type=float, default=0.4,
                   help="micro-CNN auxiliary classifier after the last reduction cell, loss weight; 0: off (DARTS)")

    for declared in declarations(EXPERIMENT_PLUGINS):
        declared.add(p)

    g = p.group("misc")
    g.add_argument("--log_step", type=int, default=50, help="steps between progress log lines", role="runtime")
    g.add_argument("--save_epoch", type=int, default=5, help="derive, draw and checkpoint every this many epochs")
    g.add_argument("--max_save_num", type=int, default=4, help="numbered checkpoints kept")
    g.add_argument("--log_level", type=choice("INFO", "DEBUG", "WARN"), default="INFO", help="log level (DEBUG also shows tracebacks)",
                   role="runtime")
    g.add_argument("--dist_backend", type=choice("auto", "nccl", "gloo"), default="auto", role="runtime",
                   help="data-parallel backend: auto is NCCL on CUDA, gloo on the CPU")
    g.add_argument("--dist_timeout", type=float, default=300.0, role="runtime",
                   help="seconds a data-parallel collective (or the start) waits for the other ranks before the job ends")
    g.add_argument("--random_seed", type=int, default=12345, help="seed of every random generator", role="shape")
    g.add_argument("--deterministic", type=b, default=False, help="deterministic algorithms (slower on GPU)")
    g.add_argument("--amp", type=b, default=False, help="bfloat16 autocast for the shared model (GPU speed; off by default)")
    g.add_argument("--compile", type=b, default=False, help="torch.compile the shared model's hot paths (off by default)")
    g.add_argument("--cuda_graphs", type=b, default=True,
                   help="on a CUDA device, run the RNN cell as CUDA graphs with the architecture as data, one capture "
                        "per shape (models/rnn_graph.py); False: the eager cell (or --compile's kernels)")
    g.add_argument("--cuda_graph_fusion", type=b, default=False,
                   help="with --cuda_graphs, each node's elementwise work in the graphed RNN cell is one kernel compiled "
                        "by torch.compile (Triton): 3 kernels per node and step in inference instead of 7, 6 in training "
                        "instead of 19 (models/rnn_graph_fused.py; off until measured on a GPU)")
    g.add_argument("--use_tensorboard", type=b, default=True, help="write TensorBoard events", role="runtime")
    g.add_argument("--save_on_signal", type=b, default=False,
                   help="on SIGTERM/SIGINT write latest.pt at the next step before stopping (a resume restarts that epoch)",
                   role="runtime")
    g.add_argument("--resume_with_new_params", type=b, default=False, help="on resume, take this command line's hyper-parameters instead of the saved ones",
                   role="runtime")
    g = p.group(
        "accepted for compatibility (no effect)",
        "flags of the paper's code that it parsed and never used; accepted so its commands run verbatim", tier=2)
    g.add_argument("--controller_update_fisher", type=b, default=False, help="a WPL flag of the paper's code")
    g.add_argument("--output_classes", type=int, default=10, help="the dataset sets the classes")
    g.add_argument("--cnn_height", type=int, default=32, help="the dataset sets the image size")
    g.add_argument("--cnn_width", type=int, default=32, help="the dataset sets the image size")
    g.add_argument("--cnn_input_channels", type=int, default=3, help="the dataset sets the channels")
    g.add_argument("--cnn_hid", type=int, default=64, help="a CNN width of the paper's code")
    return p


def apply_preset(args: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """``args`` with the value of ``--preset``, and of each plug-in's presets (``--nao_size``, ...), for every option
    they set that the command line did not give."""
    chosen = dict(PRESETS[args.preset])
    for declared in declarations():
        for option, table in declared.presets.items():
            chosen.update(table[getattr(args, option)])
    for key, value in chosen.items():
        if key not in explicit:
            setattr(args, key, value)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from options import domains as options_domains

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    return options_domains.check(apply_preset(parser.parse_args(argv), explicit_options(argv)), parser)


def keys_with(role: str) -> frozenset[str]:
    """Names of the options marked with ``role`` (see ``parsing.ROLES``) where they are defined."""
    return frozenset(dest for dest, marks in build_parser().roles.items() if role in marks)


RUNTIME_KEYS = keys_with("runtime")
SHAPE_KEYS = keys_with("shape")  # random_seed among them: the seed also picks the held-out validation images
SEARCH_KEYS = keys_with("search")


def defaults(cls: type[C], **overrides: Any) -> C:
    """The typed config ``cls`` filled from the command line's defaults (one source of truth for them)."""
    from spaces.base import pick

    return pick(cls, parse_args([]), **overrides)


def explicit_options(argv: Sequence[str]) -> set[str]:
    """Names of the options the command line actually gave (as opposed to defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
