"""The serial / VM-channel listener (``fence_virt -D dev`` or ``fence_virt`` in a guest).

libvirt/qemu binds one UNIX socket per guest serial port (``<serial
type='unix'>``, mode "serial") or VM channel (``<channel type='unix'>``, mode
"vmchannel"); the daemon connects to those of every running domain, follows
domains starting and stopping, and reconnects to a socket that closed while its
domain still runs. Whatever arrives on a socket was written by that guest, so
the requester is the domain's UUID, which the guest cannot forge; there is no
key and no signature on this path.

Requests are 74 bytes starting with the magic "abba"; bytes that cannot start
a request are skipped, and a request not completed within 1 s is dropped, so a
guest sending garbage only resynchronises itself. Each socket is read by its
own task and each request is served as its own task (at most a few per
socket), so a flooding guest cannot delay the others.

Answers carry no seqno: the guest's client takes the next answer on the line as
its own. So once a request arrives on a socket, every older request still in
flight there is superseded (its client gave up): it is not executed if it has
not started yet, and its answer is never written, even if it was executed.

A socket path named by more than one running domain (a clone that kept the
path) cannot tell who writes into it: it is served for none of them, with an
error in the log, until only one running domain names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from guestfence.errors import ProtocolError
from guestfence.host.config import SerialListenerConfig
from guestfence.host.history import RequestKey, request_key
from guestfence.host.libvirt_events import DomainWatcher, RunningDomain
from guestfence.host.server import WRITE_TIMEOUT, FenceService, Request, printable
from guestfence.virt.wire import (
    HOST_LIST_END,
    SERIAL_MAGIC_BYTES,
    SERIAL_REQUEST_SIZE,
    HostRecord,
    Result,
    SerialRequest,
    pack_serial_response,
    parse_serial_request,
)

log = logging.getLogger("guestfenced")

RESCAN_INTERVAL = 10.0  # safety net next to libvirt's lifecycle events
PARTIAL_TIMEOUT = 1.0  # the C daemon's limit for receiving a whole request
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0
STABLE_CONNECTION = 10.0  # a connection that lived this long resets the backoff
IN_FLIGHT_PER_SOCKET = 4
ANSWER_GRACE = 20.0  # how long a closing socket waits for answers still being worked out


class SerialFraming:
    """Answers are magic + result byte; host lists are framed by two such answers."""

    def result(self, code: int) -> bytes:
        return pack_serial_response(code)

    def host_list(self, records: list[HostRecord]) -> bytes:
        return b"".join([pack_serial_response(Result.HOSTLIST), *(r.pack() for r in records),
                         HOST_LIST_END, pack_serial_response(Result.SUCCESS)])


SERIAL_FRAMING = SerialFraming()


class RequestFramer:
    """Cuts a byte stream into serial requests, skipping bytes that cannot start one."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skipped = 0

    @property
    def partial(self) -> bool:
        """A request has begun (magic seen) but is not complete yet."""
        return self.buffer.startswith(SERIAL_MAGIC_BYTES)

    def feed(self, data: bytes) -> list[SerialRequest]:
        self.buffer += data
        found: list[SerialRequest] = []
        while True:
            at = self.buffer.find(SERIAL_MAGIC_BYTES)
            if at < 0:  # keep a tail that may be the beginning of a magic
                keep = next((n for n in (3, 2, 1)
                             if self.buffer.endswith(SERIAL_MAGIC_BYTES[:n])), 0)
                self._skip(len(self.buffer) - keep)
                return found
            self._skip(at)
            if len(self.buffer) < SERIAL_REQUEST_SIZE:
                return found
            request = _well_formed(bytes(self.buffer[:SERIAL_REQUEST_SIZE]))
            if request is None:  # "abba" in garbage; one byte on, as magics may overlap
                self._skip(1)
                continue
            found.append(request)
            del self.buffer[:SERIAL_REQUEST_SIZE]

    def drop_partial(self) -> list[SerialRequest]:
        """The rest of a request did not come: forget its magic and rescan what is left."""
        self._skip(1)
        return self.feed(b"")

    def _skip(self, n: int) -> None:
        if n > 0:
            del self.buffer[:n]
            self.skipped += n


def _well_formed(raw: bytes) -> SerialRequest | None:
    """The request in ``raw`` if it looks like one fence_virt wrote: flags and the domain
    field after its NUL are zero. This tells a real request from a magic in garbage, or
    from a fragment a new request was appended to (the C daemon checks nothing)."""
    try:
        request = parse_serial_request(raw)
    except ProtocolError:
        return None
    domain_field = raw[6:70]
    if request.flags or any(domain_field[domain_field.index(0):]):
        return None
    return request


