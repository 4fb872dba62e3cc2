"""Every bad command line ends as one line on stderr with exit code 2, before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

import config
import main
from options import domains as options_domains
from options import parsing as options_parsing

BAD = [
    # sizes and counts that must be positive
    *[f"--{name}={value}" for name in ("num_batch_per_iter", "num_blocks", "controller_hid", "shared_embed", "shared_hid",
                                       "shared_rnn_max_length", "batch_size", "test_batch_size", "max_epoch",
                                       "policy_batch_size", "controller_max_step", "shared_max_step", "shared_num_sample",
                                       "derive_num_sample", "save_epoch", "nb_batch_reward_controller", "valid_size",
                                       "cnn_final_filter_size", "cnn_num_modules", "retrain_bptt", "retrain_hid",
                                       "forgetting_models", "forgetting_eval_batches")
      for value in ("0", "-3")],
    # counts that may be zero but not negative
    *[f"--{name}=-1" for name in ("start_using_fisher", "start_training_controller", "num_workers", "num_gpu",
                                  "shared_initial_step", "retrain_epochs", "retrain_cutout", "max_save_num")],
    # probabilities in [0, 1)
    *[f"--{name}={value}" for name in ("shared_dropout", "shared_wdrop", "shared_dropouti", "shared_dropoute",
                                       "shared_cnn_momentum") for value in ("1.5", "1", "-0.1")],
    # non-finite floats
    *[f"--{name}={value}" for name in ("alpha_fisher", "shared_lr", "discount", "reward_c", "lambda_fisher",
                                       "controller_lr", "entropy_coeff", "alpha_decay_after")
      for value in ("nan", "inf", "-inf")],
    # strengths, clips and rates out of range
    "--alpha_fisher=-5", "--fisher_clip_by_norm=-1", "--shared_grad_clip=-0.5", "--controller_grad_clip=-2",
    "--shared_l2_reg=-1e-7", "--softmax_temperature=0", "--shared_lr=0", "--reward_c=-80", "--lambda_fisher=1.5",
    "--ema_baseline_decay=2", "--discount=1.01", "--retrain_lr=-1", "--retrain_aux_weight=-0.4",
    "--random_seed=-1", "--random_seed=99999999999999999999999",
    # names, paths and relations
    "--comment=../../x", "--comment=a/b", "--comment=..", "--dataset=../etc",
    "--shared_rnn_activations=tanh,swish", "--shared_cnn_types=identity,conv9x9", "--shared_rnn_activations=tanh,tanh",
    "--shared_embed=16", "--controller_lr_cosine=True --controller_lr_min=1 --controller_lr_max=0.1",
    "--shared_cnn_lr_min=1",
    "--sampler=nao --nao_pool=4 --nao_top_k=5", "--sampler=nao --nao_new=0", "--sampler=nao --nao_max_passes=0",
    "--sampler=nao --nao_lambda=0", "--sampler=nao --nao_mse_weight=1.5",
    # malformed syntax (argparse's own one-line errors)
    "--shared_hid=ten", "--max_epoch=1.5", "--reward_c=eighty", "--momentum=maybe", "--mode=dance",
    "--alpha_fishr=1", "stray", "--network_type=lstm",
]


def test_at_least_80_malformed_command_lines() -> None:
    assert len(BAD) >= 80


@pytest.mark.parametrize("line", BAD)
def test_bad_command_line_is_one_line(line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [f"--log_dir={tmp_path}", "--num_gpu=0", f"--data_dir={tmp_path}", *line.split()]
    with pytest.raises(SystemExit) as exc:
        main.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("main.py: error: ")
    assert not any(tmp_path.iterdir()), "nothing may be written before the options are checked"


def test_message_names_option_value_and_domain(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--shared_dropout=1.5"])
    assert "--shared_dropout=1.5: must be a finite number >= 0 and < 1" in capsys.readouterr().err


def test_log_dir_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit):
        config.parse_args([f"--log_dir={tmp_path / 'f' / 'logs'}"])
    assert "is a file, not a directory" in capsys.readouterr().err


def test_every_numeric_option_has_a_domain() -> None:
    missing = [n for n in options_domains.numeric_options(config.build_parser()) if n not in options_domains.domains()]
    assert not missing, ("numeric options without a declared domain; add to DOMAINS in options/domains.py (config.py's "
                         "options) or to the plug-in's declaration (options.plugin), e.g. "
                         + ", ".join(f"'{n}': COUNT (or NATURAL, PROBABILITY, POSITIVE, NON_NEGATIVE, ...)" for n in missing))


def test_domains_name_only_existing_options() -> None:
    assert set(options_domains.domains()) <= set(options_domains.numeric_options(config.build_parser()))


def test_a_plugin_declares_the_domains_of_its_own_options_only() -> None:
    """Each declaration bounds options it adds itself, and the option table's own table none of them."""
    for declared in config.declarations():
        parser = options_parsing.StrictParser()
        declared.add(parser)
        assert set(declared.domains) <= set(options_domains.numeric_options(parser))
        assert not set(declared.domains) & set(options_domains.DOMAINS)


def test_defaults_and_paper_command_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import paper_rnn_args

    config.parse_args([])
    config.parse_args(paper_rnn_args())
    config.parse_args(["--preset=enas", "--tie_weights=False", "--shared_embed=16"])
    assert capsys.readouterr().err == ""


def test_useless_value_is_one_warning(capsys: pytest.CaptureFixture[str]) -> None:
    args = config.parse_args(["--start_using_fisher=400", "--max_epoch=310", "--alpha_fisher=2"])
    assert args.start_using_fisher == 400
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --start_using_fisher=400")
