"""The strict command-line machinery config.py's option table is written with.

Value types that refuse what the paper's code let through (booleans only as true/false/yes/no/1/0,
list options read with ``ast.literal_eval`` or as comma-separated names, never ``eval``), a parser
whose errors are one line naming the closest valid options, and option roles: an option says where it
is defined whether a checkpoint or the command line supplies it when a run is continued or reused.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from typing import Any, Callable, NoReturn, Sequence

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


def str2bool(text: str) -> bool:
    """Strict boolean: true/false/yes/no/1/0 in any case, nothing else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/yes/no/1/0, got {text!r}")


def str_list(text: str) -> list[str]:
    """A list of names: ``"['tanh', 'ReLU']"`` (Python literal) or ``tanh,ReLU``."""
    text = text.strip()
    if text.startswith(("[", "(")):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise argparse.ArgumentTypeError(f"not a list literal: {text!r}") from err
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise argparse.ArgumentTypeError(f"expected a list of names, got {text!r}")
        items = [v.strip() for v in value]
    else:
        items = [v.strip() for v in text.split(",")]
    if not items or any(not v for v in items):
        raise argparse.ArgumentTypeError(f"empty name in list {text!r}")
    return items


def choice(*options: str) -> Callable[[str], str]:
    """A string type restricted to ``options`` (the error lists them)."""

    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return text

    parse.__name__ = "choice"
    return parse


# What an option's role says about where its value comes from when a run is continued or reused.
ROLES = {
    "shape": "fixes the shape of the saved weights: derive/test/forgetting take it from the checkpoint they load",
    "runtime": "where and how a run executes: a resume without new parameters still takes it from the command line",
    "search": "what a search fixes about its space and regularisation: a retrain of its architecture inherits it",
}


class RoleGroup:
    """An argument group whose ``add_argument`` also takes ``role=`` (one name of ``ROLES`` or a tuple of them)."""

    def __init__(self, group: argparse._ArgumentGroup, roles: dict[str, frozenset[str]]) -> None:
        self.group = group
        self.roles = roles

    def add_argument(self, *flags: str, role: str | tuple[str, ...] = (), **kwargs: Any) -> argparse.Action:
        action = self.group.add_argument(*flags, **kwargs)
        marks = frozenset((role,) if isinstance(role, str) else role)
        if not marks <= ROLES.keys():
            raise ValueError(f"{flags[0]}: unknown role(s) {sorted(marks - ROLES.keys())}")
        if marks:
            self.roles[action.dest] = marks
        return action


class StrictParser(argparse.ArgumentParser):
    """argparse that names close matches for unknown options, prints one-line errors and records option roles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.roles: dict[str, frozenset[str]] = {}

    def group(self, title: str, description: str | None = None) -> RoleGroup:
        """A help group whose options may carry roles (recorded in ``self.roles``)."""
        return RoleGroup(self.add_argument_group(title, description), self.roles)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            problems = []
            for item in unknown:
                flag = item.split("=", 1)[0]
                if not flag.startswith("-"):
                    problems.append(f"unexpected argument {item!r}")
                    continue
                close = difflib.get_close_matches(flag, known, n=3, cutoff=0.6)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"unknown option {flag}{hint}")
            self.error("; ".join(problems))
        return parsed
