"""The domain of every numeric option, and the checks between options, applied right after parsing.

argparse only knows that ``--shared_hid`` is an int; a zero, a ``nan`` or an overflowing seed would
otherwise surface minutes later as a traceback (or, worse, run silently with WPL switched off). One
table here keeps the domains of config.py's own options, and each plug-in declares its options' domains beside
it (:mod:`options.plugin`); ``config.parse_args`` calls ``check`` and a bad value ends as one line naming the
option, its value and its domain (exit code 2). Every numeric option needs a domain in one of the two places
(tests/test_options_domains.py says which are missing).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Domain:
    """An interval of finite numbers; ``integer`` asks for a whole number."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        bounds = []
        if self.lo > -math.inf:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi < math.inf:
            bounds.append(f"{'<' if self.hi_open else '<='} {self.hi:g}" if self.hi < 1e15 else f"<= {int(self.hi)}")
        return kind + (" " + " and ".join(bounds) if bounds else "")


COUNT = Domain(lo=1, integer=True)  # sizes, counts, steps
NATURAL = Domain(lo=0, integer=True)  # epochs, optional counts where 0 means "none"
INTEGER = Domain(integer=True)  # any integer (e.g. <= 0 meaning "never")
SEED = Domain(lo=0, hi=2**63 - 1, integer=True)
PROBABILITY = Domain(lo=0, hi=1, hi_open=True)  # dropouts, momenta: 1 would drop or keep everything
UNIT = Domain(lo=0, hi=1)  # mixing weights and decays where 1 is meaningful
POSITIVE = Domain(lo=0, lo_open=True)  # learning rates, temperatures, reward constants
NON_NEGATIVE = Domain(lo=0)  # strengths, clips (0: off), weight decays
FINITE = Domain()

DOMAINS: dict[str, Domain] = {  # config.py's own options; the plug-ins' are in their declarations
    # WPL
    "start_using_fisher": NATURAL, "num_batch_per_iter": COUNT, "set_fisher_zero_per_iter": INTEGER,
    "lambda_fisher": UNIT, "fisher_clip_by_norm": NON_NEGATIVE, "alpha_fisher": NON_NEGATIVE,
    "alpha_decay": NON_NEGATIVE, "alpha_decay_after": NON_NEGATIVE, "alpha_decay_mode": INTEGER,
    "alpha_small_scale": NON_NEGATIVE, "start_training_controller": NATURAL, "stop_training_controller": NATURAL,
    "nb_batch_reward_controller": COUNT, "start_evaluate_diff": NATURAL, "forgetting_eval_batches": COUNT,
    "forgetting_models": COUNT,
    # network
    "num_blocks": COUNT, "controller_hid": COUNT, "shared_wdrop": PROBABILITY, "shared_dropout": PROBABILITY,
    "shared_dropoute": PROBABILITY, "shared_dropouti": PROBABILITY, "shared_embed": COUNT, "shared_hid": COUNT,
    "shared_rnn_max_length": COUNT, "activation_regularization_amount": NON_NEGATIVE,
    "temporal_activation_regularization_amount": NON_NEGATIVE, "norm_stabilizer_regularization_amount": NON_NEGATIVE,
    "norm_stabilizer_fixed_point": NON_NEGATIVE, "output_classes": COUNT, "cnn_height": COUNT, "cnn_width": COUNT,
    "cnn_input_channels": COUNT, "cnn_final_filter_size": COUNT, "cnn_num_repeat_normal": COUNT,
    "cnn_num_modules": COUNT, "cnn_eval_images": Domain(lo=-1, integer=True), "num_workers": NATURAL, "cnn_hid": COUNT, "shared_cnn_lr": POSITIVE,
    "shared_cnn_lr_min": NON_NEGATIVE, "shared_cnn_momentum": PROBABILITY, "shared_cnn_l2_reg": NON_NEGATIVE,
    "shared_cnn_grad_clip": NON_NEGATIVE, "valid_size": COUNT,
    # learning
    "batch_size": COUNT, "test_batch_size": COUNT, "max_epoch": COUNT, "policy_batch_size": COUNT,
    "reward_c": POSITIVE, "ema_baseline_decay": UNIT, "discount": UNIT, "controller_max_step": COUNT,
    "controller_lr": POSITIVE, "controller_lr_max": POSITIVE, "controller_lr_min": NON_NEGATIVE,
    "controller_grad_clip": NON_NEGATIVE, "tanh_c": NON_NEGATIVE, "softmax_temperature": POSITIVE,
    "entropy_coeff": NON_NEGATIVE, "shared_initial_step": NATURAL, "shared_max_step": COUNT,
    "shared_num_sample": COUNT, "shared_lr": POSITIVE, "shared_decay": POSITIVE, "shared_decay_after": NON_NEGATIVE,
    "shared_lr_anneal": UNIT,
    "shared_l2_reg": NON_NEGATIVE, "shared_grad_clip": NON_NEGATIVE, "derive_num_sample": COUNT,
    # retrain
    "retrain_epochs": NATURAL, "retrain_embed": COUNT, "retrain_hid": COUNT, "retrain_batch_size": COUNT,
    "retrain_bptt": COUNT, "retrain_lr": POSITIVE, "retrain_l2_reg": NON_NEGATIVE, "retrain_grad_clip": NON_NEGATIVE,
    "retrain_nonmono": NATURAL, "retrain_layers": COUNT, "retrain_filters": COUNT, "retrain_cnn_batch_size": COUNT,
    "retrain_cnn_lr": POSITIVE, "retrain_cnn_lr_min": NON_NEGATIVE, "retrain_cnn_momentum": PROBABILITY,
    "retrain_cnn_l2_reg": NON_NEGATIVE, "retrain_cnn_grad_clip": NON_NEGATIVE, "retrain_cutout": NATURAL,
    "retrain_aux_weight": NON_NEGATIVE,
    # misc
    "log_step": NATURAL, "save_epoch": COUNT, "max_save_num": NATURAL, "num_gpu": NATURAL, "random_seed": SEED,
    "dist_timeout": POSITIVE,
}


