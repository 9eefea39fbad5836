"""Both roles of the challenge/response, driven against each other and against bad peers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestfence.errors import AuthError, ProtocolError
from guestfence.virt.handshake import ClientSession, DaemonSession
from guestfence.virt.wire import HashType, HostRecord, Result

KEY = b"k" * 100


def counter_rng(start: int):  # type: ignore[no-untyped-def]
    counter = itertools.count(start)
    return lambda n: bytes((next(counter) + i) % 256 for i in range(n))


def run(client: ClientSession, daemon: DaemonSession, reply: bytes, chunk: int = 1000) -> None:
    to_daemon = client.initial_bytes()
    while not daemon.authenticated:
        pieces = [to_daemon[i : i + chunk] for i in range(0, len(to_daemon), chunk)] or [b""]
        to_client = b"".join(daemon.receive(p) for p in pieces)
        to_daemon = client.receive(to_client)
    assert to_daemon == b""
    for i in range(0, len(reply), chunk):
        assert client.receive(reply[i : i + chunk]) == b""


@pytest.mark.parametrize("auth", list(HashType))
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_both_roles_agree(auth: HashType, chunk: int) -> None:
    client = ClientSession(KEY, auth, rng=counter_rng(1))
    daemon = DaemonSession(KEY, auth, rng=counter_rng(100))
    run(client, daemon, DaemonSession.result_bytes(Result.OFF), chunk)
    assert client.done
    assert client.outcome.result == Result.OFF


def test_auth_none_sends_nothing_before_result() -> None:
    client = ClientSession(KEY, HashType.NONE)
    assert client.initial_bytes() == b""
    assert client.receive(b"\x00") == b""
    assert client.outcome.result == 0


def test_host_list_stream() -> None:
    records = [HostRecord(f"g{i}", f"uuid-{i}", 1 + 4 * (i % 2)) for i in range(3)]
    client = ClientSession(KEY, HashType.SHA256)
    daemon = DaemonSession(KEY, HashType.SHA256)
    run(client, daemon, DaemonSession.host_list_bytes(records), chunk=13)
    assert client.outcome.result == Result.HOSTLIST
    assert client.outcome.hosts == records


def test_client_rejects_daemon_without_key() -> None:
    client = ClientSession(KEY, HashType.SHA256)
    impostor = DaemonSession(b"other", HashType.SHA256)
    with pytest.raises(AuthError, match="Invalid response to challenge"):
        client.receive(impostor.receive(client.initial_bytes()))


def test_daemon_rejects_client_without_key() -> None:
    daemon = DaemonSession(KEY, HashType.SHA256)
    impostor = ClientSession(b"other", HashType.SHA256)
    out = daemon.receive(impostor.initial_bytes())
    # the impostor fails our answer; a replaying attacker would instead echo garbage back
    with pytest.raises(AuthError):
        impostor.receive(out)
    with pytest.raises(AuthError, match="failed the challenge"):
        daemon.receive(bytes(64))
    assert not daemon.authenticated


def test_mismatched_algorithms_fail() -> None:
    client = ClientSession(KEY, HashType.SHA1)
    daemon = DaemonSession(KEY, HashType.SHA512)
    with pytest.raises(AuthError):
        client.receive(daemon.receive(client.initial_bytes()))


def test_eof_before_result_is_protocol_error() -> None:
    client = ClientSession(KEY, HashType.NONE)
    with pytest.raises(ProtocolError, match="result byte"):
        client.eof()


def test_daemon_refuses_bytes_after_answer() -> None:
    daemon = DaemonSession(KEY, HashType.SHA256, rng=counter_rng(5))
    client = ClientSession(KEY, HashType.SHA256, rng=counter_rng(9))
    answer = client.receive(daemon.receive(client.initial_bytes()))
    with pytest.raises(ProtocolError):
        daemon.receive(answer + b"x")


@given(st.binary(max_size=300))
def test_daemon_never_authenticates_random_bytes(data: bytes) -> None:
    daemon = DaemonSession(KEY, HashType.SHA256)
    try:
        daemon.receive(data)
    except (AuthError, ProtocolError):
        return
    assert not daemon.authenticated


@given(st.binary(max_size=300))
def test_client_never_accepts_random_bytes(data: bytes) -> None:
    client = ClientSession(KEY, HashType.SHA256)
    try:
        client.receive(data)
    except (AuthError, ProtocolError):
        return
    assert client.outcome.result is None
