"""A small flag parser with Docker's (pflag's) grammar.

Why not argparse: Docker's commands stop parsing flags at the first positional for
``run IMAGE CMD...`` and ``exec CONTAINER CMD...`` while other commands allow flags
anywhere; shorthands combine (``-it``, ``-p8080:80``, ``-eA=1``); booleans accept
``--rm=false``; repeatable flags collect lists; and errors must read like Docker's
(``unknown flag: --foo``) and exit with 125. All of that is simpler to state than to
bend argparse into, and this parser costs nothing to import.

A command declares its flags as :class:`Flag` rows in a :class:`Spec`; :func:`parse`
returns an :class:`Options` (attribute access by flag name, ``-`` as ``_``) and the
positional arguments.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from collections.abc import Callable, Sequence
    from typing import Any



class UsageError(Exception):
    """Bad command line: the CLI prints it with a hint and exits with 125."""

    def __init__(self, message: str, command: str = "") -> None:
        super().__init__(message)
        self.command = command


class HelpRequested(Exception):
    """``--help`` was given; the CLI prints the command's help and exits 0."""


BOOL, STR, LIST, INT, FLOAT = "bool", "string", "list", "int", "decimal"


class Flag:
    """One flag. ``names`` is ``"-d, --detach"`` style: an optional one-letter short
    form, then the long form. ``kind`` is ``bool``, ``string``, ``list`` (repeatable),
    ``int`` or ``decimal``. ``check`` validates/converts a value when given."""

    __slots__ = ("names", "kind", "help", "default", "check", "hidden", "short", "long")

    def __init__(self, names: str, kind: str = STR, help: str = "", default: Any = None,
                 check: Callable[[str], Any] | None = None, hidden: bool = False) -> None:
        self.names = names
        self.kind = kind
        self.help = help
        self.check = check
        self.hidden = hidden
        self.short = self.long = ""
        for part in names.replace(",", " ").split():
            if part.startswith("--"):
                self.long = part[2:]
            elif part.startswith("-"):
                self.short = part[1:]
        if default is None:
            default = {BOOL: False, LIST: [], INT: 0}.get(kind)
        self.default = default

    @property
    def dest(self) -> str:
        return self.long.replace("-", "_")

    def describe(self) -> str:
        head = (f"-{self.short}, " if self.short else "    ") + f"--{self.long}"
        if self.kind != BOOL:
            head += " " + ("list" if self.kind == LIST else self.kind)
        default = ""
        if self.kind in (STR, INT, FLOAT) and self.default not in (None, "", 0):
            default = (f' (default "{self.default}")' if self.kind == STR
                       else f" (default {self.default})")
        elif self.kind == BOOL and self.default:
            default = " (default true)"
        return f"  {head:<28} {self.help}{default}"


class Spec:
    """A command's grammar. ``interspersed=False`` stops flag parsing at the first
    positional argument (``run IMAGE [COMMAND] [ARG...]``)."""

    def __init__(self, name: str, usage: str, help: str, flags: Sequence[Flag] = (),
                 min_args: int = 0, max_args: int | None = None, interspersed: bool = True,
                 aliases: Sequence[str] = ()) -> None:
        self.name = name
        self.usage = usage
        self.help = help
        self.flags = flags
        self.min_args = min_args
        self.max_args = max_args
        self.interspersed = interspersed
        self.aliases = aliases

    def help_text(self, prog: str = "engine") -> str:
        lines = [f"\nUsage:  {prog} {self.usage}\n", self.help + "\n"]
        if self.aliases:
            lines.append("Aliases:\n  " + ", ".join(f"{prog} {a}" for a in self.aliases) + "\n")
        visible = [f for f in self.flags if not f.hidden]
        if visible:
            lines.append("Options:")
            lines.extend(f.describe() for f in sorted(visible, key=lambda f: f.long))
            lines.append(f"  {'    --help':<28} Print usage")
        return "\n".join(lines) + "\n"


class Options:
    """Parsed flag values; ``changed`` holds the long names the user actually gave."""

    def __init__(self, values: dict[str, Any], changed: set[str]) -> None:
        self.__dict__.update(values)
        self.changed = changed

    def __getattr__(self, name: str) -> Any:  # only called for unknown names
        raise AttributeError(f"no flag {name!r}")

    def given(self, long: str) -> bool:
        return long in self.changed


_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


def _convert(flag: Flag, text: str, shown: str) -> Any:
    try:
        if flag.kind == BOOL:
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("parse error")
        if flag.check is not None:
            return flag.check(text)
        if flag.kind == INT:
            return int(text, 0)
        if flag.kind == FLOAT:
            return float(text)
        return text
    except (ValueError, UsageError) as e:
        raise UsageError(f'invalid argument "{text}" for "{shown}" flag: {e}') from None


def parse(spec: Spec, argv: Sequence[str]) -> tuple[Options, list[str]]:
    """Parse ``argv`` (the words after the command name) against ``spec``."""
    by_long = {f.long: f for f in spec.flags}
    by_short = {f.short: f for f in spec.flags if f.short}
    values: dict[str, Any] = {}
    for f in spec.flags:
        values[f.dest] = list(f.default) if f.kind == LIST else f.default
    changed: set[str] = set()
    args: list[str] = []

    def store(flag: Flag, text: str, shown: str) -> None:
        value = _convert(flag, text, shown)
        changed.add(flag.long)
        if flag.kind == LIST:
            values[flag.dest].append(value)
        else:
            values[flag.dest] = value

    i = 0
    argv = list(argv)
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            args.extend(argv[i:])
            break
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            flag = by_long.get(name)
            if flag is None:
                if name == "help":
                    raise HelpRequested()
                raise UsageError(f"unknown flag: --{name}", spec.name)
            shown = f"--{name}" if not flag.short else f"-{flag.short}, --{name}"
            if flag.kind == BOOL:
                store(flag, value if eq else "true", shown)
            elif eq:
                store(flag, value, shown)
            elif i < len(argv):
                store(flag, argv[i], shown)
                i += 1
            else:
                raise UsageError(f"flag needs an argument: --{name}", spec.name)
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            j = 0
            while j < len(letters):
                c = letters[j]
                flag = by_short.get(c)
                if flag is None:
                    if c == "h":
                        raise HelpRequested()
                    raise UsageError(f"unknown shorthand flag: '{c}' in {word}", spec.name)
                shown = f"-{c}, --{flag.long}"
                rest = letters[j + 1:]
                if flag.kind == BOOL:
                    if rest.startswith("="):
                        store(flag, rest[1:], shown)
                        break
                    store(flag, "true", shown)
                    j += 1
                    continue
                if rest:
                    store(flag, rest[1:] if rest.startswith("=") else rest, shown)
                elif i < len(argv):
                    store(flag, argv[i], shown)
                    i += 1
                else:
                    raise UsageError(
                        f"flag needs an argument: '{c}' in -{c}", spec.name)
                break
        else:
            args.append(word)
            if not spec.interspersed:
                args.extend(argv[i:])
                break
    if len(args) < spec.min_args:
        need = "1 argument" if spec.min_args == 1 else f"{spec.min_args} arguments"
        raise UsageError(f'"{spec.name}" requires at least {need}.', spec.name)
    if spec.max_args is not None and len(args) > spec.max_args:
        if spec.max_args == 0:
            raise UsageError(f'"{spec.name}" accepts no arguments.', spec.name)
        need = "1 argument" if spec.max_args == 1 else f"{spec.max_args} arguments"
        raise UsageError(f'"{spec.name}" requires at most {need}.', spec.name)
    return Options(values, changed), args
