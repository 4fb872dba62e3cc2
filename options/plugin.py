"""What a plug-in adds to the option table, declared beside the plug-in and collected through its registry.

A sampler, search space, regulariser or mode with options of its own names a declaration in its registry entry
(``Registry(..., options={name: "module:ATTRIBUTE"})``); ``config.build_parser`` adds every declared option and
``options.domains`` checks every declared domain, so neither file declares a plug-in's options. The built-in declarations
live in light modules beside their plug-ins (``samplers/nao_options.py``, ``experiments/*/options.py``,
``regularizers/*_options.py``): building the table must not import torch (``--help`` stays instant).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from options.domains import Domain
from options.parsing import StrictParser


@dataclass(frozen=True)
class PluginOptions:
    """A plug-in's options: ``add`` puts them into their help group, ``domains`` bounds the numeric ones.

    ``presets``: an option of it that sets several others at once (``--nao_size``), with each of its values'
    settings; options given explicitly win. ``check``: the first problem between its options as one line (None:
    none), run after the domains; ``warnings``: legal values that do nothing, one line each (search runs)."""

    add: Callable[[StrictParser], None]
    domains: Mapping[str, Domain] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    check: Callable[[argparse.Namespace], str | None] | None = None
    warnings: Callable[[argparse.Namespace], list[str]] | None = None


@dataclass(frozen=True)
class ModeOptions(PluginOptions):
    """A mode's options, all in its own help group ``group``: given to another mode they would do nothing, so
    the command line is refused (issue 31). ``reads``: options of another mode's group this mode reads too."""

    group: str = ""
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Strength:
    """A task-sequence regulariser's strength: the option that sets it and the table beside the regulariser
    (``"module:TABLE"``, protocol -> scenario -> values: the published protocol's) whose ``"strength"`` is used
    when the option is left out. ``tuned``: the table of values chosen on the validation split
    (``experiments/continual/tune.py``), read with ``--cl_strengths=tuned`` for the protocols and scenarios it holds
    (the published value elsewhere). ``also``: other values of the same tables and the option that overrides each
    (online EWC's gamma)."""

    option: str
    table: str
    also: Mapping[str, str] = field(default_factory=dict)
    tuned: str = ""


@dataclass(frozen=True)
class StrategyOptions(PluginOptions):
    """A ``--strategies`` regulariser's options: its strength, and ``settings``, the keyword arguments it is built
    with read from the options (None: none beyond its strength)."""

    strength: Strength | None = None
    settings: Callable[[argparse.Namespace], dict[str, Any]] | None = None
