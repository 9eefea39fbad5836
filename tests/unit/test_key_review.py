"""Key handling rules found in a security review of per-cluster keys and rotation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from guestfence.errors import AuthError
from guestfence.host.acl import AccessMap
from guestfence.host.keyring import KeyRing, KeySource
from guestfence.host.server import FenceService, Request
from guestfence.virt.handshake import ClientSession
from guestfence.virt.wire import HashType, HostRecord, Op, Result

UUID = "11111111-1111-1111-1111-000000000001"


class Info:
    def __init__(self, name: str, uuid: str) -> None:
        self.name, self.uuid, self.state = name, uuid, 1


class Backend:
    name = "fake"

    def __init__(self) -> None:
        self.executed: list[tuple[int, str]] = []

    def lookup(self, target: str) -> Info | None:
        return Info("vm1", UUID) if target in ("vm1", UUID) else None

    def owns(self, target: str) -> bool:
        return self.lookup(target) is not None

    def execute(self, op: int, target: str) -> int:
        self.executed.append((op, target))
        return Result.SUCCESS

    def host_list(self) -> list[HostRecord]:
        return []

    def close(self) -> None:
        pass


class ClientEnd:
    """The daemon's stream, with a fence_xvm-like client holding ``key`` at the other end."""

    def __init__(self, key: bytes, auth: HashType) -> None:
        self.client = ClientSession(key, auth)
        self.inbox = bytearray(self.client.initial_bytes())
        self.closed = False

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        if len(self.inbox) < n:
            raise asyncio.IncompleteReadError(bytes(self.inbox), n)
        data = bytes(self.inbox[:n])
        del self.inbox[:n]
        return data

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the client hung up")
        try:
            self.inbox += self.client.receive(data)
        except AuthError:
            self.closed = True  # the client does not trust this daemon: it hangs up

    def peer_gone(self) -> bool:
        return self.closed


def _write_key(path: Path, key: bytes) -> str:
    path.write_bytes(key)
    path.chmod(0o600)
    return str(path)


def _serve(svc: FenceService, key: bytes, seqno: int) -> ClientEnd:
    end = ClientEnd(key, HashType.SHA256)
    asyncio.run(svc.serve(Request("tcp", "10.0.0.5", Op.OFF, "vm1", seqno), end, None))
    return end


def test_unsigned_requests_authenticate_with_the_live_key_not_the_startup_key(
        tmp_path: Path) -> None:
    """hash "none", auth "sha256", one key: the challenge/response key must follow the key
    files. A retired key (or one that became insecure) must stop working, and the new one
    must work, without a restart."""
    old, new = os.urandom(4096), os.urandom(4096)
    key_file = _write_key(tmp_path / "fence_xvm.key", old)
    sources = [KeySource(None, key_file, f"{key_file}.next", None)]
    backend = Backend()
    # as guestfenced builds it: the key loaded at start-up, then the ring from the files
    svc = FenceService(backend, AccessMap([]), old, HashType.SHA256, HashType.NONE)
    svc.keyring = KeyRing.load(sources, strict=True)
    _serve(svc, old, 1)
    assert backend.executed == [(Op.OFF, "vm1")]

    # keys rotate + retire: the file now holds the new key; the daemon reloads its ring
    _write_key(tmp_path / "fence_xvm.key", new)
    svc.keyring = KeyRing.load(sources, strict=False)
    _serve(svc, old, 2)
    assert backend.executed == [(Op.OFF, "vm1")], "the retired key still fenced"
    _serve(svc, new, 3)
    assert backend.executed == [(Op.OFF, "vm1"), (Op.OFF, "vm1")], "the new key is refused"

    # the key file becomes world-readable: fail closed, whatever key the client holds
    (tmp_path / "fence_xvm.key").chmod(0o644)
    svc.keyring = KeyRing.load(sources, strict=False)
    for seqno, key in ((4, old), (5, new)):
        _serve(svc, key, seqno)
    assert len(backend.executed) == 2, "a key that failed closed still authenticated"


def test_status_shows_the_keys_the_ring_holds_now(tmp_path: Path) -> None:
    from guestfence.host.status import describe_keys

    key = os.urandom(4096)
    key_file = _write_key(tmp_path / "fence_xvm.key", key)
    sources = [KeySource(None, key_file, f"{key_file}.next", None)]
    svc = FenceService(Backend(), AccessMap([]), key, HashType.SHA256, HashType.SHA256)
    svc.keyring = KeyRing.load(sources, strict=True)
    assert [k["state"] for k in describe_keys(svc)] == ["current"]
    (tmp_path / "fence_xvm.key").chmod(0o644)  # failed closed at the next reload
    svc.keyring = KeyRing.load(sources, strict=False)
    assert describe_keys(svc) == [], "status still shows a key that stopped working"


