"""Serving fencing requests: authentication, access check, backend call, answer, log line.

Every listener hands requests to one FenceService. Each request is its own
asyncio task, so a slow, silent or unreachable requester never delays
another one (the C daemon serves one request at a time and stalls 5-10 s per
such requester). Backend calls run in worker threads; operations on the same
domain are serialised so that an ``off`` and an ``on`` cannot interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from guestfence.errors import AuthError, GuestfenceError, ProtocolError
from guestfence.host.acl import AccessMap
from guestfence.host.cluster_access import ClusterAccess
from guestfence.host.history import History, RequestKey
from guestfence.host.keyedlock import KeyedLocks
from guestfence.host.keyring import KeyRing
from guestfence.host.logformat import log_fields
from guestfence.host.metrics import ServiceMetrics
from guestfence.host.recent import ActiveRequests, RecentRequests, RequestRecord, now
from guestfence.virt.handshake import DaemonSession
from guestfence.virt.wire import HashType, HostRecord, Op, Result

log = logging.getLogger("guestfenced")

AUTH_STEP_TIMEOUT = 10.0  # the C daemon's per-read limit during challenge/response
WRITE_TIMEOUT = 10.0
MAX_IN_FLIGHT = 64
# a guest cluster may hold at most this many of those slots: one cluster's guests (they
# hold a valid key) stalling their challenge/responses must not queue another's requests
MAX_IN_FLIGHT_PER_CLUSTER = 16
DROP_LOG_WINDOW = 10.0  # seconds
DROP_LOG_BURST = 20  # drop warnings per window before they are only counted
OWNED_OPS = (Op.OFF, Op.ON, Op.REBOOT, Op.STATUS)
ACL_OPS = (Op.OFF, Op.ON, Op.REBOOT, Op.STATUS)
RESULT_NAMES = {0: "success", 1: "fail", 2: "off", 3: "denied", 253: "hostlist"}


class Backend(Protocol):
    """What the daemon needs from a hypervisor backend (blocking calls)."""

    name: str

    def lookup(self, target: str) -> object | None: ...
    def owns(self, target: str) -> bool: ...
    def execute(self, op: int, target: str) -> int: ...
    def host_list(self) -> list[HostRecord]: ...
    def close(self) -> None: ...


@dataclass
class Request:
    """One request as seen by the daemon, for the log line and the metrics."""

    listener: str
    requester: str
    op: int
    target: str
    seqno: int
    started: float = field(default_factory=time.monotonic)
    lock_key: str | None = None  # the domain's UUID, when the listener resolved it already
    # the guest cluster whose key verified the request (clusters block; None: no clusters
    # block, or not identified yet), and that key for the challenge/response
    cluster: str | None = None
    auth_key: bytes | None = field(default=None, repr=False)

    @property
    def action(self) -> str:
        try:
            return Op(self.op).name.lower()
        except ValueError:
            return f"op{self.op}"


class Framing(Protocol):
    """How answers are framed on a transport."""

    def result(self, code: int) -> bytes: ...
    def host_list(self, records: list[HostRecord]) -> bytes: ...


class NetworkFraming:
    """Multicast call-back, TCP and vsock: a bare result byte; 253 + records for lists."""

    def result(self, code: int) -> bytes:
        return DaemonSession.result_bytes(code)

    def host_list(self, records: list[HostRecord]) -> bytes:
        return DaemonSession.host_list_bytes(records)


NETWORK_FRAMING = NetworkFraming()


def printable(text: str) -> str:
    """Untrusted strings (domain names from the network) made safe for one log line."""
    return text.encode("unicode_escape").decode("ascii")


class StreamIO(Protocol):
    async def read_exactly(self, n: int, timeout: float) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def peer_gone(self) -> bool: ...


class AsyncioStream:
    """StreamIO over an asyncio reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    def peer_gone(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


class FenceService:
    def __init__(
        self,
        backend: Backend,
        access: AccessMap,
        key: bytes,
        auth: HashType,
        min_hash: HashType,
    ) -> None:
        self.backend = backend
        self.access = access
        self.auth = auth
        self.min_hash = min_hash
        # per-cluster keys (host/keyring.py); the daemon swaps in a new ring on key changes,
        # so the start-up ``key`` is kept only inside this first ring (it may be retired)
        self.keyring = KeyRing.single(key)
        self.cluster_access = ClusterAccess()
        self.history = History()
        self.metrics: Counter[str] = Counter()
        # for the admin view and the Prometheus endpoint (host/recent.py, host/metrics.py)
        self.recent = RecentRequests()
        self.active = ActiveRequests()
        self.telemetry = ServiceMetrics(self)
        self._locks = KeyedLocks()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._cluster_slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._drop_window_start = 0.0
        self._drops_logged = 0
        self._drops_suppressed = 0

    # ---------------------------------------------------------------- bookkeeping

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a request on its own; keep a reference so it is not garbage-collected."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def in_flight(self) -> int:
        return len(self._tasks)

    def drop(self, reason: str, requester: str, detail: str = "") -> None:
        """A datagram or connection refused before any exchange: counted and logged.

        Log lines are rate-limited so that a flood of bad datagrams cannot flood
        the log; the count of suppressed lines is reported when logging resumes.
        """
        self.metrics[f"dropped_{reason}"] += 1
        now = time.monotonic()
        if now - self._drop_window_start >= DROP_LOG_WINDOW:
            if self._drops_suppressed:
                log.warning("%d more dropped request(s) not logged in the last %.0f s",
                            self._drops_suppressed, DROP_LOG_WINDOW)
            self._drop_window_start, self._drops_logged, self._drops_suppressed = now, 0, 0
        if self._drops_logged >= DROP_LOG_BURST:
            self._drops_suppressed += 1
            return
        self._drops_logged += 1
        log.warning("dropped request from %s: %s%s", printable(requester), reason,
                    f" ({printable(detail)})" if detail else "",
                    extra=log_fields(event="drop", requester=requester, reason=reason,
                                     detail=detail))

    def _lock_key(self, target: str) -> str:
        try:
            info = self.backend.lookup(target)
        except GuestfenceError:
            info = None
        uuid = getattr(info, "uuid", None)
        return str(uuid).lower() if uuid else target.lower()

    async def owned_key(self, target: str) -> str | None:
        """The domain's lock key if this host answers for ``target``, else None.

        One worker-thread trip for both questions: the multicast path asks it for
        every request, before the call-back."""

        def both() -> str | None:
            return self._lock_key(target) if self.backend.owns(target) else None

        try:
            return await asyncio.to_thread(both)
        except GuestfenceError as e:
            log.error("backend lookup of %r failed: %s", printable(target), e)
            return None

    # ---------------------------------------------------------------- the exchange

    async def serve(
        self,
        req: Request,
        stream: StreamIO,
        history_key: RequestKey | None,
        authenticate: bool = True,
        framing: Framing = NETWORK_FRAMING,
    ) -> None:
        """Authenticate, check access, execute, answer; exactly one log line per request."""
        served = False
        outcome = "error"
        detail = ""
        async with self._cluster_slot(req), self._slots, self.active.serving(req.listener):
            try:
                if authenticate:
                    await self._authenticate(stream, req)
                self._check_key_still_accepted(req)
                served = True
                code, payload = await self._decide(req, stream, framing)
                if code is None:
                    outcome, detail = "abandoned", "requester gave up before execution"
                else:
                    await stream.write(payload)
                    outcome = RESULT_NAMES.get(code, f"code{code}")
            except AuthError as e:
                outcome, detail = "auth-failed", str(e)
            except (TimeoutError, asyncio.IncompleteReadError) as e:
                outcome = "timeout" if isinstance(e, TimeoutError) else "disconnected"
                detail = "requester silent" if not served else "answer not delivered"
            except (OSError, ProtocolError) as e:
                outcome, detail = "disconnected", str(e)
            except Exception as e:  # a bug must not lose the request's log line
                log.exception("request from %s failed unexpectedly", printable(req.requester))
                outcome, detail = "error", f"{type(e).__name__}: {e}"
            finally:
                if history_key is not None:
                    self.history.finish(history_key, time.monotonic(), served=served)
        self._log(req, outcome, detail)

    def _cluster_slot(self, req: Request) -> contextlib.AbstractAsyncContextManager[object]:
        """The share of the request slots of the cluster whose key verified ``req`` (none
        without a clusters block: one key, one trust domain)."""
        if req.cluster is None:
            return contextlib.nullcontext()
        slot = self._cluster_slots.get(req.cluster)
        if slot is None:
            slot = self._cluster_slots[req.cluster] = asyncio.Semaphore(
                MAX_IN_FLIGHT_PER_CLUSTER)
        return slot

    async def _authenticate(self, stream: StreamIO, req: Request) -> None:
        if self.auth is HashType.NONE:
            return
        # the key that verified the request's signature, so that the cluster it names
        # is the one that completes the challenge/response; for an unsigned request the
        # ring's current key (never the key read at start-up: it may be retired since)
        key = req.auth_key if req.auth_key is not None else self.keyring.key_for_unsigned()
        if key is None:
            raise AuthError("no usable key for the challenge/response (see the key errors "
                            "logged at the last reload)")
        session = DaemonSession(key, self.auth)
        answer = session.receive(await stream.read_exactly(64, AUTH_STEP_TIMEOUT))
        await stream.write(answer)
        session.receive(await stream.read_exactly(64, AUTH_STEP_TIMEOUT))

    def _check_key_still_accepted(self, req: Request) -> None:
        """The key that verified the request may have been retired (or failed closed) while
        the daemon connected back and ran the challenge/response: then it does not act."""
        if req.auth_key is None:
            return
        if not any(k.key == req.auth_key and k.cluster == req.cluster
                   for k in self.keyring.keys):
            raise AuthError("the key that signed the request was retired (or stopped "
                            "working) during the request")

    async def _decide(
        self, req: Request, stream: StreamIO, framing: Framing
    ) -> tuple[int | None, bytes]:
        """The result byte (None: do nothing, the requester is gone) and the bytes to send."""
        if req.op == Op.HOSTLIST:
            try:
                records = await asyncio.to_thread(self.backend.host_list)
            except GuestfenceError as e:
                log.error("host list failed: %s", e)
                return Result.FAIL, framing.result(Result.FAIL)
            shown = [r for r in records if self.access.shows(req.requester, r.name, r.uuid)]
            if self.cluster_access.enabled:  # a cluster sees only its own guests
                await self._identify_serial_requester(req)
                shown = await asyncio.to_thread(
                    self.cluster_access.visible, self.backend, req.cluster, shown)
            return Result.HOSTLIST, framing.host_list(shown)
        if req.op in ACL_OPS and not self.access.allows(req.requester, req.target):
            return Result.PERM, framing.result(Result.PERM)
        target, key = req.target, req.lock_key
        if req.op in ACL_OPS and self.cluster_access.enabled:
            await self._identify_serial_requester(req)
            guest = await asyncio.to_thread(
                self.cluster_access.permitted, self.backend, req.cluster, req.target)
            if guest is None:
                return Result.PERM, framing.result(Result.PERM)
            target, key = guest.uuid, guest.uuid.lower()  # act on the guest that was checked
        # one lock per domain, whatever the request calls it (name or UUID)
        if key is None:
            key = await asyncio.to_thread(self._lock_key, target)
        async with self._locks.hold(key):
            await asyncio.sleep(0)  # let pending EOF/RST events reach the stream first
            if stream.peer_gone():
                return None, b""
            code = await asyncio.to_thread(self.backend.execute, req.op, target)
        return code, framing.result(code)

    async def _identify_serial_requester(self, req: Request) -> None:
        """Serial requests carry no key: their cluster is the requesting guest's."""
        if req.cluster is None and req.listener == "serial":
            req.cluster = await asyncio.to_thread(
                self.cluster_access.requester_cluster, self.backend, req.requester)

    def _log(self, req: Request, outcome: str, detail: str) -> None:
        self.metrics[f"requests_{outcome}"] += 1
        duration = (time.monotonic() - req.started) * 1000
        level = logging.INFO if outcome in RESULT_NAMES.values() else logging.WARNING
        log.log(
            level,
            "request listener=%s requester=%s target=%s action=%s seqno=%d outcome=%s "
            "duration_ms=%.1f%s%s",
            req.listener,
            printable(req.requester),
            printable(req.target) or "-",
            req.action,
            req.seqno,
            outcome,
            duration,
            f" cluster={req.cluster}" if req.cluster else "",
            f" detail={detail!r}" if detail else "",
            extra=log_fields(event="request", listener=req.listener, requester=req.requester,
                             target=req.target, action=req.action, seqno=req.seqno,
                             cluster=req.cluster, outcome=outcome,
                             duration_ms=round(duration, 1), detail=detail),
        )
        # the admin view's ring buffer and the metrics see exactly what the log line says
        self.recent.add(RequestRecord(now(), req.listener, req.requester, req.target,
                                      req.action, req.seqno, req.cluster, outcome,
                                      round(duration, 1), detail))
        self.telemetry.observe_request(req.action, outcome, req.cluster, duration / 1000)


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
