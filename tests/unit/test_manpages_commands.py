"""guestfenced(8) and guestfence(1) come from the parsers the programs run with."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.cli import build_parser as cli_parser
from guestfence.host.main import build_parser as daemon_parser
from guestfence.manpages import COMMANDS, command_manpage_text, manpage_files

MAN = Path(__file__).resolve().parents[2] / "man"


def roff(text: str) -> str:
    return text.replace("-", "\\-")


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every sub-command's parser, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from parsers(sub)


def documented_options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for p in parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                yield p.prog, option


@pytest.mark.parametrize(("command", "build"), [("guestfenced", daemon_parser),
                                                 ("guestfence", cli_parser)])
def test_every_option_of_every_parser_is_in_the_page(command: str, build: object) -> None:
    text = command_manpage_text(command)
    options = list(documented_options(build()))  # type: ignore[operator]
    assert len(options) > 5
    missing = [(prog, option) for prog, option in options
               if f"\\fB{roff(option)}\\fR" not in text]
    assert not missing, f"options missing from {command}'s page: {missing}"


def test_every_sub_command_has_its_section() -> None:
    text = command_manpage_text("guestfence")
    progs = [p.prog for p in parsers(cli_parser())][1:]
    assert {"guestfence demo", "guestfence check", "guestfence manpages"} <= set(progs)
    for prog in progs:
        assert f".SH COMMAND \\fI\\,'{roff(prog)}'\\/\\fR" in text, prog


def test_the_configure_option_and_the_prose_are_both_in_guestfenced8() -> None:
    text = command_manpage_text("guestfenced")
    assert text.startswith('.TH GUESTFENCED "8" "" "guestfence ')
    assert "\\fB\\-\\-configure\\fR" in text and ".SH CONFIGURATION" in text
    assert ".SH EXIT STATUS" in text and ".SH SYSTEMD" in text
    assert "\n'" not in text, "a line starting with ' is a roff control line"


@pytest.mark.parametrize("name", sorted(f"{c}.{p.section}" for c, p in COMMANDS.items()))
def test_committed_page_is_up_to_date(name: str) -> None:
    committed = (MAN / name).read_text()
    assert committed == manpage_files()[name](), (
        f"man/{name} is stale (an option or sub-command changed): "
        "run .venv/bin/guestfence manpages man")
