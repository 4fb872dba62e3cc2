"""``--help`` a newcomer can read: a short usage line, the first options with their choices, every
choice taken from the plug-in tables, and suggestions for a misspelt option ranked by meaning."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

import config
import main
from spaces import SPACES
from options.parsing import suggest
from samplers import SAMPLERS


def help_text(flag: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args([flag])
    assert exit_info.value.code == 0
    return capsys.readouterr().out.splitlines()


def test_the_first_screen_has_a_short_usage_and_the_newcomers_options_with_choices(capsys: pytest.CaptureFixture[str]) -> None:
    lines = help_text("--help", capsys)
    usage = lines[:lines.index("")]
    modes = "{" + ",".join(config.MODES) + "}"  # the registry's names, in its order
    assert list(config.MODES)[:8] == ["train", "derive", "test", "forgetting", "retrain", "continual", "pathnet", "ranking"]
    assert usage[0].startswith(f"usage: main.py [--mode {modes}]")
    assert len(usage) <= 3 and "--help-all" in " ".join(usage)
    assert len(lines) <= 60, len(lines)  # one screen (the full list was 693 lines)
    first = "\n".join(lines[:15])
    assert f"--mode {modes}" in first
    screen = "\n".join(lines)
    for shown in ("--dataset NAME", "--data_dir DIR", "--log_dir DIR", "--num_gpu N", "--resume {true,false}",
                  "--network_type {rnn,rnn32,micro_cnn}", "--sampler {reinforce,random,evolution,nao}", "--preset {paper,enas}",
                  "--load_path RUN", "--comment NAME"):
        assert shown in screen, shown
    for mode, line in config.MODES.about.items():  # every mode with its one line
        assert f"{mode}: {line}" in screen
    assert "--alpha_fisher" not in screen and "network: 45 options" in screen  # the rest, one line per group


def test_help_all_lists_every_option_and_choice_metavars(capsys: pytest.CaptureFixture[str]) -> None:
    text = "\n".join(help_text("--help-all", capsys))
    every = {s for a in config.build_parser()._actions for s in a.option_strings}
    assert all(f"  {flag}" in text for flag in every)
    assert "--wpl_alpha_mode {compound,loss}" in text and "--momentum {true,false}" in text
    assert "(default: )" not in text  # an empty default is not printed


def test_choices_come_from_the_plugin_tables() -> None:
    actions = {a.dest: a for a in config.build_parser()._actions}
    assert actions["sampler"].metavar == "{" + ",".join(SAMPLERS) + "}"
    assert actions["network_type"].metavar == "{" + ",".join(SPACES) + "}"
    assert all(callable(main.MODES[mode]) for mode in config.MODES)  # what --mode offers, main runs
    for name in SAMPLERS:
        assert hasattr(SAMPLERS[name], "build") and hasattr(SAMPLERS[name], "Config")
    for name in SPACES:
        assert callable(SPACES[name].build)


def test_a_new_registry_entry_becomes_a_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SAMPLERS.targets, "grid", "samplers.random:RandomSampler")
    assert config.build_parser().parse_args(["--sampler=grid"]).sampler == "grid"
    monkeypatch.delitem(SAMPLERS.targets, "grid")
    with pytest.raises(SystemExit):
        config.build_parser().parse_args(["--sampler=grid"])


def test_the_option_table_does_not_import_torch() -> None:
    code = "import sys, config; config.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_misspelt_lr_suggests_the_learning_rates(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--lr=0.1"])
    err = capsys.readouterr().err
    assert "unknown option --lr (did you mean --shared_lr, --controller_lr, --cl_lr?)" in err


@pytest.mark.parametrize("typed,first", [("--maxepoch", "--max_epoch"), ("--alpha_fishr", "--alpha_fisher"),
                                         ("--sampl", "--sampler"), ("--datadir", "--data_dir"),
                                         ("--controller_learning_rate", "--controller_lr")])
def test_suggestions_rank_by_shared_words_then_spelling(typed: str, first: str) -> None:
    known = [s for a in config.build_parser()._actions for s in a.option_strings if s.startswith("--")]
    assert suggest(typed, known)[0] == first


def test_a_name_sharing_nothing_gets_no_suggestion() -> None:
    assert suggest("--zzzzzz", ["--shared_lr", "--log_dir"]) == []
    tiers = {"--cl_lr": 1}.get
    assert suggest("--lr", ["--cl_lr", "--shared_lr", "--log_dir"], lambda o: tiers(o, 0)) == ["--shared_lr", "--cl_lr"]
