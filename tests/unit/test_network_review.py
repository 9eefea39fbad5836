"""Multicast and TCP listeners with per-cluster keys: found in a security review."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path

from guestfence.host.acl import AccessMap
from guestfence.host.clusters import GuestBinding
from guestfence.host.config import MulticastListenerConfig
from guestfence.host.keyring import KeyRing, KeySource
from guestfence.host.listeners.network import MulticastListener
from guestfence.host.server import FenceService
from guestfence.virt.wire import FenceRequest, HashType, HostRecord, Op


class SilentBackend:
    """Has no domain: every multicast request is left to another host."""

    name = "fake"

    def lookup(self, target: str) -> None:
        return None

    def owns(self, target: str) -> bool:
        return False

    def execute(self, op: int, target: str) -> int:
        raise AssertionError("nothing is executed here")

    def host_list(self) -> list[HostRecord]:
        return []

    def close(self) -> None:
        pass


def _key(path: Path) -> bytes:
    key = os.urandom(4096)
    path.write_bytes(key)
    path.chmod(0o600)
    return key


def _block(key: bytes, seqno: int, address: str) -> bytes:
    return FenceRequest(op=Op.OFF, domain="db1", hash_type=HashType.SHA256, flags=0,
                        address=ipaddress.IPv4Address(address), port=1229, seqno=seqno,
                        random=os.urandom(6)).sign(key)


def _two_cluster_listener(tmp_path: Path) -> tuple[MulticastListener, bytes, bytes]:
    a, b = _key(tmp_path / "a.key"), _key(tmp_path / "b.key")
    sources = [KeySource("A", str(tmp_path / "a.key"), str(tmp_path / "a.key.next"),
                         GuestBinding(names=frozenset({"web1"}))),
               KeySource("B", str(tmp_path / "b.key"), str(tmp_path / "b.key.next"),
                         GuestBinding(names=frozenset({"db1"})))]
    svc = FenceService(SilentBackend(), AccessMap([]), b"", HashType.SHA256, HashType.SHA256)
    svc.keyring = KeyRing.load(sources, strict=True)
    config = MulticastListenerConfig("/unused", "sha256", "sha256", "ipv4", "225.0.0.12",
                                     1229, None)
    return MulticastListener(config, svc), a, b


def test_one_cluster_cannot_suppress_anothers_request_by_its_seqno(tmp_path: Path) -> None:
    """seqnos are the client's microseconds (10^6 values): cluster A sending B's likely
    seqnos for B's guest must not make the daemon drop B's real request as a copy."""
    listener, a, b = _two_cluster_listener(tmp_path)
    svc = listener.service

    async def scenario() -> None:
        listener.on_datagram(_block(a, 4242, "10.0.0.66"), "10.0.0.66")  # A: denied later
        listener.on_datagram(_block(b, 4242, "10.0.0.7"), "10.0.0.7")  # B's own request
        listener.on_datagram(_block(b, 4242, "10.0.0.7"), "10.0.0.7")  # B's retransmit
        await svc.drain()

    asyncio.run(scenario())
    assert svc.metrics["duplicates"] == 1, "B's request was taken for a copy of A's"
    assert svc.metrics["not_mine"] == 2


def test_one_peer_cannot_hold_every_tcp_connection(tmp_path: Path) -> None:
    """Connections that have not sent their request block yet (3 s allowed each) are
    capped per peer: one peer opening hundreds of them could otherwise spend the daemon's
    file descriptors (libvirt connections and every other requester need some too)."""
    from guestfence.host.config import TcpListenerConfig
    from guestfence.host.listeners.network import PENDING_PER_PEER, StreamListener

    svc = FenceService(SilentBackend(), AccessMap([]), b"", HashType.SHA256, HashType.SHA256)
    config = TcpListenerConfig("/unused", "sha256", "sha256", "ipv4", "127.0.0.1", 0)
    listener = StreamListener("tcp", config, svc)

    async def scenario() -> tuple[int, int]:
        await listener.start()
        assert listener._server is not None
        port = listener._server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port)
                 for _ in range(PENDING_PER_PEER + 5)]
        async def closed_at_once(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(1), 1.0) == b""
            except TimeoutError:
                return False  # still waiting for its request block

        results = await asyncio.gather(*(closed_at_once(r) for r, _ in conns))
        closed = sum(results)
        for _, writer in conns:
            writer.close()
        await listener.stop()
        return closed, svc.metrics["dropped_busy"]

    closed, dropped = asyncio.run(scenario())
    assert (closed, dropped) == (5, 5)


def test_one_cluster_cannot_pile_up_multicast_requests(tmp_path: Path) -> None:
    """A guest of cluster A holds a valid key and is a known requester (no flood budget
    applies): datagrams with fresh seqnos, each for a guest the host has and a call-back
    address that never answers, would each hold a task, a socket and worker-thread time.
    They are capped per cluster; cluster B's request is still taken."""
    import threading

    from guestfence.host.listeners.network import PENDING_PER_CLUSTER

    release = threading.Event()

    class SlowOwner(SilentBackend):
        def owns(self, target: str) -> bool:
            release.wait(10)  # the daemon is busy with each request a while
            return False

    listener, a, b = _two_cluster_listener(tmp_path)
    svc = listener.service
    svc.backend = SlowOwner()

    async def scenario() -> None:
        for seqno in range(PENDING_PER_CLUSTER + 36):
            listener.on_datagram(_block(a, seqno, "10.0.0.66"), "10.0.0.66")
        listener.on_datagram(_block(b, 1, "10.0.0.7"), "10.0.0.7")
        busy = svc.metrics["dropped_busy"]
        release.set()
        await svc.drain()
        assert busy == 36, busy

    asyncio.run(scenario())
    assert svc.metrics["not_mine"] == PENDING_PER_CLUSTER + 1  # A's first ones and B's


