"""Every man page renders with man-db (`man -l`) without a single groff warning."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from guestfence.manpages import manpage_files

pytestmark = pytest.mark.integration


def man() -> str:
    tool = shutil.which("man")
    assert tool, "man is missing: install the Debian packages man-db and groff-base " \
        "(make test-deps)"
    return tool


@pytest.mark.parametrize("name", sorted(manpage_files()))
def test_page_renders_without_warnings(name: str, tmp_path: Path) -> None:
    page = tmp_path / name
    page.write_text(manpage_files()[name]())
    r = subprocess.run([man(), "--warnings", "-l", str(page)], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="",
                                            PAGER="cat", MANPAGER="cat"))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    title = name.rsplit(".", 1)[0]
    assert r.stdout.startswith(f"{title.upper()}("), r.stdout[:200]
    assert "NAME" in r.stdout and "OPTIONS" in r.stdout


def test_guestfenced_page_shows_the_configure_option() -> None:
    text = subprocess.run([man(), "-l", "-"], input=manpage_files()["guestfenced.8"](),
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MANWIDTH="80", PAGER="cat")).stdout
    assert "-c, --configure" in text and "-w" in text
