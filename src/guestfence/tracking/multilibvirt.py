"""No host cluster: libvirt connections to every host, followed by lifecycle events.

The seed's third mode (once QMF / libvirt-qpid, removed upstream). The
daemon holds one event connection per host (:class:`HostFeed`, reconnecting
with backoff) and one :class:`LibvirtBackend` per host to act through. Every
host's listing and events go into one
:class:`~guestfence.tracking.locations.LocationTable` built with
``trust_running_member=True``: a host we can reach that shows the guest
running is acted on even when a host we cannot reach still lists it.

Members are the hosts whose connection is alive. A guest whose last known
host is unreachable is :class:`OwnerGone` and never confirmed fenced here
(nothing fences hosts in this mode), so its requests fail; never "off".

Who answers on a shared multicast group (docs/decisions.md):

* ``host_name`` set: every host runs a daemon and each answers only when
  :func:`~guestfence.tracking.locations.role_of` says so for its own name: the
  acting host's daemon executes (through its connection to that host, which
  may be its own), the lowest-named reachable host answers "fail" for guests
  nobody can act on, the others stay silent.
* ``host_name`` unset: one management daemon answers every request itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from guestfence.errors import BackendError
from guestfence.tracking.libvirt_feed import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL, HostFeed
from guestfence.tracking.locations import Decision, LocationTable, acting_host
from guestfence.tracking.tracker import GuestLocation, Mode, TrackingSnapshot, decision_kind

if TYPE_CHECKING:
    from guestfence.host.backends.libvirt import LibvirtBackend
    from guestfence.host.config import BackendConfig

log = logging.getLogger("guestfenced")


def _keepalive_backend(uri: str) -> LibvirtBackend:
    """A LibvirtBackend whose connections probe the host: a call to a host that
    vanished (partition) fails after about KEEPALIVE_INTERVAL * (COUNT + 1) seconds
    instead of hanging on TCP."""
    import libvirt

    from guestfence.host.backends.libvirt import LibvirtBackend

    class KeptAlive(LibvirtBackend):
        @staticmethod
        def _open(uri: str) -> Any:
            conn = LibvirtBackend._open(uri)
            with contextlib.suppress(libvirt.libvirtError):  # local drivers have none
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            return conn

    return KeptAlive([uri])


class MultiLibvirtTracker:
    mode: Mode = "multi-libvirt"

    def __init__(self, hosts: dict[str, str], me: str | None = None) -> None:
        if not hosts:
            raise BackendError("multi-libvirt mode needs at least one host")
        self.hosts = dict(hosts)
        self.uris = tuple(hosts.values())
        self.me = me or ""
        self.answers_all = me is None
        """No host_name: one management daemon that answers for every host."""
        self._lock = threading.Lock()
        self._table = LocationTable(trust_running_member=True)
        self._feeds = {h: HostFeed(h, uri, self._table, self._lock) for h, uri in hosts.items()}
        self._executors: dict[str, LibvirtBackend] = {}
        self._exec_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: BackendConfig) -> MultiLibvirtTracker:
        return cls(dict(config.hosts), config.host_name)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to every host at once; hosts that do not answer are retried in the
        background (their guests fail meanwhile). Fails only when no host answers."""
        await asyncio.gather(*(feed.start() for feed in self._feeds.values()))
        up = [h for h, f in self._feeds.items() if f.connected]
        down = [h for h in self._feeds if h not in up]
        if not up:
            await self.stop()
            raise BackendError("multi-libvirt mode: no host reachable: " + "; ".join(
                f"{h}: {self._feeds[h].last_error}" for h in down))
        who = f"host {self.me}" if not self.answers_all else "every host (no host_name)"
        log.info("multi-libvirt mode: answering for %s; reachable: %s%s", who, ", ".join(up),
                 f"; unreachable: {', '.join(down)}" if down else "")

    async def stop(self) -> None:
        await asyncio.gather(*(feed.stop() for feed in self._feeds.values()))
        with self._exec_lock:
            executors, self._executors = self._executors, {}
        for ex in executors.values():
            ex.close()

    # ------------------------------------------------------------------ Tracker queries

    def decide(self, target: str) -> Decision:
        with self._lock:
            return self._table.owner(target)

    def members(self) -> list[str]:
        return sorted(h for h, f in self._feeds.items() if f.connected)

    def confirm_fenced(self, host: str) -> bool:
        return False  # no host cluster: nothing here can confirm that a host was fenced

    def copies_out_of_reach(self, uuid: str) -> list[str]:
        """Unreachable hosts whose last listing had ``uuid`` not shut off: a copy there
        may still run, so an off elsewhere is no success (see TrackedBackend)."""
        with self._lock:
            return [h for u in self._table.uuids(uuid) for h in self._table.hosts_listing(u)
                    if not self._table.is_member(h)]

    def executor(self, host: str) -> LibvirtBackend | None:
        """The backend acting on ``host`` (opened on first use; None if it cannot be)."""
        uri = self.hosts.get(host)
        if uri is None:
            return None
        with self._exec_lock:
            ex = self._executors.get(host)
            if ex is None:
                try:
                    ex = self._executors[host] = _keepalive_backend(uri)
                except BackendError as e:
                    log.warning("host %s: %s", host, e)
                    return None
            return ex

    def snapshot(self) -> TrackingSnapshot:
        guests: dict[str, GuestLocation] = {}
        with self._lock:
            for host in sorted(self.hosts):
                for uuid, (name, state) in self._table.listing(host).items():
                    if uuid in guests:
                        continue
                    d = self._table.owner(uuid)
                    actor = acting_host(d)
                    shown = state if actor is None else self._table.listing(actor).get(
                        uuid, (name, state))[1]
                    guests[uuid] = GuestLocation(name, uuid, actor, shown, decision_kind(d))
        return TrackingSnapshot(self.mode, self.me, tuple(self.members()),
                                tuple(sorted(guests.values(), key=lambda g: g.name)), 0)
