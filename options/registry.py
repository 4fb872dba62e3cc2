"""A name -> implementation table whose names are known before any implementation is imported.

The option table (config.py) takes its ``choices`` from the plug-in tables (``samplers.SAMPLERS``,
``spaces.SPACES``) so the two cannot drift apart; but importing a sampler imports torch, and ``--help``
and config.py must stay instant. A :class:`Registry` holds each entry as ``"module:attribute"`` text and
imports it on first use, so ``list(SAMPLERS)`` costs nothing and ``SAMPLERS["random"]`` is the class. An
entry with options of its own also names their declaration (:mod:`options.plugin`), the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from options.plugin import PluginOptions

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Read-only mapping from a name to the object that ``"module:attribute"`` names, imported lazily."""

    def __init__(self, kind: str, targets: Mapping[str, str], about: Mapping[str, str] | None = None,
                 options: Mapping[str, str] | None = None) -> None:
        """``about``: one line per name for ``--help`` (optional; when given, one for every name). ``options``:
        ``"module:attribute"`` of the :class:`options.plugin.PluginOptions` of each entry that has options."""
        for name, target in {**targets, **(options or {})}.items():
            if target.count(":") != 1:
                raise ValueError(f"{kind} {name!r}: expected 'module:attribute', got {target!r}")
        if about is not None and set(about) != set(targets):
            raise ValueError(f"{kind}: the help lines name {sorted(about)}, the entries {sorted(targets)}")
        if options is not None and not set(options) <= set(targets):
            raise ValueError(f"{kind}: options declared for {sorted(set(options) - set(targets))}, which have no entry")
        self.kind = kind
        self.targets = dict(targets)
        self.about = dict(about or {})
        self.options = dict(options or {})
        self._loaded: dict[str, T] = {}

    def declaration(self, name: str) -> PluginOptions | None:
        """The options ``name`` declares (imported from their own light module), or None when it has none."""
        target = self.options.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        declared: PluginOptions = getattr(importlib.import_module(module), attribute)
        return declared

    def declarations(self) -> dict[str, PluginOptions]:
        """Each entry's declaration by name, in the entries' order (for the option table and the domains)."""
        return {name: declared for name in self.targets if (declared := self.declaration(name)) is not None}

    def __getitem__(self, name: str) -> T:
        if name not in self._loaded:
            if name not in self.targets:
                raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.targets)}")
            module, attribute = self.targets[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.targets!r})"
