"""This host's domains as its own libvirt reports them, with their part in a migration.

A listing says "paused" for both ends of a live migration; only the lifecycle
events tell a destination (``STARTED/MIGRATED``) from a source
(``SUSPENDED/MIGRATED``). :class:`LocalDomains` follows the events of the
local libvirt (libvirt's event thread), remembers each domain's migration
role, hands each event to the asyncio loop, and lists every domain (running
or defined) with that role for a full announcement.

:attr:`LocalDomains.generation` grows with every event: a listing taken
before an event must not be announced after that event (it would undo it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import libvirt

from guestfence.errors import BackendError
from guestfence.host.libvirt_events import open_for_lifecycle_events
from guestfence.tracking.locations import DomainState, Kind, Migration, from_libvirt

log = logging.getLogger("guestfenced")

OnEvent = Callable[[str, str, Kind, str], None]
"""``on_event(uuid, name, kind, detail)``, called in the asyncio loop."""


def next_role(role: Migration | None, kind: Kind, detail: str) -> Migration | None:
    """A domain's migration role after one lifecycle event on this host."""
    if kind is Kind.STARTED:
        return Migration.IN if detail == "MIGRATED" else None
    if kind is Kind.SUSPENDED and detail in ("MIGRATED", "POSTCOPY"):
        return role if role is Migration.IN else Migration.OUT
    if kind in (Kind.RESUMED, Kind.STOPPED, Kind.UNDEFINED):
        return None
    return role


class LocalDomains:
    def __init__(self, uris: Sequence[str]) -> None:
        if not uris:
            raise BackendError("host-cluster tracking needs the local libvirt uri")
        self.uris = tuple(uris)
        self.generation = 0
        self._lock = threading.Lock()
        self._roles: dict[str, Migration] = {}
        self._conns: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_event: OnEvent | None = None
        self._on_lost: Callable[[], None] = lambda: None

    async def start(self, on_event: OnEvent, on_lost: Callable[[], None]) -> None:
        """Connect and subscribe to lifecycle events; BackendError if libvirt is not there."""
        self._loop = asyncio.get_running_loop()
        self._on_event, self._on_lost = on_event, on_lost
        for uri in self.uris:
            try:
                await asyncio.to_thread(self._connection, uri)
            except OSError as e:
                raise BackendError(str(e)) from e

    def _connection(self, uri: str) -> Any:
        with self._lock:
            conn = self._conns.get(uri)
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                if conn.isAlive():
                    return conn
            self._forget(uri)
        conn, _ = open_for_lifecycle_events(uri, uri, self._closed, self._event, opaque=uri,
                                            keepalive=None)
        with self._lock:
            self._conns[uri] = conn
        return conn

    def _forget(self, uri: str) -> None:
        with self._lock:
            conn = self._conns.pop(uri, None)
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def listing(self) -> tuple[int, list[DomainState]]:
        """(generation before listing, every domain with its state and role); OSError."""
        with self._lock:
            generation = self.generation
        found: dict[str, DomainState] = {}
        for uri in self.uris:
            conn = self._connection(uri)
            try:
                domains = conn.listAllDomains(0)
            except libvirt.libvirtError as e:
                self._forget(uri)
                raise OSError(f"cannot list domains at {uri}: {e.get_error_message()}") from e
            for dom in domains:
                try:
                    uuid, name, (state, _reason) = dom.UUIDString(), dom.name(), dom.state()
                except libvirt.libvirtError:
                    continue  # gone meanwhile: its event follows
                found[uuid] = DomainState(name, uuid, int(state))
        with self._lock:
            for uuid in [u for u in self._roles if u not in found]:
                del self._roles[uuid]
            out = [DomainState(d.name, d.uuid, d.state, self._roles.get(d.uuid))
                   for d in found.values()]
        return generation, out

    def migrating_out(self, uuid: str) -> bool:
        """Whether ``uuid`` is (or may be) migrating away from here: role OUT, or any job."""
        with self._lock:
            if self._roles.get(uuid) is not None:
                return True
        for uri in self.uris:
            try:
                job = self._connection(uri).lookupByUUIDString(uuid).jobInfo()
            except (OSError, libvirt.libvirtError):
                continue  # not here: nothing migrates out
            if job and job[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                return True
        return False

    def close(self) -> None:
        self._on_event, self._on_lost = None, lambda: None
        for uri in list(self._conns):
            self._forget(uri)

    # -- libvirt event thread -------------------------------------------------------

    def _event(self, _conn: Any, dom: Any, event: int, detail: int, _uri: Any) -> None:
        try:
            kind, detail_name = from_libvirt(event, detail)
            uuid, name = dom.UUIDString(), dom.name()
        except (ValueError, libvirt.libvirtError) as e:
            log.warning("libvirt: unreadable lifecycle event %d/%d: %s", event, detail, e)
            return
        with self._lock:
            role = next_role(self._roles.get(uuid), kind, detail_name)
            if role is None:
                self._roles.pop(uuid, None)
            else:
                self._roles[uuid] = role
            self.generation += 1
        log.debug("libvirt: %s %s/%s", name, kind.value, detail_name)
        self._post(self._on_event, uuid, name, kind, detail_name)

    def _closed(self, _conn: Any, reason: int, uri: Any) -> None:
        log.warning("libvirt connection to %s closed (reason %d)", uri, reason)
        with self._lock:
            self._conns.pop(str(uri), None)
            self.generation += 1
        self._post(self._on_lost)

    def _post(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(callback, *args)
