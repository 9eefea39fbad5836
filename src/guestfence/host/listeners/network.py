"""Network listeners: multicast (fence_xvm), TCP and vsock (fence_virt -T / -S).

Multicast: a signed 176-byte datagram arrives; if it verifies, is not a
duplicate and names a domain this host really has, the daemon connects back
to the address and port inside the block and runs the stream leg there. A
daemon stays silent for domains it does not have, so with several hosts on
one group only the owner answers.

TCP and vsock: the client connects and sends the block first; then the same
stream leg on the same connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from guestfence.errors import AuthError, ConfigError, ProtocolError
from guestfence.host.config import (
    MulticastListenerConfig,
    TcpListenerConfig,
    VsockListenerConfig,
)
from guestfence.host.history import RequestKey, request_key
from guestfence.host.keyring import FailureLimiter, RingKey, ScanBudget, ScanRefused
from guestfence.host.server import OWNED_OPS, AsyncioStream, FenceService, Request, printable
from guestfence.virt.wire import REQUEST_SIZE, FenceRequest

log = logging.getLogger("guestfenced")

CONNECT_BACK_TIMEOUT = 5.0
# A call-back later than this after the datagram arrived may reach a different client
# that happens to listen on the same ephemeral port now: drop the request instead.
MAX_CALLBACK_DELAY = 10.0
REQUEST_READ_TIMEOUT = 3.0
# TCP/vsock connections still waiting for their request block (REQUEST_READ_TIMEOUT each):
# bounded per peer and in all, so that silent connections cannot spend the daemon's file
# descriptors (a fence_virt client has one or two requests open at a time)
PENDING_PER_PEER = 16
PENDING_MAX = 256


def _verify(service: FenceService, block: bytes, requester: str,
            may_scan: Callable[[], bool] | None = None
            ) -> tuple[FenceRequest, RingKey | None] | None:
    """The request and the key that signed it (which names the guest cluster)."""
    try:
        return service.keyring.identify(block, service.min_hash, hint=requester,
                                        may_scan=may_scan)
    except ScanRefused as e:
        service.drop("rate-limited", requester, str(e))
    except AuthError as e:
        service.drop("auth", requester, str(e))
    except ProtocolError as e:
        service.drop("malformed", requester, str(e))
    return None


def _history_key(req: FenceRequest, ring_key: RingKey | None) -> RequestKey:
    """The C key (op, seqno, domain), plus the guest cluster whose key verified the
    request: seqnos are the client's microseconds, so one cluster could otherwise send
    another cluster's likely seqnos first and have its genuine request dropped as a copy.
    Copies of one request are signed with one key, so they still share a key."""
    cluster = ring_key.cluster if ring_key is not None else None
    return request_key(req.op, req.seqno,
                       req.domain if cluster is None else f"{cluster}/{req.domain}")


def _key_fields(ring_key: RingKey | None) -> dict[str, Any]:
    """Request fields naming the verifying key's cluster; that key also runs the
    challenge/response."""
    if ring_key is None:
        return {}
    return {"cluster": ring_key.cluster, "auth_key": ring_key.key}


# ------------------------------------------------------------------------ multicast


# A flood of forged datagrams must not fill the socket buffer, or the kernel drops a
# genuine request with them (its client retransmits only after 2 s). So the listener
# reads up to DATAGRAMS_PER_WAKEUP datagrams per readiness event (asyncio's datagram
# transport takes one per loop iteration, several times the cost), and asks for a
# receive buffer that absorbs a pause of the event loop of about a second at 10,000
# datagrams/s (each queued 176-byte datagram costs about 1 KiB of buffer).
DATAGRAMS_PER_WAKEUP = 256
RECEIVE_BUFFER = 16 * 1024 * 1024
# Verified requests being handled (ownership check, call-back, exchange) per guest cluster:
# a cluster's guests hold a valid key and are known requesters (no flood budget applies),
# so without a cap they could pile up tasks, sockets and worker-thread time that the
# other clusters' requests then wait for. One fencing round of a cluster needs a handful.
PENDING_PER_CLUSTER = 64


def _cluster_busy(service: FenceService, handling: Counter[str | None], cluster: str | None,
                  key: RequestKey, requester: str) -> bool:
    """Whether ``cluster`` already has PENDING_PER_CLUSTER verified requests being handled;
    if so the request is dropped (and its history entry closed, so a retransmit may come
    in)."""
    if handling[cluster] < PENDING_PER_CLUSTER:
        return False
    service.history.finish(key, time.monotonic(), served=False)
    service.drop("busy", requester, f"{handling[cluster]} requests of "
                 f"{cluster or 'this key'} are being handled")
    return True


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    try:  # root may exceed net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class MulticastListener:
    kind = "multicast"

    def __init__(self, config: MulticastListenerConfig, service: FenceService) -> None:
        self.config = config
        self.service = service
        self._sock: socket.socket | None = None
        # bound what a flood of forged datagrams costs: per source, and all together
        self._failures = FailureLimiter()
        self._scan_budget = ScanBudget()
        self._handling: Counter[str | None] = Counter()  # cluster -> requests being handled

    async def start(self) -> None:
        sock = self._make_socket()
        _enlarge_receive_buffer(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_datagrams)
        self._sock = sock
        log.info("multicast listener on %s port %d (interface %s, hash>=%s, auth %s)",
                 self.config.address, self.config.port, self.config.interface or "any",
                 self.config.hash, self.config.auth)

    def _make_socket(self) -> socket.socket:
        cfg = self.config
        ifindex = 0
        if cfg.interface:
            try:
                ifindex = socket.if_nametoindex(cfg.interface)
            except OSError:
                raise ConfigError(
                    f"listeners/multicast: interface {cfg.interface!r} does not exist "
                    f"(known: {', '.join(n for _, n in socket.if_nameindex())})"
                ) from None
        if cfg.family == "ipv6":
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", cfg.port))
            group = socket.inet_pton(socket.AF_INET6, cfg.address)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                            group + struct.pack("@I", ifindex))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", cfg.port))
            mreqn = socket.inet_aton(cfg.address) + socket.inet_aton("0.0.0.0") + \
                struct.pack("@i", ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        sock.setblocking(False)
        return sock

    def _read_datagrams(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                data, addr = sock.recvfrom(REQUEST_SIZE + 1)  # one more: tells a long one
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("multicast socket error: %s", e)
                return
            self.on_datagram(data, str(addr[0]))

    def on_datagram(self, data: bytes, source: str) -> None:
        svc = self.service
        svc.metrics["datagrams"] += 1
        if len(data) != REQUEST_SIZE:
            svc.drop("malformed", source, f"{len(data)} bytes, expected {REQUEST_SIZE}")
            return
        now = time.monotonic()
        verified = _verify(svc, data, source, lambda: self._failures.allows(source, now)
                           and self._scan_budget.take(now))
        if verified is None:
            self._failures.failed(source, now)
            return
        req, ring_key = verified
        if req.address is None or req.port == 0:
            svc.drop("malformed", source, "no call-back address in a multicast request")
            return
        key = _history_key(req, ring_key)
        if not svc.history.begin(key, time.monotonic()):
            svc.metrics["duplicates"] += 1
            log.debug("duplicate of seqno %d from %s dropped", req.seqno, source)
            return
        cluster = ring_key.cluster if ring_key is not None else None
        if _cluster_busy(svc, self._handling, cluster, key, source):
            return
        self._handling[cluster] += 1
        svc.spawn(self._counted(cluster, self._handle(req, ring_key, key, time.monotonic())))

    async def _counted(self, cluster: str | None, handling: Awaitable[None]) -> None:
        try:
            await handling
        finally:
            self._handling[cluster] -= 1

    async def _handle(self, req: FenceRequest, ring_key: RingKey | None,
                      key: RequestKey, received: float) -> None:
        svc = self.service
        requester = str(req.address)
        target = printable(req.domain)
        lock_key = await svc.owned_key(req.domain) if req.op in OWNED_OPS else None
        if req.op in OWNED_OPS and lock_key is None:
            svc.history.finish(key, time.monotonic(), served=False)
            svc.metrics["not_mine"] += 1
            log.debug("request for %s from %s: not a domain of this host; staying silent",
                      target, requester)
            return
        request = Request(self.kind, requester, req.op, req.domain, req.seqno,
                          lock_key=lock_key, **_key_fields(ring_key))
        assert req.address is not None
        if time.monotonic() - received > MAX_CALLBACK_DELAY:
            svc.history.finish(key, time.monotonic(), served=False)
            svc.drop("stale", requester, f"{time.monotonic() - received:.1f} s old")
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(str(req.address), req.port), CONNECT_BACK_TIMEOUT
            )
        except (OSError, TimeoutError) as e:
            svc.history.finish(key, time.monotonic(), served=False)
            svc.metrics["callback_failed"] += 1
            log.warning(
                "request listener=multicast requester=%s target=%s action=%s seqno=%d "
                "outcome=callback-failed detail=%r",
                requester, target, request.action, req.seqno, str(e) or "timeout",
            )
            return
        stream = AsyncioStream(reader, writer)
        try:
            await svc.serve(request, stream, key)
        finally:
            await stream.close()

    async def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


# ------------------------------------------------------------------------ tcp / vsock


class StreamListener:
    """TCP or vsock: the request block arrives on the accepted connection."""

    def __init__(
        self,
        kind: str,
        config: TcpListenerConfig | VsockListenerConfig,
        service: FenceService,
    ) -> None:
        self.kind = kind
        self.config = config
        self.service = service
        self._server: asyncio.base_events.Server | None = None
        self._pending: Counter[str] = Counter()  # peer -> connections without a block yet
        self._handling: Counter[str | None] = Counter()  # cluster -> verified, being served

    async def start(self) -> None:
        cfg = self.config
        if isinstance(cfg, TcpListenerConfig):
            self._server = await asyncio.start_server(
                self._on_connection, cfg.address, cfg.port, reuse_address=True, backlog=128
            )
            where = f"{cfg.address} port {cfg.port}"
        else:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.bind((socket.VMADDR_CID_ANY, cfg.port))
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._on_connection, sock=sock)
            where = f"vsock port {cfg.port}"
        log.info("%s listener on %s (hash>=%s, auth %s)", self.kind, where, cfg.hash, cfg.auth)

    def _requester(self, writer: asyncio.StreamWriter) -> str:
        peer = writer.get_extra_info("peername")
        if self.kind == "vsock":
            return str(peer[0]) if peer else "?"  # the CID, assigned by the hypervisor
        host = str(peer[0]) if peer else "?"
        try:
            addr = ipaddress.ip_address(host)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                return str(addr.ipv4_mapped)
        except ValueError:
            pass
        return host

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        svc = self.service
        stream = AsyncioStream(reader, writer)
        requester = self._requester(writer)
        try:
            if (self._pending[requester] >= PENDING_PER_PEER
                    or self._pending.total() >= PENDING_MAX):
                svc.drop("busy", requester, f"{self._pending[requester]} connection(s) of "
                         f"this peer, {self._pending.total()} in all, wait for their request")
                return
            self._pending[requester] += 1
            try:
                block = await asyncio.wait_for(reader.readexactly(REQUEST_SIZE),
                                               REQUEST_READ_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, OSError):
                svc.drop("incomplete", requester, "no complete request block")
                return
            finally:
                self._pending[requester] -= 1
                if self._pending[requester] <= 0:
                    del self._pending[requester]
            verified = _verify(svc, block, requester)
            if verified is None:
                return
            req, ring_key = verified
            key = _history_key(req, ring_key)
            if not svc.history.begin(key, time.monotonic()):
                svc.metrics["duplicates"] += 1
                return
            cluster = ring_key.cluster if ring_key is not None else None
            if _cluster_busy(svc, self._handling, cluster, key, requester):
                return
            request = Request(self.kind, requester, req.op, req.domain, req.seqno,
                              **_key_fields(ring_key))
            self._handling[cluster] += 1
            try:
                await svc.serve(request, stream, key)
            finally:
                self._handling[cluster] -= 1
        finally:
            await stream.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