def numeric_options(parser: argparse.ArgumentParser) -> list[str]:
    """Destinations of the parser's int and float options."""
    return [a.dest for a in parser._actions if a.type in (int, float)]


def domains() -> dict[str, Domain]:
    """Every numeric option's domain: config.py's own, then each plug-in's in the option table's order."""
    # config calls this module's check at parse time, so it is imported here, when used
    from config import declarations

    found = dict(DOMAINS)
    for declared in declarations():
        found.update(declared.domains)
    return found


def domain_problem(args: argparse.Namespace) -> str | None:
    """The first option outside its domain, as ``--name=value: must be ...``; None when all fit."""
    for name, domain in domains().items():
        value = getattr(args, name, None)
        if value is not None and not domain.contains(value):
            return f"--{name}={value}: must be {domain.describe()}"
    return None


MAX_NAME_BYTES = 200  # a run folder's name is <dataset>_<comment>; most file systems allow 255 bytes


def path_component_problem(option: str, value: str) -> str | None:
    """Why ``value`` cannot be one folder name inside ``--log_dir`` (sweep.py uses it too), or None."""
    if value in (".", "..") or "/" in value or (os.sep != "/" and os.sep in value) or "\0" in value:
        return f"--{option}={value!r}: must be a single file name (no '/', not '.' or '..')"
    if len(value.encode("utf-8", errors="replace")) > MAX_NAME_BYTES:
        return f"--{option}: {len(value.encode('utf-8', errors='replace'))} bytes; a folder name takes at most {MAX_NAME_BYTES}"
    return None


def _file_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (itself included) that is not a directory."""
    for part in [path, *path.parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


def relation_problem(args: argparse.Namespace) -> str | None:
    """Checks that involve several options or names outside argparse's knowledge."""
    for option in ("comment", "dataset"):
        problem = path_component_problem(option, getattr(args, option))
        if problem:
            return problem
    if not args.dataset:
        return "--dataset='': must name a dataset"
    try:
        blocker = _file_ancestor(Path(args.log_dir))
    except OSError as err:  # a name too long, a loop of links: stat itself fails
        return f"--log_dir={args.log_dir[:80]}{'...' if len(args.log_dir) > 80 else ''}: unusable ({err.strerror or err})"
    if blocker is not None:
        return f"--log_dir={args.log_dir}: {blocker} is a file, not a directory"
    if args.network_type in ("rnn", "rnn32") and args.tie_weights and args.shared_embed != args.shared_hid:
        return (f"--tie_weights=True needs --shared_embed == --shared_hid (got {args.shared_embed} and "
                f"{args.shared_hid}); pass --tie_weights=False or equal sizes")
    if args.controller_lr_cosine and args.controller_lr_min > args.controller_lr_max:
        return f"--controller_lr_min={args.controller_lr_min} is above --controller_lr_max={args.controller_lr_max}"
    if args.shared_cnn_lr_min > args.shared_cnn_lr:
        return f"--shared_cnn_lr_min={args.shared_cnn_lr_min} is above --shared_cnn_lr={args.shared_cnn_lr}"
    return _plugin_problem(args) or _name_problem(args)