def test_one_cluster_cannot_pile_up_tcp_requests(tmp_path: Path) -> None:
    """Over TCP the same: cluster A's verified connections that stall their challenge are
    capped per cluster (each holds a socket while it waits for a request slot); cluster
    B's request on a fresh connection is served."""
    from guestfence.host.cluster_access import ClusterAccess
    from guestfence.host.clusters import ClusterConfig
    from guestfence.host.config import TcpListenerConfig
    from guestfence.host.listeners.network import PENDING_PER_CLUSTER, StreamListener
    from guestfence.virt.handshake import ClientSession

    class Db1Backend(SilentBackend):
        def lookup(self, target: str) -> object | None:
            from tests.unit.test_cluster_keys import DB1, Info
            return Info("db1", DB1) if target in ("db1", DB1) else None

        def execute(self, op: int, target: str) -> int:
            return 0

    mc, a, b = _two_cluster_listener(tmp_path)
    svc = mc.service
    svc.backend = Db1Backend()
    svc.cluster_access = ClusterAccess([ClusterConfig(
        "B", "/b", "/b.next", GuestBinding(names=frozenset({"db1"})))])
    config = TcpListenerConfig("/unused", "sha256", "sha256", "ipv4", "127.0.0.1", 0)
    listener = StreamListener("tcp", config, svc)

    async def scenario() -> tuple[int, int | None]:
        await listener.start()
        assert listener._server is not None
        port = listener._server.sockets[0].getsockname()[1]
        stalled = []
        for seqno in range(PENDING_PER_CLUSTER + 6):  # A: block sent, challenge never
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_block(a, seqno, "10.0.0.66"))
            stalled.append(writer)
        deadline = asyncio.get_running_loop().time() + 5
        while svc.metrics["dropped_busy"] < 6 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # B
        client = ClientSession(b, HashType.SHA256)
        writer.write(_block(b, 1, "10.0.0.7") + client.initial_bytes())
        writer.write(client.receive(await asyncio.wait_for(reader.readexactly(128), 3)))
        client.receive(await asyncio.wait_for(reader.readexactly(1), 3))
        writer.close()
        for w in stalled:
            w.close()
        await listener.stop()
        return svc.metrics["dropped_busy"], client.outcome.result

    busy, result = asyncio.run(scenario())
    assert (busy, result) == (6, 0)
