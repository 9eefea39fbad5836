"""Static mode: this host's libvirt, checked against a host -> guests map from the config.

The seed's first mode: the map is the truth and live migration is not
allowed. A daemon acts only for the guests the map gives its host and that
its own libvirt shows; every other daemon stays silent for them. What the map
does not allow is reported loudly and never acted on:

* a guest found here that the map gives to another host (or to none), and a
  live migration in or out: one WARNING line naming guest, host and mapped
  host when it is first seen, a cumulative ``violations`` count in the
  snapshot (exported as a metric), and every request for that guest fails;
* a guest the map gives to this host that libvirt does not show: requests fail.

``guestfence check --fence-virt-conf`` compares the same map with the
placement it discovers (:mod:`guestfence.check.rules_static`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from guestfence.errors import BackendError
from guestfence.tracking.libvirt_feed import HostFeed
from guestfence.tracking.locations import (
    Ambiguous,
    Decision,
    Kind,
    LocationTable,
    Owner,
    Role,
    StaticMap,
    Violation,
    acting_host,
)
from guestfence.tracking.tracker import GuestLocation, Mode, TrackingSnapshot, decision_kind

if TYPE_CHECKING:
    from guestfence.host.backends.libvirt import LibvirtBackend
    from guestfence.host.config import BackendConfig

log = logging.getLogger("guestfenced")


def left_by_migration(conn: Any) -> set[str]:
    """UUIDs of shut-off definitions libvirt says were migrated away (state reason
    ``VIR_DOMAIN_SHUTOFF_MIGRATED``): left behind by a live migration without
    ``--undefinesource``, the guest runs elsewhere. libvirtd keeps that reason
    until it restarts, so a restarted guestfenced still knows."""
    import libvirt

    found: set[str] = set()
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE):
        try:
            state, reason = dom.state()
            if (state == libvirt.VIR_DOMAIN_SHUTOFF
                    and reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED):
                found.add(str(dom.UUIDString()).lower())
        except libvirt.libvirtError:
            continue  # gone meanwhile
    return found


class StaticTracker:
    mode: Mode = "static"

    def __init__(self, me: str, uri: str, mapping: dict[str, tuple[str, ...]],
                 name_mode: str = "name") -> None:
        self.me = me
        self.uri = uri
        self.uris = (uri,)
        self.name_mode = name_mode
        self.map = StaticMap(mapping)
        self._mapping = mapping
        self._lock = threading.Lock()
        self._table = LocationTable()
        self._feed = HostFeed(me, uri, self._table, self._lock, self._check, self._event)
        self._migrated_away: set[str] = set()  # uuids that left by live migration
        self._executor: LibvirtBackend | None = None
        self._seen: set[tuple[str, str, str]] = set()  # violations being reported now
        self.violations = 0

    @classmethod
    def from_config(cls, config: BackendConfig) -> StaticTracker:
        from guestfence.host.config_modes import short_hostname

        return cls(config.host_name or short_hostname(), config.uris[0],
                   dict(config.static_map), config.name_mode)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from guestfence.host.backends.libvirt import LibvirtBackend

        self._executor = await asyncio.to_thread(LibvirtBackend, [self.uri])
        await self._feed.start()
        if not self._feed.connected:
            await self.stop()
            raise BackendError(f"static mode: {self._feed.last_error}")
        # after subscribing: a guest that starts here from now on clears its mark
        ex = self._executor
        try:
            self._migrated_away |= await asyncio.to_thread(
                ex._with_conn, self.uri, left_by_migration)
        except Exception as e:  # a failure here must not stop start-up
            log.warning("static mode: cannot read why shut-off guests stopped (%s); a "
                        "definition left behind by a migration before this start counts "
                        "as a stopped guest", e)
        mine = ", ".join(self._mapping.get(self.me, ())) or "none"
        log.info("static mode: this host is %s; its guests by the map: %s", self.me, mine)

    async def stop(self) -> None:
        await self._feed.stop()
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    # ------------------------------------------------------------------ reporting

    def _check(self, _host: str) -> None:
        """After every change: report violations not reported yet (called on the loop)."""
        with self._lock:
            found = self.map.check(self._table)
        now = {(v.kind, v.guest.casefold(), v.host) for v in found}
        for v in found:
            key = (v.kind, v.guest.casefold(), v.host)
            if key not in self._seen:
                self.violations += 1
                self._report(v)
        self._seen = now

    def _report(self, v: Violation) -> None:
        mapped = ", ".join(v.mapped_to) or "no host"
        if v.kind == "migrating":
            log.warning("static map violation: guest %s in a live migration on %s (mapped to "
                        "%s); static mode does not allow migration: its requests fail",
                        v.guest, v.host, mapped)
        elif v.kind == "unmapped":
            log.warning("static map violation: guest %s runs on host %s, mapped to %s; its "
                        "requests fail", v.guest, v.host, mapped)
        else:
            log.warning("static map violation: %s", v.detail)

    # ------------------------------------------------------------------ Tracker queries

    def _event(self, _host: str, uuid: str, _name: str, kind: Kind, detail: str) -> None:
        """A guest that left by migration may leave its definition here, shut off: that is
        not "off" (it runs elsewhere) until it starts here again."""
        if kind is Kind.STOPPED and detail == "MIGRATED":
            self._migrated_away.add(uuid)
        elif kind in (Kind.STARTED, Kind.RESUMED) or kind is Kind.UNDEFINED:
            self._migrated_away.discard(uuid)

    def decide(self, target: str) -> Decision:
        with self._lock:
            decision = self.map.decide(self._table, target)
        if isinstance(decision, Owner) and decision.uuid in self._migrated_away:
            return Ambiguous((self.me, "elsewhere (migrated away)"), target)
        return decision

    def members(self) -> list[str]:
        return [self.me] if self._feed.connected else []

    def confirm_fenced(self, host: str) -> bool:
        return False  # no host cluster in static mode: nobody fences hosts for us

    def executor(self, host: str) -> LibvirtBackend | None:
        return self._executor if host == self.me else None

    def role_for(self, target: str, decision: Decision, members: list[str]) -> Role:
        """One daemon answers per guest: the host the map gives it (execute when the guest
        is here as the map says, else fail); for a guest in no map, the host running it
        (fail). Every other daemon stays silent."""
        mapped = self.map.mapped_for(target, decision)
        if self.me in mapped:
            ours = isinstance(decision, Owner) and decision.host == self.me
            return "execute" if ours and self.me in members else "answer"
        if not mapped and isinstance(decision, Ambiguous) and self.me in decision.hosts:
            return "answer"
        return "silent"

    def snapshot(self) -> TrackingSnapshot:
        with self._lock:
            listing = self._table.listing(self.me)
            guests = []
            for uuid, (name, state) in sorted(listing.items(), key=lambda kv: kv[1][0]):
                d = self.map.decide(self._table, uuid)
                guests.append(GuestLocation(name, uuid, acting_host(d), state,
                                            decision_kind(d)))
        return TrackingSnapshot(self.mode, self.me, tuple(self.members()), tuple(guests),
                                self.violations)
