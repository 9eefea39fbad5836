"""The admin socket's directory: found in a security review."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guestfence.errors import ConfigError
from guestfence.host.admin import bind_admin_socket

NOBODY = 65534


def test_a_directory_symlink_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    """Someone who may write the parent (a sticky /tmp) points the socket's directory at a
    directory of root's: the daemon must not bind (nor remove a stale socket) there, and
    the link's owner could later swap it to a directory with a socket of their own."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "gf"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="symbolic link"):
        bind_admin_socket(str(link / "admin.sock")).close()
    assert list(real.iterdir()) == []


def test_a_directory_created_meanwhile_by_someone_else_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """The directory does not exist; someone creates it (or a link) before guestfenced
    does: it is refused, never chmod-ed and used."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    directory = tmp_path / "gf"
    real_makedirs = os.makedirs

    def racing_makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        directory.symlink_to(victim)
        os.lchown(directory, NOBODY, NOBODY)
        real_makedirs(name, mode, exist_ok)

    monkeypatch.setattr(os, "makedirs", racing_makedirs)
    with pytest.raises(ConfigError):
        bind_admin_socket(str(directory / "admin.sock")).close()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755, "the victim directory was chmod-ed"
    assert list(victim.iterdir()) == []


def test_a_root_owned_directory_symlink_still_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "gf"
    link.symlink_to(real)  # made by root, as /var/run -> /run
    bind_admin_socket(str(link / "admin.sock")).close()
    assert stat.S_ISSOCK((real / "admin.sock").lstat().st_mode)
