"""The strict command-line machinery config.py's option table is written with.

Value types that refuse what the paper's code let through (booleans only as true/false/yes/no/1/0,
list options read with ``ast.literal_eval`` or as comma-separated names, never ``eval``), a parser
whose errors are one line naming the closest valid options, and option roles: an option says where it
is defined whether a checkpoint or the command line supplies it when a run is continued or reused.

Help comes in two sizes, because ~140 options do not fit a screen: ``--help`` shows the usage line, the
group marked ``first_screen`` (what a newcomer sets first, with the choices) and one line per other
group; ``--help-all`` shows every option by group. A restricted option shows its choices as its metavar.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


def program_name(script: str) -> str:
    """The name usage lines show: the console script a user typed (``wpl-enas``), else ``script``."""
    typed = sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else ""
    return typed if typed.startswith("wpl-") else script


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
    parse.options = options  # type: ignore[attr-defined]  # read by RoleGroup for the metavar
    return parse


# What an option's role says about where its value comes from when a run is continued or reused.
ROLES = {
    "shape": "fixes the shape of the saved weights: derive/test/forgetting take it from the checkpoint they load",
    "runtime": "where and how a run executes: a resume without new parameters still takes it from the command line",
    "search": "what a search fixes about its space and regularisation: a retrain of its architecture inherits it",
}


def metavar_of(kind: Any) -> str | None:
    """``{a,b,c}`` for a :func:`choice` or :func:`str2bool` type, so the help shows what is accepted."""
    if kind is str2bool:
        return "{true,false}"
    options = getattr(kind, "options", None)
    return "{" + ",".join(options) + "}" if options else None


class RoleGroup:
    """An argument group whose ``add_argument`` also takes ``role=`` (one name of ``ROLES`` or a tuple of them)."""

    def __init__(self, group: argparse._ArgumentGroup, roles: dict[str, frozenset[str]], tiers: dict[str, int],
                 tier: int) -> None:
        self.group = group
        self.roles = roles
        self.tiers = tiers
        self.tier = tier

    def add_argument(self, *flags: str, role: str | tuple[str, ...] = (), **kwargs: Any) -> argparse.Action:
        if "metavar" not in kwargs and (metavar := metavar_of(kwargs.get("type"))):
            kwargs["metavar"] = metavar
        action = self.group.add_argument(*flags, **kwargs)
        marks = frozenset((role,) if isinstance(role, str) else role)
        if not marks <= ROLES.keys():
            raise ValueError(f"{flags[0]}: unknown role(s) {sorted(marks - ROLES.keys())}")
        if marks:
            self.roles[action.dest] = marks
        self.tiers[action.dest] = self.tier
        return action


ABBREVIATIONS = {"learning_rate": "lr"}  # words a user may spell out that the option names abbreviate


def tokens(flag: str) -> list[str]:
    """The words of an option name: ``--shared_cnn_lr`` -> ``["shared", "cnn", "lr"]``
    (``--controller_learning_rate`` -> ``["controller", "lr"]``)."""
    name = flag.lstrip("-").lower().replace("-", "_")
    for long, short in ABBREVIATIONS.items():
        name = name.replace(long, short)
    return [t for t in name.split("_") if t]


def close_words(a: str, b: str) -> bool:
    """The same word, or a misspelling of it (both at least three letters)."""
    return a == b or (min(len(a), len(b)) >= 3 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.8)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def suggest(flag: str, known: Sequence[str], tier: Callable[[str], int] = lambda _: 0, n: int = 3) -> list[str]:
    """Up to ``n`` known options a misspelt ``flag`` may have meant, ranked by meaning before spelling.

    Options sharing words with ``flag`` come first (more shared words, then fewer other words: ``--lr``
    finds the ``*_lr`` options, not ``--log_dir``); ties go to options of the search before those of one
    mode (``tier``), then to the smaller edit distance. Options sharing no word are offered only when
    the whole name is a near miss (a dropped underscore, a typo).
    """
    typed = tokens(flag)
    scored = []
    for option in known:
        words = tokens(option)
        exact = sum(t in words for t in typed)
        close = sum(any(close_words(t, w) for w in words) for t in typed)
        other = sum(not any(close_words(t, w) for t in typed) for w in words)
        distance = edit_distance(flag.lstrip("-"), option.lstrip("-"))
        if close == 0 and distance > max(2, len(flag.lstrip("-")) // 4):
            continue
        scored.append(((-exact, -close, other, tier(option), distance, option), option))
    return [option for _, option in sorted(scored)[:n]]


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each help text (unless empty or already said); an explicit newline in a text
    starts a new wrapped line."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in ("", None) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for line in text.splitlines():  # a loop, not a comprehension: super() needs the method's frame
            lines += super()._split_lines(line, width) or [""]
        return lines

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            lines.append(super()._fill_text(line, width, indent))
        return "\n".join(lines)


class HelpAction(argparse.Action):
    """``--help`` (the first screen) or ``--help-all`` (every option): print it and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, full: bool = False, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)
        self.full = full

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: str | None = None) -> None:
        text = parser.format_help(self.full) if isinstance(parser, StrictParser) else parser.format_help()
        parser._print_message(text, sys.stdout)
        parser.exit()


