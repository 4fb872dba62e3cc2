"""The command line: the paper's command parses, and bad input is refused clearly."""

from __future__ import annotations

import pytest

import config
from conftest import paper_rnn_args


def test_paper_command_parses_to_expected_values() -> None:
    args = config.parse_args(paper_rnn_args())
    assert args.comment == "rnn-train"
    assert args.train_controller is True
    assert (args.start_training_controller, args.start_using_fisher, args.max_epoch) == (1, 5, 150)
    assert (args.shared_max_step, args.save_epoch, args.num_batch_per_iter) == (60, 30, 7)
    assert args.fisher_clip_by_norm == 10.0 and args.alpha_fisher == 60.0
    assert args.alpha_decay == 1.0 and args.alpha_decay_after == 15.0 and args.alpha_small_scale == 1e-4
    assert args.set_fisher_zero_per_iter == 2 and args.policy_batch_size == 1
    assert args.controller_max_step == 2000 and args.num_blocks == 12
    assert isinstance(args.reward_c, float) and args.reward_c == 80.0
    # untouched defaults are the paper code's
    assert args.lambda_fisher == 0.9 and args.momentum is True and args.shared_lr == 20.0
    assert args.shared_rnn_activations == ["tanh", "ReLU", "identity", "sigmoid"]
    assert args.wpl_alpha_mode == "compound" and args.mode == "train"


@pytest.mark.parametrize("text,value", [("True", True), ("yes", True), ("1", True), ("FALSE", False), ("No", False), ("0", False)])
def test_booleans_accept_the_six_words(text: str, value: bool) -> None:
    assert config.parse_args([f"--momentum={text}"]).momentum is value


