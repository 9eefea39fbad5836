"""The admin socket: protocol, socket file rules, peer check, and what ``status`` reports."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from guestfence.errors import ConfigError, ProtocolError, TransportError
from guestfence.host import admin
from guestfence.host.admin import (
    PROTOCOL_VERSION,
    AdminServer,
    AdminSocketInUse,
    bind_admin_socket,
    check_socket_path,
    encode,
    parse_reply,
    parse_request,
    query,
)
from guestfence.host.keys import fingerprint
from guestfence.host.server import Request
from guestfence.host.status import DaemonFacts, gather_status, status_answerer
from guestfence.virt.wire import Op
from tests.unit.day2_fakes import KEY, Sink, TrackingBackend, make_service

T = TypeVar("T")


# ---------------------------------------------------------------- protocol


def test_a_request_line_is_checked() -> None:
    assert parse_request(b'{"version": 1, "command": "status", "requests": 5}\n') == {
        "version": 1, "command": "status", "requests": 5}
    for line, needle in [
        (b"status\n", "not JSON"),
        (b"[1]\n", "not a JSON object"),
        (b'{"version": 2, "command": "status"}', "speaks version 1"),
        (b'{"command": "status"}', "version None"),
        (b'{"version": 1, "command": "shutdown"}', "known: ping, status"),
        (b'{"version": 1, "command": "status", "requests": -1}', "non-negative"),
        (b'{"version": 1, "command": "status", "requests": true}', "non-negative"),
        (b"\xff\xfe", "not JSON"),
    ]:
        with pytest.raises(ProtocolError, match=needle):
            parse_request(line)


def test_replies_round_trip_and_bad_ones_are_refused() -> None:
    reply = {"version": PROTOCOL_VERSION, "ok": True, "command": "ping"}
    line = encode(reply)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_reply(line) == reply
    with pytest.raises(ProtocolError):
        parse_reply(b'{"ok": "yes"}')


def test_socket_paths_must_be_absolute_and_short() -> None:
    assert check_socket_path("/run/x.sock") == "/run/x.sock"
    assert check_socket_path("off") == "off"
    with pytest.raises(ConfigError, match="absolute path"):
        check_socket_path("admin.sock")
    with pytest.raises(ConfigError, match="at most 107 bytes"):
        check_socket_path("/" + "x" * 120)


# ---------------------------------------------------------------- the socket file


def test_the_socket_is_0600_in_a_new_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "run" / "admin.sock"
    sock = bind_admin_socket(str(path))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(path.stat().st_mode)
    finally:
        sock.close()


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "admin.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listening: what a killed daemon leaves
    stale.close()
    first = bind_admin_socket(path)
    try:
        with pytest.raises(AdminSocketInUse, match="in use by another running guestfenced"):
            bind_admin_socket(path)
    finally:
        first.close()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_admin_socket(str(path))
    assert path.read_text() == "precious"


def test_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by everybody"):
        bind_admin_socket(str(shared / "admin.sock"))


# ---------------------------------------------------------------- server and client


def with_server(tmp_path: Path, answer: admin.Answerer,
                client: Callable[[str], T]) -> T:
    """Run ``client(path)`` in a thread against an AdminServer on the event loop."""
    path = str(tmp_path / "admin.sock")

    async def main() -> T:
        server = AdminServer(path, answer)
        await server.start()
        try:
            return await asyncio.to_thread(client, path)
        finally:
            await server.stop()

    result = asyncio.run(main())
    assert not os.path.exists(path), "the socket file is removed on stop"
    return result


async def echo(request: dict[str, Any]) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "ok": True, "command": request["command"]}


def test_root_gets_answers_and_errors_keep_the_connection(tmp_path: Path) -> None:
    def client(path: str) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b'{"version": 1, "command": "ping"}\n{"version": 9}\n\n'
                      b'{"version": 1, "command": "status"}\n')
            f = s.makefile("rb")
            return [json.loads(f.readline()) for _ in range(3)]

    replies = with_server(tmp_path, echo, client)
    assert replies[0] == {"version": 1, "ok": True, "command": "ping"}
    assert replies[1]["ok"] is False and "speaks version 1" in replies[1]["error"]
    assert replies[2]["command"] == "status"


def test_a_non_root_peer_is_refused_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "peer_credentials", lambda sock: (4242, 1000, 1000))
    with caplog.at_level(logging.WARNING, logger="guestfenced"):
        reply = with_server(tmp_path, echo, lambda path: query(path, {"command": "ping"}))
    assert reply["ok"] is False
    assert "answers only root" in reply["error"] and "uid 1000" in reply["error"]
    assert any("refused pid 4242 of uid 1000" in r.getMessage() for r in caplog.records)


def test_an_overlong_request_line_is_refused(tmp_path: Path) -> None:
    def client(path: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"x" * (admin.MAX_REQUEST_LINE + 10) + b"\n")
            return parse_reply(s.makefile("rb").readline())

    assert "longer than" in with_server(tmp_path, echo, client)["error"]


def test_the_client_explains_a_missing_daemon(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="guestfenced is not running"):
        query(str(tmp_path / "nothing.sock"), {"command": "ping"})
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(TransportError, match="nobody listens"):
        query(str(tmp_path / "stale.sock"), {"command": "ping"})


# ---------------------------------------------------------------- status


def facts() -> DaemonFacts:
    return DaemonFacts(config_path="/etc/fence_virt.conf",
                       listeners=[{"type": "tcp", "address": "127.0.0.1", "port": 1229}])


def test_status_reports_requests_keys_and_local_guests() -> None:
    svc = make_service(key=KEY)

    async def main() -> dict[str, Any]:
        for seqno in range(3):
            await svc.serve(Request("tcp", "10.0.0.1", Op.STATUS, "vm1", seqno), Sink(), None,
                            authenticate=False)
        return await gather_status(svc, facts(), requests=2)

    status = asyncio.run(main())
    assert [r["seqno"] for r in status["requests"]] == [1, 2]
    assert status["requests_total"] == 3
    assert status["requests"][0]["outcome"] == "success"
    assert [(k["fingerprint"], k["cluster"], k["state"]) for k in status["keys"]] == [
        (fingerprint(KEY), None, "current")]
    assert [(g["name"], g["state"], g["host"]) for g in status["guests"]] == [
        ("vm1", "running", socket.gethostname()), ("vm2", "shutoff", socket.gethostname())]
    assert status["backend"]["healthy"] is True and status["backend"]["error"] is None
    assert status["listeners"] == [{"type": "tcp", "address": "127.0.0.1", "port": 1229,
                                    "in_flight": 0}]
    assert status["daemon"]["pid"] == os.getpid()
    assert KEY[:32].hex() not in json.dumps(status)


def test_status_shows_owner_hosts_from_a_tracking_backend() -> None:
    status = asyncio.run(gather_status(make_service(TrackingBackend()), facts(), requests=5))
    assert [(g["name"], g["host"], g["decision"]) for g in status["guests"]] == [
        ("vm1", "hostA", "owner"), ("vm2", "hostB", "owner"), ("vm3", None, "owner-gone")]
    assert status["backend"]["tracking"]["departed_unfenced"] == ["hostC"]
    assert status["backend"]["mode"] == "cpg"


def test_a_failing_backend_is_reported_not_raised() -> None:
    backend = TrackingBackend()
    backend.snapshot = lambda: (_ for _ in ()).throw(RuntimeError("cpg gone"))  # type: ignore
    status = asyncio.run(gather_status(make_service(backend), facts(), requests=5))
    assert "cpg gone" in status["backend"]["error"]
    assert status["guests"] == []


def test_the_status_answerer_wraps_the_status(tmp_path: Path) -> None:
    svc = make_service()
    reply = with_server(tmp_path, status_answerer(svc, facts()),
                        lambda path: query(path, {"command": "status", "requests": 1}))
    assert reply["ok"] is True and reply["version"] == PROTOCOL_VERSION
    assert reply["status"]["daemon"]["config"] == "/etc/fence_virt.conf"
