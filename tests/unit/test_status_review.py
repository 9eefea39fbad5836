"""``guestfence status`` shows names that guests chose: never as markup or terminal codes."""

from __future__ import annotations

import copy
import io

from rich.console import Console

from guestfence.status_cli import render
from tests.unit.test_status_cli import STATUS

HOSTILE = "[/]\x1b]0;owned\x07[bold red]web1\x1b[2J\r"


def test_guest_chosen_names_are_shown_as_text() -> None:
    status = copy.deepcopy(STATUS)
    status["requests"][0]["target"] = HOSTILE  # a request block's domain field
    status["requests"][0]["requester"] = "[/red]"
    status["guests"][0]["name"] = HOSTILE  # a libvirt domain name
    status["backend"]["error"] = "lookup of '[/]' failed"
    status["backend"]["tracking"]["departed_unfenced"] = ["[/]"]
    out = io.StringIO()
    render(status, Console(file=out, width=400, color_system=None))  # used to raise
    text = out.getvalue()
    assert "\x1b]" not in text and "\x1b[2J" not in text and "\r" not in text
    assert "\\x1b]0;owned\\x07[bold red]web1\\x1b[2J\\r" in text
    assert "lookup of '[/]' failed" in text and "[/red]" in text