def test_a_known_requester_keeps_its_place_through_a_rotation(tmp_path: Path) -> None:
    """During a flood the budgets refuse full scans; a known requester must still get
    through when its cluster rotates: with the successor key, and after the retirement."""
    from guestfence.host.clusters import GuestBinding
    from tests.unit.test_cluster_keys import request

    a, b, a2 = os.urandom(4096), os.urandom(4096), os.urandom(4096)
    sources = [KeySource("A", _write_key(tmp_path / "a.key", a), str(tmp_path / "a.key.next"),
                         GuestBinding(names=frozenset({"web1"}))),
               KeySource("B", _write_key(tmp_path / "b.key", b), str(tmp_path / "b.key.next"),
                         GuestBinding(names=frozenset({"db1"})))]
    flood = lambda: False  # noqa: E731 - the budgets are spent
    ring = KeyRing.load(sources, strict=True)
    assert ring.identify(request().sign(a), HashType.SHA256, "10.0.0.5")[1].cluster == "A"

    _write_key(tmp_path / "a.key.next", a2)  # keys rotate: both keys of A verify
    rotating = KeyRing.load(sources, strict=False)
    rotating.adopt_hints(ring)
    found = rotating.identify(request().sign(a2), HashType.SHA256, "10.0.0.5", flood)[1]
    assert found is not None and found.key == a2

    os.replace(tmp_path / "a.key.next", tmp_path / "a.key")  # keys retire
    retired = KeyRing.load(sources, strict=False)
    retired.adopt_hints(rotating)
    found = retired.identify(request().sign(a2), HashType.SHA256, "10.0.0.5", flood)[1]
    assert found is not None and found.key == a2 and found.cluster == "A"

    # a hint is never a permission: another cluster's key still needs the full scan
    import pytest

    from guestfence.host.keyring import ScanRefused

    with pytest.raises(ScanRefused):
        retired.identify(request().sign(b), HashType.SHA256, "10.0.0.5", flood)
    with pytest.raises(AuthError):
        retired.identify(request().sign(a), HashType.SHA256, "10.0.0.5", flood)


def test_a_key_retired_during_the_challenge_does_not_fence(tmp_path: Path) -> None:
    """A request verified just before ``keys retire`` is still in its challenge/response
    (up to 10 s a step): the retired key must not complete it."""
    old, new = os.urandom(4096), os.urandom(4096)
    key_file = _write_key(tmp_path / "fence_xvm.key", old)
    sources = [KeySource(None, key_file, f"{key_file}.next", None)]
    backend = Backend()
    svc = FenceService(backend, AccessMap([]), old, HashType.SHA256, HashType.SHA256)
    svc.keyring = KeyRing.load(sources, strict=True)

    class RetiredMeanwhile(ClientEnd):
        async def write(self, data: bytes) -> None:
            _write_key(tmp_path / "fence_xvm.key", new)
            svc.keyring = KeyRing.load(sources, strict=False)
            await super().write(data)

    for seqno, end in ((1, ClientEnd(old, HashType.SHA256)),
                       (2, RetiredMeanwhile(old, HashType.SHA256))):
        req = Request("tcp", "10.0.0.5", Op.OFF, "vm1", seqno, auth_key=old)
        asyncio.run(svc.serve(req, end, None))
    assert backend.executed == [(Op.OFF, "vm1")], "a key retired mid-request still fenced"
    assert svc.recent.last(1)[0].outcome == "auth-failed"


def test_a_ring_key_repr_shows_the_fingerprint_never_the_key() -> None:
    key = bytes(range(256)) * 16
    ring = KeyRing.single(key, "/etc/cluster/fence_xvm.key")
    text = repr(ring.keys[0]) + str(ring.keys[0])
    assert ring.keys[0].fingerprint in text
    assert repr(key[:32])[2:-1] not in text and key[:32].hex() not in text


def test_another_cluster_cannot_make_a_known_requester_unknown(tmp_path: Path) -> None:
    """Multicast source addresses can be forged, and a guest of cluster A holds a valid
    key: one signed datagram of A's sent "from" B's guest must not replace what the ring
    learnt about B's guest, or a flood (which spends the budgets) then mutes B's guest."""
    import pytest

    from guestfence.host.clusters import GuestBinding
    from guestfence.host.keyring import ScanRefused
    from tests.unit.test_cluster_keys import request

    a, b = os.urandom(4096), os.urandom(4096)
    sources = [KeySource("A", _write_key(tmp_path / "a.key", a), str(tmp_path / "a.key.next"),
                         GuestBinding(names=frozenset({"web1"}))),
               KeySource("B", _write_key(tmp_path / "b.key", b), str(tmp_path / "b.key.next"),
                         GuestBinding(names=frozenset({"db1"})))]
    ring = KeyRing.load(sources, strict=True)
    b_guest = "10.0.0.7"
    assert ring.identify(request().sign(b), HashType.SHA256, b_guest)[1].cluster == "B"
    assert ring.identify(request().sign(a), HashType.SHA256, b_guest)[1].cluster == "A"
    flood = lambda: False  # noqa: E731 - the budgets are spent
    assert ring.identify(request().sign(b), HashType.SHA256, b_guest, flood)[1].cluster == "B"
    assert ring.identify(request().sign(a), HashType.SHA256, b_guest, flood)[1].cluster == "A"
    with pytest.raises(ScanRefused):  # a key neither learnt still waits for the budget
        ring.identify(request().sign(os.urandom(4096)), HashType.SHA256, b_guest, flood)


