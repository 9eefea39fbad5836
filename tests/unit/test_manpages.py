"""The committed man pages are the ones the agents' metadata renders to."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestfence.manpages import AGENTS, manpage_text

MAN = Path(__file__).resolve().parents[2] / "man"


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_committed_manpage_is_up_to_date(agent: str) -> None:
    committed = (MAN / f"{agent}.8").read_text()
    assert committed == manpage_text(agent), (
        f"man/{agent}.8 is stale: run .venv/bin/guestfence manpages man"
    )


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_manpage_documents_every_option(agent: str) -> None:
    text = manpage_text(agent)
    for param in AGENTS[agent].params:
        if param.short:
            assert f"-{param.short}" in text.replace("\\-", "-"), param.name
