"""sd_notify: one datagram of KEY=value lines, to a path or an abstract socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from guestfence.host.sdnotify import notify


def test_sends_one_datagram_to_a_path(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "n"))
        assert notify("READY=1", "STATUS=a\nb", environ={"NOTIFY_SOCKET": str(tmp_path / "n")})
        assert sock.recv(100) == b"READY=1\nSTATUS=a b"


def test_abstract_socket() -> None:
    name = f"guestfence-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STOPPING=1"


def test_without_systemd_or_with_a_dead_socket_nothing_happens(tmp_path: Path) -> None:
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})
