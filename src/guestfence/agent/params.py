"""Agent parameters: one table drives argv parsing, stdin parsing, help and metadata.

Fence agents take their input either from the command line or, when there is no
argument at all, from standard input as ``name=value`` lines (that is how
Pacemaker calls them). The two are never merged.

We parse argv with a small getopt-compatible loop rather than argparse because
the C clients' option strings must be reproduced exactly, including ``-S``
with an optional *attached* value and repeatable flags such as ``-d``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence

from guestfence.errors import ConfigError
from guestfence.record import Record

TYPE_CHECKING = False  # typing is not imported at run time: agents start faster without it
if TYPE_CHECKING:
    from typing import Literal, TextIO

    ContentType = Literal["string", "integer", "second", "boolean", "select"]
    Arity = Literal["none", "required", "optional"]


class UsageError(ConfigError):
    """Bad agent input: the message is printed, usage may follow, exit 1."""


class Param(Record):
    """One agent parameter.

    ``name`` is the stdin name and the key in the parsed values. ``aliases``
    are further stdin names (deprecated spellings). ``short`` is the getopt
    letter (without dash), ``long`` the GNU long option (without dashes).
    ``implicit`` is the value of an option given without one (flags, ``-S``,
    stdin ``debug``); ``repeat_counts`` makes ``-d -d`` mean 2; ``metavar``
    is shown in help (``-o <operation>``); ``meta_required``/``meta_default``
    override what the metadata says when it differs from the real behaviour.
    """

    __slots__ = (
        "aliases",
        "arity",
        "choices",
        "content",
        "default",
        "implicit",
        "in_help",
        "long",
        "meta_default",
        "meta_required",
        "metavar",
        "name",
        "obsoletes",
        "repeat_counts",
        "required",
        "short",
        "shortdesc",
    )
    name: str
    shortdesc: str
    short: str | None
    long: str | None
    arity: Arity
    default: str | None
    content: ContentType
    choices: tuple[str, ...]
    required: bool
    aliases: tuple[str, ...]
    implicit: str
    repeat_counts: bool
    metavar: str
    in_help: bool
    meta_required: bool | None
    meta_default: str | None
    obsoletes: str | None

    def __init__(
        self,
        name: str,
        shortdesc: str,
        short: str | None = None,
        long: str | None = None,
        arity: Arity = "required",
        default: str | None = None,
        content: ContentType = "string",
        choices: tuple[str, ...] = (),
        required: bool = False,
        aliases: tuple[str, ...] = (),
        implicit: str = "1",
        repeat_counts: bool = False,
        metavar: str = "",
        in_help: bool = True,
        meta_required: bool | None = None,
        meta_default: str | None = None,
        obsoletes: str | None = None,
    ) -> None:
        self._set(name=name, shortdesc=shortdesc, short=short, long=long, arity=arity,
                  default=default, content=content, choices=choices, required=required,
                  aliases=aliases, implicit=implicit, repeat_counts=repeat_counts,
                  metavar=metavar, in_help=in_help, meta_required=meta_required,
                  meta_default=meta_default, obsoletes=obsoletes)

    def stdin_names(self) -> Iterable[str]:
        yield self.name
        yield from self.aliases
        if self.long:
            yield self.long


def normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class ParsedInput:
    def __init__(self, from_stdin: bool = False) -> None:
        self.values: dict[str, str] = {}
        self.warnings: list[str] = []
        self.from_stdin = from_stdin
        self.help = False
        self.version = False
        # where each value came from, for error messages ("stdin line 3", "-n")
        self.origins: dict[str, str] = {}


# stdin names every agent accepts and ignores (Pacemaker and fenced send them)
IGNORED_STDIN_NAMES = frozenset({"agent", "self", "nodename"})


class ParamTable:
    def __init__(self, params: Sequence[Param]) -> None:
        self.params = tuple(params)
        self._by_short = {p.short: p for p in params if p.short}
        self._by_long = {normalise_name(p.long): p for p in params if p.long}
        self._by_stdin: dict[str, Param] = {}
        for p in params:
            for n in p.stdin_names():
                self._by_stdin.setdefault(normalise_name(n), p)

    def get(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    # ------------------------------------------------------------------ argv

    def parse_argv(self, argv: Sequence[str], extra_flags: dict[str, str]) -> ParsedInput:
        """getopt-style parsing. ``extra_flags`` maps letters like 'h' to 'help'."""
        parsed = ParsedInput()
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                break
            if arg.startswith("--") and len(arg) > 2:
                name, eq, value = arg[2:].partition("=")
                param = self._by_long.get(normalise_name(name))
                if name in ("help",):
                    parsed.help = True
                    continue
                if name in ("version",):
                    parsed.version = True
                    continue
                if param is None:
                    raise UsageError(f"Parse error: unknown option '--{name}'")
                if param.arity == "none" or (param.arity == "optional" and not eq):
                    if eq and param.arity == "none":
                        raise UsageError(f"Parse error: option '--{name}' takes no value")
                    self._store(parsed, param, None, f"--{name}")
                    continue
                if not eq:
                    if i >= len(args):
                        raise UsageError(f"Parse error: option '--{name}' needs a value")
                    value = args[i]
                    i += 1
                self._store(parsed, param, value, f"--{name}")
                continue
            if not arg.startswith("-") or arg == "-":
                parsed.warnings.append(f"Ignoring extra argument '{arg}'")
                continue
            letters = arg[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                if letter in extra_flags:
                    setattr(parsed, extra_flags[letter], True)
                    continue
                param = self._by_short.get(letter)
                if param is None:
                    raise UsageError(f"Parse error: unknown option '-{letter}'")
                if param.arity == "none":
                    self._store(parsed, param, None, f"-{letter}")
                    continue
                if param.arity == "optional":
                    self._store(parsed, param, letters or None, f"-{letter}")
                    break
                if letters:
                    value, letters = letters, ""
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    raise UsageError(f"Parse error: option '-{letter}' needs a value")
                self._store(parsed, param, value, f"-{letter}")
        for rest in args[i:]:
            parsed.warnings.append(f"Ignoring extra argument '{rest}'")
        return parsed

    # ------------------------------------------------------------------ stdin

    def parse_stdin(self, stream: TextIO) -> ParsedInput:
        """``name=value`` lines. Unlike the C clients, a value is kept whole (spaces included)."""
        parsed = ParsedInput(from_stdin=True)
        for number, raw in enumerate(stream, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, eq, value = line.partition("=")
            key = normalise_name(name)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            param = self._by_stdin.get(key)
            if param is None:
                if key not in IGNORED_STDIN_NAMES:
                    parsed.warnings.append(f"Parse error: Ignoring unknown option '{line}'")
                continue
            given = value if eq and value != "" else None
            self._store(parsed, param, given, f"stdin line {number}")
        return parsed

    # ------------------------------------------------------------------ common

    def _store(self, parsed: ParsedInput, param: Param, value: str | None, origin: str) -> None:
        if value is None:
            if param.arity == "required" and param.content != "boolean":
                raise UsageError(f"Parse error: {origin}: '{param.name}' needs a value")
            if param.repeat_counts:
                value = str(int(parsed.values.get(param.name, "0")) + 1)
            else:
                value = param.implicit
        elif param.content == "boolean" and not param.repeat_counts:
            lowered = value.lower()
            if lowered in ("1", "yes", "on", "true"):
                value = "1"
            elif lowered in ("0", "no", "off", "false"):
                value = "0"
            else:
                raise UsageError(
                    f"Parse error: {origin}: '{param.name}={value}'; expected 1/yes/on/true or "
                    "0/no/off/false"
                )
        parsed.values[param.name] = value
        parsed.origins[param.name] = origin

    def parse(
        self,
        argv: Sequence[str],
        stdin: TextIO | None = None,
        extra_flags: dict[str, str] | None = None,
    ) -> ParsedInput:
        """argv if there is any argument, else stdin (never both)."""
        if argv:
            return self.parse_argv(argv, extra_flags or {})
        return self.parse_stdin(stdin if stdin is not None else sys.stdin)

    def with_defaults(self, given: dict[str, str]) -> dict[str, str]:
        out = {p.name: p.default for p in self.params if p.default is not None}
        out.update(given)
        return out


def parse_int(
    values: dict[str, str], name: str, low: int, high: int | None = None
) -> int:
    raw = values[name]
    try:
        number = int(raw, 10)
    except ValueError:
        raise UsageError(f"Invalid {name} '{raw}': expected an integer") from None
    if number < low or (high is not None and number > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise UsageError(f"Invalid {name} '{raw}': expected {bound}")
    return number


def help_text(
    prog: str, intro: str, params: Sequence[Param], specials: Sequence[tuple[int, str, str]]
) -> str:
    """Usage text in the C clients' layout. ``specials`` = (position, '-h', description)."""
    lines = [f"usage: {prog} [args]", "", intro, ""]
    rows: list[tuple[str, str]] = []
    for p in params:
        if not (p.in_help and p.short):
            continue
        rows.append((f"-{p.short}" + (f" <{p.metavar}>" if p.metavar else ""), p.shortdesc))
    for position, flag, desc in specials:
        rows.insert(position, (flag, desc))
    lines += [_help_row(a, b) for a, b in rows]
    lines += [
        "",
        "With no command line argument, arguments are read from standard input.",
        "Arguments read from standard input take the form of:",
        "",
        "    arg1=value1",
        "    arg2=value2",
        "",
    ]
    lines += [_help_row(p.name, p.shortdesc) for p in params if p.in_help]
    return "\n".join(lines) + "\n\n"


def _help_row(left: str, text: str, width: int = 55) -> str:
    words, out, current = text.split(), [], ""
    for w in words:
        if current and len(current) + 1 + len(w) > width:
            out.append(current)
            current = w
        else:
            current = f"{current} {w}" if current else w
    out.append(current)
    # the C clients pad every description to the full width
    first = f"  {left:<20}  {out[0]:<{width}}"
    return "\n".join([first] + [f"  {'':<20}  {o:<{width}}" for o in out[1:]])


Validator = Callable[[dict[str, str]], None]