class _SerialStream:
    """The StreamIO of one socket connection, shared by the requests that came on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        raise ProtocolError("the serial transport has no authentication exchange")

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the serial socket was closed")
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    def peer_gone(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()


class _Superseded(ConnectionError):
    """The answer of a superseded request, which must not be written."""


class _RequestStream:
    """One request's view of its socket. Once superseded, its answer is withheld and it
    counts as abandoned (``peer_gone``), so FenceService does not execute it if it has
    not started yet."""

    def __init__(self, stream: _SerialStream, request: Request) -> None:
        self.stream = stream
        self.request = request
        self.superseded_by: int | None = None  # seqno of the request that superseded it

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        return await self.stream.read_exactly(n, timeout)

    async def write(self, data: bytes) -> None:
        # No await before the socket write: nothing can supersede in between.
        if self.superseded_by is not None:
            raise _Superseded(f"superseded by seqno {self.superseded_by}; answer withheld")
        await self.stream.write(data)

    def peer_gone(self) -> bool:
        return self.superseded_by is not None or self.stream.peer_gone()


class SerialListener:
    kind = "serial"

    def __init__(self, config: SerialListenerConfig, service: FenceService) -> None:
        self.config = config
        self.service = service
        self.device = "serial" if config.mode == "serial" else "channel"
        self._channels: dict[str, tuple[RunningDomain, asyncio.Task[None]]] = {}
        self._conflicts: dict[str, frozenset[str]] = {}  # path -> UUIDs of the claimants
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._watcher: DomainWatcher | None = None

    async def start(self) -> None:
        self._watcher = DomainWatcher(self.config.uri, asyncio.get_running_loop(), self._wake.set)
        try:
            await asyncio.to_thread(self._watcher.open)
            await self._rescan()
        except OSError:
            await self.stop()  # main may call start() again (-w)
            raise
        self._track(asyncio.create_task(self._rescan_loop()))
        cfg = self.config
        log.info("serial listener (mode %s) on %s%s: %d socket(s)", cfg.mode,
                 self._watcher.where, f", sockets in {cfg.path}" if cfg.path else "",
                 len(self._channels))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._channels.clear()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.close)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ domains

    async def _rescan_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RESCAN_INTERVAL)
            self._wake.clear()
            try:
                await self._rescan()
            except OSError as e:
                log.error("serial listener: %s; keeping %d socket(s), retrying", e,
                          len(self._channels))

    async def _rescan(self) -> None:
        assert self._watcher is not None
        claims: dict[str, dict[str, RunningDomain]] = {}  # path -> UUID -> domain
        for dom in await asyncio.to_thread(self._watcher.running_domains):
            try:
                paths = dom.unix_sockets(self.device, self.config.path)
            except ET.ParseError as e:
                log.error("serial listener: cannot parse the XML of domain %s: %s", dom.name, e)
                continue
            for path in paths:
                claims.setdefault(path, {}).setdefault(dom.uuid.lower(), dom)
        wanted = {path: next(iter(doms.values()))
                  for path, doms in claims.items() if len(doms) == 1}
        self._report_conflicts({path: list(doms.values())
                                for path, doms in claims.items() if len(doms) > 1})
        for path, (dom, task) in list(self._channels.items()):
            if path in self._conflicts:
                log.info("serial: leaving %s of domain %s: another domain names it", path,
                         dom.name)
            elif path not in wanted or wanted[path].uuid != dom.uuid:
                log.info("serial: domain %s (%s) stopped; leaving %s", dom.name, dom.uuid, path)
            else:
                continue
            del self._channels[path]
            task.cancel()
        for path, dom in wanted.items():
            if path not in self._channels:
                task = asyncio.create_task(self._channel(path, dom))
                self._track(task)
                self._channels[path] = (dom, task)

    def _report_conflicts(self, conflicts: dict[str, list[RunningDomain]]) -> None:
        """Log each path claimed by several running domains when the claim starts or changes,
        and when it ends; such a path is served for none of them, as the requester (whose
        UUID the ACL, the history and the log rely on) is unknown."""
        current = {path: frozenset(d.uuid.lower() for d in doms)
                   for path, doms in conflicts.items()}
        for path, doms in conflicts.items():
            if self._conflicts.get(path) != current[path]:
                log.error("serial: %s is named by %d running domains (%s); serving it for "
                          "none of them until only one does", path, len(doms),
                          ", ".join(f"{d.name} ({d.uuid})" for d in doms))
        for path in self._conflicts.keys() - current.keys():
            log.info("serial: %s is no longer named by several running domains", path)
        self._conflicts = current

    # ------------------------------------------------------------------ sockets

    async def _channel(self, path: str, dom: RunningDomain) -> None:
        """Stay connected to one socket for as long as its domain runs."""
        delay = RECONNECT_MIN
        failures = 0
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(path)
            except OSError as e:
                failures += 1
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "serial: cannot connect to %s of domain %s: %s; retrying", path,
                        dom.name, e.strerror or e)
            else:
                failures = 0
                log.info("serial: connected to %s of domain %s (%s)", path, dom.name, dom.uuid)
                opened = time.monotonic()
                await self._connection(dom, reader, writer)
                if time.monotonic() - opened >= STABLE_CONNECTION:
                    delay = RECONNECT_MIN
                log.warning("serial: %s of domain %s was closed; reconnecting", path, dom.name)
                self._wake.set()  # perhaps the domain stopped: let a rescan decide
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _connection(
        self, dom: RunningDomain, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = _SerialStream(reader, writer)
        framer = RequestFramer()
        in_flight: dict[asyncio.Task[None], _RequestStream] = {}  # in arrival order
        in_garbage = False
        try:
            while True:
                skipped = framer.skipped
                try:
                    data = await asyncio.wait_for(
                        reader.read(65536), PARTIAL_TIMEOUT if framer.partial else None)
                except TimeoutError:
                    requests = framer.drop_partial()
                except OSError:
                    return
                else:
                    if not data:
                        return
                    requests = framer.feed(data)
                if framer.skipped > skipped:
                    self.service.metrics["serial_bytes_skipped"] += framer.skipped - skipped
                    if not in_garbage:  # one warning per run of garbage
                        log.warning("serial: domain %s sends bytes that are not a request; "
                                    "skipping them", dom.name)
                    in_garbage = True
                for sreq in requests:
                    in_garbage = False
                    key = self._begin(dom, sreq)
                    if key is None:
                        continue
                    try:
                        # before any await: no older answer may reach this request's client
                        self._supersede(dom, in_flight.values(), sreq.seqno)
                        while len(in_flight) >= IN_FLIGHT_PER_SOCKET:  # back-pressure, this guest
                            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    except BaseException:
                        self.service.history.finish(key, time.monotonic(), served=False)
                        raise
                    request = Request(self.kind, dom.uuid, sreq.op, sreq.domain, sreq.seqno)
                    per_request = _RequestStream(stream, request)
                    task = self._dispatch(per_request, key)
                    in_flight[task] = per_request
                    task.add_done_callback(lambda done: in_flight.pop(done, None))
        finally:
            if in_flight:
                await asyncio.wait(in_flight, timeout=ANSWER_GRACE)
            writer.close()

    def _begin(self, dom: RunningDomain, sreq: SerialRequest) -> RequestKey | None:
        """The request's history key, now in flight; None for a duplicate, which is dropped
        (and supersedes nothing: its original's client still waits for the answer)."""
        svc = self.service
        # The C key is (op, seqno, domain); adding the requester keeps one guest from
        # suppressing another guest's requests by sending their likely seqnos first.
        key = request_key(sreq.op, sreq.seqno, f"{dom.uuid}/{sreq.domain}")
        if svc.history.begin(key, time.monotonic()):
            return key
        svc.metrics["duplicates"] += 1
        log.debug("duplicate of seqno %d for %s from domain %s dropped", sreq.seqno,
                  printable(sreq.domain), dom.name)
        return None

    def _supersede(
        self, dom: RunningDomain, older: Iterable[_RequestStream], seqno: int
    ) -> None:
        """A request arrived: the older ones still in flight on its socket lose their answer."""
        for pending in older:
            if pending.superseded_by is not None:
                continue
            pending.superseded_by = seqno
            self.service.metrics["serial_superseded"] += 1
            req = pending.request
            log.warning("serial: request listener=%s requester=%s target=%s action=%s seqno=%d "
                        "outcome=superseded detail='by seqno %d from domain %s; not executed "
                        "if not started, answer withheld'", req.listener, req.requester,
                        printable(req.target) or "-", req.action, req.seqno, seqno, dom.name)

    def _dispatch(self, stream: _RequestStream, key: RequestKey) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self.service.serve(
            stream.request, stream, key, authenticate=False, framing=SERIAL_FRAMING))
        self.service.spawn(task)
        return task
