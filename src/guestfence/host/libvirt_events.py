"""Running domains and their lifecycle events, from libvirt to an asyncio loop.

libvirt delivers events from its own event loop. libvirt-python's default
implementation is registered once per process (before the connection that
wants events is opened) and runs here in one daemon thread. A
:class:`DomainWatcher` owns one connection, lists the running domains with
their XML, and calls ``on_change`` in the asyncio loop whenever libvirt reports
a lifecycle event (started, stopped, ...) or the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

log = logging.getLogger("guestfenced")

KEEPALIVE_INTERVAL = 5  # seconds between keepalive probes on remote connections
KEEPALIVE_COUNT = 5

_thread_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def ensure_event_thread() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process."""
    global _event_thread
    with _thread_lock:
        if _event_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _event_thread = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
        _event_thread.start()


def open_for_lifecycle_events(
    uri: str | None, where: str, on_closed: Callable[[Any, int, Any], None],
    on_event: Callable[[Any, Any, int, int, Any], None], *, opaque: Any = None,
    keepalive: tuple[int, int] | None = (KEEPALIVE_INTERVAL, KEEPALIVE_COUNT),
) -> tuple[Any, int]:
    """A connection with a close callback and a lifecycle-event callback: (conn, callback id).

    Blocking (a worker thread). The event thread runs before the connection is
    opened (libvirt needs that). ``keepalive`` (interval, count) makes a dead
    remote host's connection close; None leaves libvirt's default. OSError
    saying ``where`` when libvirt cannot be reached or refuses the callbacks.
    """
    ensure_event_thread()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise OSError(f"cannot connect to libvirt at {where}: "
                      f"{e.get_error_message()}") from e
    if keepalive is not None:
        with contextlib.suppress(libvirt.libvirtError):  # local drivers have no keepalive
            conn.setKeepAlive(*keepalive)
    try:
        conn.registerCloseCallback(on_closed, opaque)
        callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, opaque)
    except libvirt.libvirtError as e:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        raise OSError(f"cannot subscribe to domain events at {where}: "
                      f"{e.get_error_message()}") from e
    return conn, int(callback_id)


def close_event_connection(conn: Any, callback_id: int | None = None) -> None:
    """Undo :func:`open_for_lifecycle_events`; a connection already gone is fine."""
    try:
        if callback_id is not None:
            conn.domainEventDeregisterAny(callback_id)
        conn.unregisterCloseCallback()
    except libvirt.libvirtError:
        pass  # the connection is already gone
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _run_events() -> None:
    while True:  # each call blocks in poll() until a handle or timer fires
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as e:
            log.error("libvirt event loop: %s", e.get_error_message())
            time.sleep(1.0)


@dataclass(frozen=True)
class RunningDomain:
    name: str
    uuid: str
    xml: str

    def unix_sockets(self, device: str, directory: str | None = None) -> list[str]:
        """Sockets libvirt binds for the domain's ``device`` elements (serial or channel).

        Only ``<DEVICE type='unix'><source mode='bind' path='...'/>``; with
        ``directory``, only sockets located directly in it. Raises ET.ParseError.
        """
        paths = []
        for dev in ET.fromstring(self.xml).iterfind(f"./devices/{device}[@type='unix']"):
            for source in dev.iterfind("source[@mode='bind']"):
                path = source.get("path")
                if path and (directory is None or _directly_in(directory, path)):
                    paths.append(path)
        return paths


def _directly_in(directory: str, path: str) -> bool:
    return os.path.dirname(os.path.normpath(path)) == os.path.normpath(directory)


class DomainWatcher:
    """One libvirt connection: running domains on demand, lifecycle events pushed.

    The blocking methods (``open``, ``running_domains``, ``close``) are meant
    for worker threads; they raise OSError when libvirt cannot be reached.
    """

    def __init__(
        self, uri: str | None, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]
    ) -> None:
        self.uri = uri
        self._loop = loop
        self._on_change = on_change
        self._lock = threading.Lock()
        self._conn: Any = None
        self._callback_id: int | None = None

    @property
    def where(self) -> str:
        return self.uri or "the default libvirt URI"

    def open(self) -> None:
        with self._lock:
            self._open_locked()

    def running_domains(self) -> list[RunningDomain]:
        """Active domains (running or paused); a dead connection is reopened first."""
        with self._lock:
            if self._conn is None or not self._alive():
                self._close_locked()
                self._open_locked()
            try:
                domains = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            except libvirt.libvirtError as e:
                self._close_locked()
                raise OSError(f"cannot list domains at {self.where}: "
                              f"{e.get_error_message()}") from e
            found = []
            for dom in domains:
                try:
                    found.append(RunningDomain(dom.name(), dom.UUIDString(), dom.XMLDesc(0)))
                except libvirt.libvirtError:
                    continue  # stopped or undefined meanwhile; its event follows
            return found

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    # ------------------------------------------------------------------ internals

    def _open_locked(self) -> None:
        self._conn, self._callback_id = open_for_lifecycle_events(
            self.uri, self.where, self._closed, self._event)

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _close_locked(self) -> None:
        conn, self._conn = self._conn, None
        callback_id, self._callback_id = self._callback_id, None
        if conn is not None:
            close_event_connection(conn, callback_id)

    # Both callbacks run in the libvirt event thread.

    def _event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        log.debug("libvirt: domain %s lifecycle event %d/%d", dom.name(), event, detail)
        self._notify()

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.warning("libvirt connection to %s closed (reason %d)", self.where, reason)
        self._notify()

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the asyncio loop is already closed
            self._loop.call_soon_threadsafe(self._on_change)
