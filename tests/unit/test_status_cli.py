"""``guestfence status``: tables, JSON output and the messages when the daemon cannot answer."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from guestfence.cli import build_parser
from guestfence.host.admin import AdminServer
from guestfence.host.status import DaemonFacts, status_answerer
from guestfence.status_cli import render, run
from tests.unit.day2_fakes import TrackingBackend, make_service

STATUS: dict[str, Any] = {
    "daemon": {"version": "0.1.0", "pid": 42, "uptime_s": 90061.0, "config": "/etc/f.conf",
               "metrics": None, "log_format": "json"},
    "listeners": [{"type": "multicast", "address": "225.0.0.12", "port": 1229,
                   "interface": "virbr0", "auth": "sha256", "in_flight": 2}],
    "backend": {"name": "tracked-cpg", "mode": "cpg", "uris": [], "healthy": None,
                "error": None,
                "tracking": {"mode": "cpg", "me": "hostA", "members": ["hostA"],
                             "violations": 0, "departed_unfenced": ["hostB"]}},
    "keys": [{"fingerprint": "0123456789abcdef", "cluster": "web", "state": "current",
              "file": "/etc/cluster/web.key"},
             {"fingerprint": "fedcba9876543210", "cluster": "web", "state": "successor",
              "file": "/etc/cluster/web.key.next"}],
    "guests": [{"name": "web1", "uuid": "u1", "state": "running", "host": None,
                "decision": "owner-gone"}],
    "requests": [{"finished": 0.0, "listener": "multicast", "requester": "10.0.0.1",
                  "target": "web1", "action": "off", "seqno": 1, "cluster": "web",
                  "outcome": "denied", "duration_ms": 3.25, "detail": ""}],
    "requests_total": 7,
    "counters": {},
}


def test_the_tables_show_every_part() -> None:
    out = io.StringIO()
    render(STATUS, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    for needle in ("pid 42", "1d 01:01:01", "225.0.0.12 on virbr0", "tracked-cpg (cpg)",
                   "departed, not confirmed fenced: hostB", "fedcba9876543210", "successor",
                   "owner-gone", "Last requests (1 of 7 since start)", "denied", "3.2"):
        assert needle in text, needle


@pytest.fixture
def admin_socket(tmp_path: Path) -> Iterator[str]:
    """A real AdminServer answering status for a fake service, on its own event loop."""
    path = str(tmp_path / "admin.sock")
    service = make_service(TrackingBackend())
    facts = DaemonFacts(config_path="/etc/f.conf", listeners=[{"type": "tcp"}])
    loop = asyncio.new_event_loop()
    server = AdminServer(path, status_answerer(service, facts))
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(server.stop())
        loop.close()


def test_json_output_is_the_daemons_status(admin_socket: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["status", "--socket", admin_socket, "--json"])
    assert run(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["daemon"]["config"] == "/etc/f.conf"
    assert [g["host"] for g in shown["guests"]] == ["hostA", "hostB", None]


def test_tables_from_a_live_socket(admin_socket: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run(build_parser().parse_args(["status", "--socket", admin_socket])) == 0
    assert "Last requests" in capsys.readouterr().out


def test_no_daemon_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["status", "--socket", str(tmp_path / "none.sock")])
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("guestfence status: no admin socket at ")
    assert "guestfenced is not running" in err


def test_a_negative_request_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(build_parser().parse_args(["status", "-n", "-1"])) == 2
    assert "--requests" in capsys.readouterr().err
