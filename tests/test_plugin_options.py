"""The plug-ins' option declarations (options/plugin.py): collected from the registries, each whole and consistent.

A declaration is found only through its registry entry, so these tests read every one the option table collects
and check what a typo would otherwise leave to a run: a strength naming an option or a table that does not exist,
a declaration for a name without an entry, a help group described twice.
"""

from __future__ import annotations

import importlib

import pytest

import config
from modes import MODES
from options.plugin import ModeOptions, PluginOptions, StrategyOptions
from options.parsing import StrictParser
from options.presets import CL_PROTOCOLS
from options.registry import Registry
from regularizers import REGULARIZERS


def test_every_declaration_is_collected_once_and_typed() -> None:
    declared = config.declarations()
    assert declared and all(isinstance(d, PluginOptions) for d in declared)
    assert len({id(d) for d in declared}) == len(declared)
    dests = {a.dest for a in config.build_parser()._actions}
    for d in declared:
        parser = StrictParser()
        d.add(parser)
        assert {a.dest for a in parser._actions} - {"help"} <= dests


def test_each_strategy_strength_names_its_option_and_a_full_table() -> None:
    dests = {a.dest for a in config.build_parser()._actions}
    strategies = {name: d for name, d in REGULARIZERS.declarations().items() if isinstance(d, StrategyOptions)}
    assert set(strategies) == set(REGULARIZERS)  # every built-in --strategies regulariser has a strength
    for name, declared in strategies.items():
        strength = declared.strength
        assert strength is not None and {strength.option, *strength.also.values()} <= dests, name
        module, attribute = strength.table.split(":")
        table = getattr(importlib.import_module(module), attribute)
        for protocol in CL_PROTOCOLS:
            for scenario in ("task", "domain", "class"):
                assert {"strength", *strength.also} <= set(table[protocol][scenario]), (name, protocol, scenario)


def test_a_mode_group_is_its_own_and_reads_name_existing_options() -> None:
    parser = config.build_parser()
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    for mode, declared in MODES.declarations().items():
        assert isinstance(declared, ModeOptions) and (declared.group in groups or not declared.group), mode
        assert all(any(option in dests for dests in groups.values()) for option in declared.reads), mode


def test_a_declaration_needs_an_entry_and_a_group_one_description() -> None:
    with pytest.raises(ValueError, match="no entry"):
        Registry("sampler", {"a": "m:A"}, options={"b": "m:OPTIONS"})
    parser = StrictParser()
    group = parser.group("g", "what it is")
    assert parser.group("g") is group
    with pytest.raises(ValueError, match="described twice"):
        parser.group("g", "again")


def test_the_search_reads_si_damping_from_the_continual_group() -> None:
    from options.domains import options_read_only_by, unread_options

    assert options_read_only_by()["si_xi"] == {"continual", "train", "forgetting"}
    assert unread_options("train", {"si_xi"}) is None
    assert unread_options("retrain", {"si_xi"}) == ("--mode=retrain does not read --si_xi (options of "
                                                    "--mode=continual/forgetting/train): drop them or change --mode")