@pytest.mark.parametrize("text", ["t", "y", "ture", "2", "", "on"])
def test_booleans_reject_anything_else(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        config.parse_args([f"--momentum={text}"])
    assert exc.value.code == 2
    assert "true/false/yes/no/1/0" in capsys.readouterr().err


def test_unknown_option_names_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--alpha_fishr=3"])
    err = capsys.readouterr().err
    assert "unknown option --alpha_fishr" in err and "--alpha_fisher" in err
    assert len(err.strip().splitlines()) == 1


def test_abbreviations_are_not_accepted() -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--alpha_fish=3"])


def test_repeated_option_takes_the_last_value() -> None:
    assert config.parse_args(["--alpha_decay=1.", "--alpha_decay=3"]).alpha_decay == 3.0


@pytest.mark.parametrize("text", ["['tanh', 'ReLU']", "tanh,ReLU", "('tanh','ReLU')"])
def test_list_options(text: str) -> None:
    assert config.parse_args([f"--shared_rnn_activations={text}"]).shared_rnn_activations == ["tanh", "ReLU"]


@pytest.mark.parametrize("text", ["[__import__('os')]", "[1, 2]", "tanh,,ReLU"])
def test_list_options_are_parsed_safely(text: str) -> None:
    with pytest.raises(SystemExit):
        config.parse_args([f"--shared_rnn_activations={text}"])


def test_malformed_number_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--reward_c=eighty"])
    assert "reward_c" in capsys.readouterr().err


def test_explicit_options_lists_only_what_was_given() -> None:
    assert config.explicit_options(["--max_epoch=3", "--comment=x"]) == {"max_epoch", "comment"}


def test_preset_paper_is_the_default_and_enas_switches_every_modelling_option() -> None:
    paper = config.parse_args([])
    assert paper.preset == "paper"
    assert (paper.shared_wdrop_scope, paper.rnn_output_norm, paper.rnn_next_state, paper.rnn_input_bias) == \
        ("node0", "batchnorm", "last", True)
    enas = config.parse_args(["--preset=enas"])
    for key, value in config.PRESETS["enas"].items():
        assert getattr(enas, key) == value, key
        assert getattr(paper, key) != value, key  # every preset entry really changes something
    mixed = config.parse_args(["--rnn_next_state=last", "--preset=enas"])  # an explicit option wins, in any order
    assert mixed.rnn_next_state == "last" and mixed.rnn_output_norm == "none"


def test_configs_saved_before_an_option_existed_take_its_legacy_value() -> None:
    from modes.builders import merge_config

    saved = {k: v for k, v in vars(config.parse_args([])).items() if k not in config.LEGACY_VALUES}
    merged = merge_config(saved, config.parse_args([]), set(), config.RUNTIME_KEYS)
    for key, value in config.LEGACY_VALUES.items():
        assert getattr(merged, key) == value, key


# The key sets as they were kept by hand before the roles moved onto the options: a role added or dropped
# changes what a resume, a derive or a retrain takes from where, so it must show up here.
RUNTIME_BEFORE = {
    "load_path", "log_dir", "data_dir", "num_gpu", "log_level", "use_tensorboard", "num_workers",
    "resume", "resume_with_new_params", "mode", "comment", "dataset", "max_epoch", "log_step", "cnn_channels_last",
    "cnn_eval_images", "cnn_cudnn_benchmark",  # how many inference batches run together, cuDNN's autotuning: speed
    "dist_backend", "dist_timeout",  # data-parallel: how this process joins, not what it computes
    "save_on_signal",
}
SHAPE_BEFORE = {
    "network_type", "dataset", "num_blocks", "shared_embed", "shared_hid", "tie_weights", "shared_rnn_activations",
    "controller_hid", "cnn_final_filter_size", "cnn_num_repeat_normal", "cnn_num_modules", "shared_cnn_types",
    "shared_cnn_normal_types", "shared_cnn_reduce_types", "search_mode", "batch_size", "valid_size",
    "cnn_cell_output", "rnn_output_norm", "rnn_input_bias", "cnn_stem", "cnn_cell_inputs", "cnn_depthwise",
    "cnn_node_combine", "cnn_classifier", "random_seed", "nao_embed", "nao_hid", "nao_mlp_layers", "nao_mlp_hid",
    "nao_weights",
}
SEARCH_BEFORE = {
    "network_type", "dataset", "num_blocks", "shared_rnn_activations", "rnn_next_state", "tie_weights",
    "shared_dropout", "shared_dropoute", "shared_dropouti", "shared_wdrop", "shared_wdrop_scope", "rnn_output_norm",
    "rnn_input_bias", "activation_regularization", "activation_regularization_amount",
    "temporal_activation_regularization", "temporal_activation_regularization_amount",
    "norm_stabilizer_regularization", "norm_stabilizer_regularization_amount", "norm_stabilizer_fixed_point",
    "search_mode", "shared_cnn_types", "shared_cnn_normal_types", "shared_cnn_reduce_types", "cnn_cell_output",
    "cnn_stem", "cnn_cell_inputs", "cnn_depthwise", "cnn_node_combine", "cnn_classifier", "cnn_num_modules",
    "valid_size", "nao_weights",
}


def test_key_sets_read_off_the_role_marks_are_the_hand_kept_ones() -> None:
    assert isinstance(config.SHAPE_KEYS, frozenset)
    assert config.RUNTIME_KEYS == RUNTIME_BEFORE
    assert config.SHAPE_KEYS == SHAPE_BEFORE
    assert config.SEARCH_KEYS == SEARCH_BEFORE
    assert config.keys_with("shape") == SHAPE_BEFORE  # several roles on one option: dataset is in all three
    assert "dataset" in config.RUNTIME_KEYS & config.SHAPE_KEYS & config.SEARCH_KEYS


def test_every_role_mark_names_a_real_option_and_an_unknown_role_is_refused() -> None:
    parser = config.build_parser()
    dests = {a.dest for a in parser._actions}
    assert set(parser.roles) <= dests
    group = parser.group("scratch")
    with pytest.raises(ValueError, match="unknown role"):
        group.add_argument("--scratch_option", type=int, default=1, role="shap")


def test_the_papers_unused_flags_sit_in_their_own_help_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--help-all"])
    text = capsys.readouterr().out
    head, compat = text.split("accepted for compatibility (no effect):")
    for flag in ("--controller_update_fisher", "--output_classes", "--cnn_height", "--cnn_width",
                 "--cnn_input_channels", "--cnn_hid"):
        described = f"\n  {flag} "  # an option's own help line, not its mention in the usage summary
        assert described in compat and described not in head, flag
    listed = {word for line in text.splitlines() for word in line.split() if word.startswith("--")}
    every = {s for a in config.build_parser()._actions for s in a.option_strings if s.startswith("--")}
    assert every <= listed  # --help-all lists every option