def test_a_key_file_another_user_owns_fails_closed(tmp_path: Path) -> None:
    """Mode 0600 protects a key only if the daemon's user (or root) owns the file: its
    owner can read it, or replace it with a key of their own."""
    import pytest

    from guestfence.errors import KeyFileError
    from guestfence.host.keys import load_daemon_key

    key_file = _write_key(tmp_path / "fence_xvm.key", os.urandom(4096))
    os.chown(key_file, 65534, 65534)
    with pytest.raises(KeyFileError, match="belongs to uid 65534"):
        load_daemon_key(key_file)
    sources = [KeySource(None, key_file, f"{key_file}.next", None)]
    assert KeyRing.load(sources, strict=False).keys == ()
    os.chown(key_file, 0, 0)
    assert len(KeyRing.load(sources, strict=False).keys) == 1
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):  # and no hang
        load_daemon_key(str(fifo))


def test_configure_warns_about_an_existing_key_another_user_owns(tmp_path: Path) -> None:
    import io

    from guestfence.host.configure_prompt import offer_key

    key_file = _write_key(tmp_path / "fence_xvm.key", os.urandom(4096))
    os.chown(key_file, 65534, 65534)
    out = io.StringIO()
    offer_key(key_file, lambda prompt: None, out, use_defaults=True)
    assert "belongs to uid 65534; guestfenced needs it to belong to root" in out.getvalue()


def test_one_cluster_cannot_take_every_request_slot(tmp_path: Path) -> None:
    """A guest of cluster A holds a valid key: it can start many requests and stall each
    challenge/response (10 s a step). Cluster B's request must still be served at once,
    not wait behind them for one of the daemon's request slots."""
    from guestfence.host.cluster_access import ClusterAccess
    from guestfence.host.clusters import ClusterConfig, GuestBinding
    from guestfence.host.keyring import RingKey
    from guestfence.host.keys import fingerprint

    a, b = os.urandom(4096), os.urandom(4096)
    clusters = [ClusterConfig(name, f"/{name}.key", f"/{name}.key.next",
                              GuestBinding(names=frozenset({"vm1"})))
                for name in ("A", "B")]
    backend = Backend()

    async def scenario() -> bool:
        svc = FenceService(backend, AccessMap([]), b"", HashType.SHA256, HashType.SHA256)
        pairs = zip(clusters, (a, b), strict=True)
        svc.keyring = KeyRing([RingKey(c.name, "current", c.key_file, k, fingerprint(k),
                                       c.binding) for c, k in pairs], clustered=True)
        svc.cluster_access = ClusterAccess(clusters)
        release = asyncio.Event()

        class Stalling(ClientEnd):
            async def read_exactly(self, n: int, timeout: float) -> bytes:
                await release.wait()  # the requester never answers
                raise asyncio.IncompleteReadError(b"", n)

        for seqno in range(200):
            svc.spawn(svc.serve(Request("tcp", "10.0.0.66", Op.OFF, "vm1", seqno,
                                        cluster="A", auth_key=a),
                                Stalling(a, HashType.SHA256), None))
        await asyncio.sleep(0.05)
        end = ClientEnd(b, HashType.SHA256)
        try:
            await asyncio.wait_for(svc.serve(Request("tcp", "10.0.0.7", Op.STATUS, "vm1",
                                                     1000, cluster="B", auth_key=b),
                                             end, None), 2.0)
            served = True
        except TimeoutError:
            served = False
        release.set()
        await svc.drain()
        return served

    assert asyncio.run(scenario()), "cluster B waited behind cluster A's stalled requests"
    assert backend.executed == [(Op.STATUS, UUID)]


def test_another_cluster_cannot_flush_what_the_ring_learnt(tmp_path: Path) -> None:
    """The ring remembers a bounded number of requesters. A guest of cluster A, signing
    valid datagrams from forged source addresses, must only push out A's own entries, not
    make cluster B's requesters unknown (muted during a flood)."""
    from guestfence.host.clusters import GuestBinding
    from guestfence.host.keyring import HINTS_MAX
    from tests.unit.test_cluster_keys import request

    a, b = os.urandom(4096), os.urandom(4096)
    sources = [KeySource("A", _write_key(tmp_path / "a.key", a), str(tmp_path / "a.key.next"),
                         GuestBinding(names=frozenset({"web1"}))),
               KeySource("B", _write_key(tmp_path / "b.key", b), str(tmp_path / "b.key.next"),
                         GuestBinding(names=frozenset({"db1"})))]
    ring = KeyRing.load(sources, strict=True)
    assert ring.identify(request().sign(b), HashType.SHA256, "10.0.0.7")[1].cluster == "B"
    signed_by_a = request().sign(a)
    for n in range(HINTS_MAX + 100):
        ring.identify(signed_by_a, HashType.SHA256, f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    flood = lambda: False  # noqa: E731 - the budgets are spent
    found = ring.identify(request().sign(b), HashType.SHA256, "10.0.0.7", flood)[1]
    assert found is not None and found.cluster == "B"
    assert len(ring._hints) <= HINTS_MAX + 1  # still bounded
