"""Blocking transports of the guest-side clients, each bounded by a deadline.

The protocol logic lives in ``guestfence.virt``; these functions only move
bytes between a socket (or serial device) and a ClientSession. Every wait is
bounded by an absolute ``deadline`` taken from ``time.monotonic()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import time
from collections.abc import Iterator

from guestfence.errors import TransportError
from guestfence.record import Record
from guestfence.virt.handshake import ClientOutcome, ClientSession
from guestfence.virt.wire import (
    HOST_RECORD_SIZE,
    FenceRequest,
    HashType,
    Result,
    SerialRequest,
    find_serial_response,
    parse_host_record,
)

MULTICAST_TTL = 2


class Logger:
    """Debug messages on stderr at or below the chosen level."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, level: int, message: str) -> None:
        if level <= self.level:
            os.write(2, f"{message}\n".encode(errors="replace"))


class TimedOut(TransportError):
    """No answer before the deadline."""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimedOut("Timed out waiting for response")
    return left


def fresh_seqno() -> int:
    # The C clients use the microseconds of the clock (0..999999); any u32 is
    # valid on the wire, and a random one cannot collide between parallel calls.
    return int.from_bytes(os.urandom(4), "little")


def converse(sock: socket.socket, session: ClientSession, deadline: float) -> ClientOutcome:
    """Run the stream leg on a connected socket until the result (and host list) is in."""
    try:
        sock.settimeout(_remaining(deadline))
        sock.sendall(session.initial_bytes())
        while not session.done:
            sock.settimeout(_remaining(deadline))
            data = sock.recv(65536)
            if not data:
                session.eof()
            reply = session.receive(data)
            if reply:
                sock.sendall(reply)
    except TimeoutError as e:
        raise TimedOut("Timed out waiting for response") from e
    except OSError as e:
        raise TransportError(f"connection to fence_virtd failed: {e.strerror or e}") from e
    return session.outcome


# ------------------------------------------------------------------------ multicast


class MulticastTarget(Record):
    __slots__ = ("family", "group", "port")
    group: str
    port: int
    family: int  # socket.AF_INET or socket.AF_INET6

    def __init__(self, group: str, port: int, family: int) -> None:
        self._set(group=group, port=port, family=family)


def _send_datagram(
    target: MulticastTarget, source: ipaddress.IPv4Address | ipaddress.IPv6Address, block: bytes
) -> None:
    with socket.socket(target.family, socket.SOCK_DGRAM) as s:
        if target.family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, source.packed)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, MULTICAST_TTL)
        with contextlib.suppress(OSError):  # an interface that cannot reach the group
            s.sendto(block, (target.group, target.port))


def multicast_exchange(
    target: MulticastTarget,
    request: FenceRequest,
    key: bytes,
    auth: HashType,
    retrans: float,
    timeout: float,
    log: Logger,
) -> ClientOutcome:
    """fence_xvm's exchange: datagrams out, the daemon calls us back over TCP.

    Unlike the C client we listen on an ephemeral port chosen per invocation,
    so parallel clients never collide and a stale call-back meant for an
    earlier client cannot reach us. Waiting for the call-back is bounded by
    ``timeout``; the exchange after it by another ``timeout``.
    """
    from guestfence.agents.localaddr import local_addresses

    sources = local_addresses(target.family)
    if not sources:
        raise TransportError("no local address to send the multicast request from")
    with socket.socket(target.family, socket.SOCK_STREAM) as listener:
        listener.bind(("::" if target.family == socket.AF_INET6 else "0.0.0.0", 0))
        listener.listen(16)
        callback_port = listener.getsockname()[1]
        seqno = fresh_seqno()
        started = time.monotonic()
        callback_deadline = started + timeout
        conn: socket.socket | None = None
        rounds = 0
        while conn is None:
            rounds += 1
            for source in sources:
                req = FenceRequest(
                    op=request.op,
                    domain=request.domain,
                    hash_type=request.hash_type,
                    flags=request.flags,
                    address=source,
                    port=callback_port,
                    seqno=seqno,
                ).with_fresh_random()
                _send_datagram(target, source, req.sign(key))
            log(2, f"round {rounds}: sent to {target.group}:{target.port} from "
                   f"{len(sources)} address(es); call-back port {callback_port}")
            wait = min(retrans, callback_deadline - time.monotonic())
            if wait <= 0:
                break
            ready, _, _ = select.select([listener], [], [], wait)
            if ready:
                conn, peer = listener.accept()
                log(1, f"call-back from {peer[0]} after {time.monotonic() - started:.3f}s")
        if conn is None:
            raise TimedOut("Timed out waiting for response")
    with conn:
        return converse(conn, ClientSession(key, auth), time.monotonic() + timeout)