def _plugin_problem(args: argparse.Namespace) -> str | None:
    """The first problem between a plug-in's own options, from its declaration's ``check``."""
    from config import declarations

    for declared in declarations():
        if declared.check and (problem := declared.check(args)):
            return problem
    return None


def _name_problem(args: argparse.Namespace) -> str | None:
    """Unknown activation or op names (imported here: the model modules pull in torch)."""
    from models.cnn import OPS
    from models.rnn_arch import ACTIVATIONS

    lists = [("shared_rnn_activations", ACTIVATIONS), ("shared_cnn_types", OPS),
             ("shared_cnn_normal_types", OPS), ("shared_cnn_reduce_types", OPS)]
    for option, known in lists:
        names = getattr(args, option) or []
        unknown = [n for n in names if n not in known]
        if unknown:
            return f"--{option}: unknown name(s) {', '.join(unknown)}; known: {', '.join(known)}"
        if len(set(names)) != len(names):
            return f"--{option}={','.join(names)}: a name is repeated"
    return None


def useless_value_warnings(args: argparse.Namespace) -> list[str]:
    """Legal values that do nothing, each as one line (the paper's CNN command has one), the plug-ins' last."""
    from config import declarations

    warnings = []
    if args.alpha_fisher > 0 and args.start_using_fisher >= args.max_epoch:
        warnings.append(f"--start_using_fisher={args.start_using_fisher} is not below --max_epoch={args.max_epoch}: "
                        "WPL never starts in this search")
    if args.train_controller and args.start_training_controller >= min(args.max_epoch, args.stop_training_controller):
        warnings.append(f"--start_training_controller={args.start_training_controller} is not below --max_epoch="
                        f"{args.max_epoch} / --stop_training_controller={args.stop_training_controller}: "
                        "the controller is never trained")
    if args.alpha_fisher > 0 and args.num_batch_per_iter == 1:
        warnings.append("--num_batch_per_iter=1 with --alpha_fisher > 0: the search's WPL re-anchors after every "
                        "architecture, so with one batch each its penalty is always zero (docs/nao.md)")
    if args.start_evaluate_diff >= args.max_epoch:
        warnings.append(f"--start_evaluate_diff={args.start_evaluate_diff} is not below --max_epoch={args.max_epoch}: "
                        "the forgetting metric is never measured")
    for declared in declarations():
        warnings += declared.warnings(args) if declared.warnings else []
    return warnings


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Refuse the first bad value through ``parser.error`` (one line, exit 2); warn about useless ones."""
    problem = domain_problem(args) or relation_problem(args)
    if problem:
        parser.error(problem)
    if args.mode == "train":
        for line in useless_value_warnings(args):
            sys.stderr.write(f"warning: {line}\n")
    return args


def options_read_only_by() -> dict[str, frozenset[str]]:
    """Each experiment option's name and the modes that read it: the options in a mode's own help group
    (``ModeOptions.group``) and the modes that read them too (``ModeOptions.reads``). Given to another mode
    they would do nothing, so the command line is refused in one line (issue 31)."""
    from config import build_parser
    from modes import MODES
    from options.plugin import ModeOptions

    declared = {mode: d for mode, d in MODES.declarations().items() if isinstance(d, ModeOptions)}
    titles = {d.group: mode for mode, d in declared.items() if d.group}
    found: dict[str, frozenset[str]] = {}
    for group in build_parser()._action_groups:
        mode = titles.get(group.title or "")
        for action in group._group_actions if mode else ():
            found[action.dest] = frozenset({mode} | {m for m, d in declared.items() if action.dest in d.reads})
    return found


def unread_options(mode: str, explicit: set[str]) -> str | None:
    """One line naming the options given that ``mode`` does not read, or None."""
    read_by = options_read_only_by()
    unread = sorted(name for name, modes in read_by.items() if name in explicit and mode not in modes)
    if not unread:
        return None
    readers = sorted({m for name in unread for m in read_by[name]})
    return (f"--mode={mode} does not read {', '.join('--' + n for n in unread[:4])}"
            f"{' ...' if len(unread) > 4 else ''} (options of --mode={'/'.join(readers)}): drop them or change --mode")