class StrictParser(argparse.ArgumentParser):
    """argparse that names close matches for unknown options, prints one-line errors, records option roles
    and has a first-screen ``--help`` beside ``--help-all`` (when built with ``first_screen=``)."""

    def __init__(self, *args: Any, first_screen: str | None = None, **kwargs: Any) -> None:
        if first_screen is not None:
            kwargs.update(add_help=False, formatter_class=Formatter)
        super().__init__(*args, **kwargs)
        self.roles: dict[str, frozenset[str]] = {}
        self.tiers: dict[str, int] = {}
        self.first_screen = first_screen
        self.groups: dict[str, RoleGroup] = {}

    def group(self, title: str, description: str | None = None, tier: int = 0) -> RoleGroup:
        """A help group whose options may carry roles (recorded in ``self.roles``). ``tier`` ranks its options
        among suggestions for a misspelt one: 0 the search's, 1 one mode's, 2 accepted but without effect.
        A title already made, asked for without a description, is that group again: a plug-in's options
        join the group they belong to (a regulariser's strength, the continual group)."""
        if title in self.groups:
            if description is not None:
                raise ValueError(f"help group {title!r} is described twice")
            return self.groups[title]
        group = RoleGroup(self.add_argument_group(title, description), self.roles, self.tiers, tier)
        self.groups[title] = group
        if title == self.first_screen:
            group.group.add_argument("-h", "--help", action=HelpAction, help="this screen")
            group.group.add_argument("--help-all", action=HelpAction, full=True, help="every option, by group")
        return group

    def format_help(self, full: bool = True) -> str:  # type: ignore[override]
        """Every group (``full``), or the first screen and the other groups' sizes, two to a line."""
        if self.first_screen is None:
            return super().format_help()
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        others = []
        for group in self._action_groups:
            if not group._group_actions:
                continue
            if full or group.title == self.first_screen:
                formatter.start_section(group.title)
                formatter.add_text(group.description)
                formatter.add_arguments(group._group_actions)
                formatter.end_section()
            else:
                others.append(f"{group.title}: {len(group._group_actions)} options")
        if others:
            formatter.start_section("more options, by group (--help-all lists them all)")
            formatter.add_text("\n".join("; ".join(others[i:i + 2]) for i in range(0, len(others), 2)))
            formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            dest = {s: a.dest for a in self._actions for s in a.option_strings}
            problems = []
            for item in unknown:
                flag = item.split("=", 1)[0]
                if not flag.startswith("-"):
                    problems.append(f"unexpected argument {item!r}")
                    continue
                close = suggest(flag, known, lambda option: self.tiers.get(dest[option], 0))
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"unknown option {flag}{hint}")
            self.error("; ".join(problems))
        return parsed