# ------------------------------------------------------------------------ stream


def stream_exchange(
    sock_factory: Iterator[socket.socket],
    block: bytes,
    key: bytes,
    auth: HashType,
    timeout: float,
) -> ClientOutcome:
    """TCP or vsock: connect, send the block, then the stream leg."""
    deadline = time.monotonic() + timeout
    sock = next(sock_factory)
    with sock:
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(block)
        except OSError as e:
            raise TransportError(f"cannot send the request: {e.strerror or e}") from e
        return converse(sock, ClientSession(key, auth), deadline)


def _connect(family: int, address: tuple[str | int, int], where: str,
             connect_timeout: float) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(connect_timeout)
    try:
        sock.connect(address)
    except OSError as e:
        sock.close()
        raise TransportError(
            f"Unable to connect to fence_virtd {where} {e.strerror or e}"
        ) from e
    yield sock


def tcp_connect(address: str, port: int, connect_timeout: float = 3.0) -> Iterator[socket.socket]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise TransportError(
            f"Invalid address: '{address}' (a numeric IP address is needed)"
        ) from None
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return _connect(family, (address, port), f"host {address}:{port}", connect_timeout)


def vsock_connect(cid: int, port: int, connect_timeout: float = 3.0) -> Iterator[socket.socket]:
    return _connect(socket.AF_VSOCK, (cid, port), f"on vsock CID {cid} port {port}:",
                    connect_timeout)


# ------------------------------------------------------------------------ serial


def serial_exchange(fd_or_sock: int | socket.socket, request: SerialRequest,
                    timeout: float) -> ClientOutcome:
    """74-byte request, then scan for 'abba' + result; host records after a 253."""
    deadline = time.monotonic() + timeout
    fd = fd_or_sock.fileno() if isinstance(fd_or_sock, socket.socket) else fd_or_sock
    _drain(fd)  # bytes already on the line answer someone else's request, never ours
    _write_all(fd, request.pack(), deadline)
    buffer = b""
    outcome = ClientOutcome()
    reading_hosts = False
    while True:
        if reading_hosts:
            if len(buffer) >= HOST_RECORD_SIZE:
                record = parse_host_record(buffer[:HOST_RECORD_SIZE])
                buffer = buffer[HOST_RECORD_SIZE:]
                if record is None:
                    # the daemon ends a list with one more abba+result: take it off the
                    # line (briefly) so the next client does not read it as its answer
                    _consume_trailer(fd, buffer, min(deadline, time.monotonic() + 1.0))
                    return outcome
                outcome.hosts.append(record)
                continue
        else:
            code, used = find_serial_response(buffer)
            buffer = buffer[used:]
            if code is not None:
                outcome.result = code
                if code != Result.HOSTLIST:
                    return outcome
                reading_hosts = True
                continue
        ready, _, _ = select.select([fd], [], [], _remaining(deadline))
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise TransportError("serial channel closed before the answer")
        buffer += chunk


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        try:
            if not os.read(fd, 4096):
                return
        except BlockingIOError:
            return


def _consume_trailer(fd: int, buffer: bytes, deadline: float) -> None:
    while find_serial_response(buffer)[0] is None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buffer += chunk


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    while data:
        _, ready, _ = select.select([], [fd], [], _remaining(deadline))
        if ready:
            data = data[os.write(fd, data):]


SERIAL_SPEEDS = (2400, 9600, 19200, 38400, 57600, 115200)
