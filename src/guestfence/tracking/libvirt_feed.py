"""One host's libvirt feeding a LocationTable: a full listing, then lifecycle events, reconnects.

A :class:`HostFeed` keeps one connection (its own, for events) to one host's
libvirtd. On (re)connect it subscribes to lifecycle events *before* listing
every domain, so nothing is missed: events that arrive while the listing is
in flight are held back and applied after it (they are newer, or replay what
the listing already shows). While connected the host is a member of the
table; when the connection closes (libvirtd died, keepalive timeout) the host
leaves it and the feed retries with a growing delay (:data:`BACKOFF`).

Every table change happens on the asyncio loop, under the tracker's lock
(queries come from worker threads). libvirt calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

from guestfence.host.libvirt_events import close_event_connection, open_for_lifecycle_events
from guestfence.tracking.locations import (
    PAUSED,
    DomainState,
    Kind,
    LocationTable,
    Migration,
    from_libvirt,
)

log = logging.getLogger("guestfenced")

BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds between reconnect attempts (the last one repeats)."""
KEEPALIVE_INTERVAL = 2  # seconds; a silent host is dropped after about interval * (count + 1)
KEEPALIVE_COUNT = 3

_Event = tuple[str, str, Kind, str]  # uuid, name, kind, detail


def _migration_hint(dom: Any, state: int, reason: int) -> Migration | None:
    """Which end of a migration a paused domain is, from its job (None when not known)."""
    if state != PAUSED or reason not in (libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                                         libvirt.VIR_DOMAIN_PAUSED_POSTCOPY):
        return None
    try:
        op = dom.jobStats().get("operation")
    except libvirt.libvirtError:
        return None
    if op == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN:
        return Migration.IN
    if op == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
        return Migration.OUT
    return None


def list_domains(conn: Any) -> dict[str, DomainState]:
    """Every domain on a connection (running or defined), with migration hints."""
    found: dict[str, DomainState] = {}
    for dom in conn.listAllDomains(0):
        try:
            uuid, name = dom.UUIDString(), dom.name()
            state, reason = dom.state()
        except libvirt.libvirtError:
            continue  # gone meanwhile: its event follows
        found[uuid] = DomainState(name, uuid, int(state), _migration_hint(dom, state, reason))
    return found


class HostFeed:
    """Follows one host's libvirt into ``table`` (see the module docstring)."""

    def __init__(self, host: str, uri: str, table: LocationTable, lock: threading.Lock,
                 on_change: Callable[[str], None] = lambda _host: None,
                 on_event: Callable[[str, str, str, Kind, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``on_change(host)`` after every change of the table; ``on_event(host, uuid, name,
        kind, detail)`` for every lifecycle event applied (both on the asyncio loop)."""
        self.host = host
        self.uri = uri
        self.table = table
        self.lock = lock
        self.on_change = on_change
        self.on_event = on_event
        self.clock = clock
        self.connected = False
        self.last_error: str | None = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost = asyncio.Event()
        self._held: list[_Event] | None = None  # events held back during a listing
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()  # set after the first attempt, whatever its outcome

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start following; returns once the first connection attempt is over."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"libvirt-feed-{self.host}")
        await self._first.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._close)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._connect()
                failures = 0
            except OSError as e:
                self.last_error = str(e)
                if failures == 0:
                    log.error("host %s: %s; retrying", self.host, e)
                failures += 1
            except Exception as e:  # a bug must not stop following the host for good
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("host %s: following libvirt failed; retrying", self.host)
                failures += 1
            finally:
                self._first.set()
            if self.connected:
                await self._lost.wait()
                self._disconnected()
                await asyncio.to_thread(self._close)
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])

    async def _connect(self) -> None:
        self._lost.clear()
        self._held = []
        try:
            await asyncio.to_thread(self._open)
            listing = await asyncio.to_thread(self._list)
        except BaseException:
            self._held = None
            await asyncio.to_thread(self._close)
            raise
        held, self._held = self._held, None
        now = self.clock()
        with self.lock:
            self.table.host_joined(self.host, now)
            self.table.announce(self.host, listing, now)
            for event in held:
                self.table.event(self.host, *event, now)
        for event in held:
            if self.on_event is not None:
                self.on_event(self.host, *event)
        self.connected, self.last_error = True, None
        log.info("host %s: libvirt at %s connected, %d domain(s)", self.host, self.uri,
                 len(listing))
        self.on_change(self.host)

    def _disconnected(self) -> None:
        self.connected = False
        with self.lock:
            self.table.host_left(self.host, self.clock())
        log.warning("host %s: libvirt connection to %s lost; its guests are answered "
                    "\"fail\" until it is back", self.host, self.uri)
        self.on_change(self.host)

    # ------------------------------------------------------------------ worker threads

    def _open(self) -> None:
        self._conn, _ = open_for_lifecycle_events(
            self.uri, self.uri, self._closed, self._event,
            keepalive=(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT))

    def _list(self) -> dict[str, DomainState]:
        try:
            return list_domains(self._conn)
        except libvirt.libvirtError as e:
            raise OSError(f"cannot list domains at {self.uri}: {e.get_error_message()}") from e

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            close_event_connection(conn)

    # ------------------------------------------------------------------ libvirt event thread

    def _event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        try:
            kind, detail_name = from_libvirt(event, detail)
            item: _Event = (dom.UUIDString(), dom.name(), kind, detail_name)
        except (ValueError, libvirt.libvirtError) as e:
            log.warning("host %s: unreadable lifecycle event %d/%d: %s", self.host, event,
                        detail, e)
            return
        self._post(self._apply, item)

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._post(self._lost.set)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(callback, *args)

    # ------------------------------------------------------------------ asyncio loop

    def _apply(self, item: _Event) -> None:
        if self._held is not None:
            self._held.append(item)
            return
        if not self.connected:
            return
        log.debug("host %s: %s %s/%s", self.host, item[1], item[2].value, item[3])
        with self.lock:
            self.table.event(self.host, *item, self.clock())
        if self.on_event is not None:
            self.on_event(self.host, *item)
        self.on_change(self.host)
