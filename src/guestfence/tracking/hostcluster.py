"""Host-cluster mode: every guestfenced joins a corosync CPG group and tells where guests run.

Each daemon announces its host's full domain list (name, UUID, state,
migration role) when it joins, on every membership change and after every
local lifecycle event, and forwards each lifecycle event at once. Every member
feeds the same agreed-order stream into its :class:`LocationTable`, so all of
them name the same owner for a guest within a CPG round trip of the event.

Membership is corosync's: a member process is ``(nodeid, pid)``; its host
name comes from its own announcements. When it leaves (``LEAVE``,
``PROCDOWN``, ``NODEDOWN``) its listing is frozen: its guests are
:class:`~guestfence.tracking.locations.OwnerGone` and the deterministic
responder answers success only after :meth:`CpgTracker.confirm_fenced` has
seen the host cluster fence that host *after* it left (unlike the C backend,
which takes "left the group" for "dead").

Only a host in a quorate partition (corosync's quorum, :mod:`.quorum`) acts
as that responder: a host cut off from the ring stays silent for guests it
does not own, so its "fail" cannot beat the real owner's answer; it still
executes for its own guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from guestfence.errors import BackendError, ConfigError, ProtocolError
from guestfence.tracking import cpgwire
from guestfence.tracking.cpg import Address
from guestfence.tracking.fenceconfirm import Confirmer, make_confirmer
from guestfence.tracking.hostcluster_seams import (
    DomainSource,
    GroupTransport,
    QuorumSource,
    TransportFactory,
    cpg_transport,
)
from guestfence.tracking.localdomains import LocalDomains
from guestfence.tracking.locations import (
    Decision,
    Kind,
    LocationTable,
    Role,
    acting_host,
    role_of,
)
from guestfence.tracking.quorum import QuorumWatch
from guestfence.tracking.tracker import GuestLocation, Mode, TrackingSnapshot, decision_kind

if TYPE_CHECKING:
    from guestfence.host.backends.libvirt import LibvirtBackend

log = logging.getLogger("guestfenced")

DEFAULT_GROUP = "guestfence"
MALFORMED_LOG_INTERVAL = 10.0  # seconds between two log lines about bad messages
FIRST_INVENTORY_TIMEOUT = 10.0


class CpgTracker:
    mode: Mode = "cpg"

    def __init__(self, me: str, transport: TransportFactory, source: DomainSource,
                 confirm: Confirmer, executor: LibvirtBackend | None = None, *,
                 quorum: QuorumSource | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.me = me
        self._make_transport = transport
        self._source = source
        self._confirm = confirm
        self._executor = executor
        self._quorum = quorum
        """None only in tests that do not look at quorum: then every member may respond."""
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()  # the table is read from worker threads
        self.table = LocationTable()
        self._hosts: set[str] = set()
        self._addr_host: dict[tuple[int, int], str] = {}
        self._host_node: dict[str, int] = {}  # host -> corosync nodeid, from its messages
        self._ring: frozenset[int] | None = None  # nodes of the current totem ring
        self._live: set[tuple[int, int]] = set()
        self._left_at: dict[str, float] = {}  # wall clock, for the fencing history
        self._fenced: set[str] = set()
        self._confirming = threading.Lock()  # one fencing question at a time
        self._not_fenced: dict[str, tuple[float, float]] = {}  # host -> (left_at, asked at)
        self._seq = 0
        self.malformed = 0
        self._malformed_logged_at = -MALFORMED_LOG_INTERVAL
        self._malformed_unlogged = 0
        self._transport: GroupTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._announce_again = False
        self._own_announced = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._source.start(self._local_event, self.announce_soon)
        try:
            if self._quorum is not None:  # before the group: confchgs find the gate fed
                await self._quorum.start()
            self._transport = self._make_transport(self._deliver, self._confchg,
                                                   self.announce_soon, self._disconnected)
            await self._transport.start()
        except BaseException:
            self._transport = None
            if self._quorum is not None:
                await self._quorum.stop()
            self._source.close()
            raise
        try:
            await asyncio.wait_for(self._own_announced.wait(), FIRST_INVENTORY_TIMEOUT)
        except TimeoutError as e:
            await self.stop()
            raise BackendError("host cluster: our own first announcement did not come back "
                               f"through CPG within {FIRST_INVENTORY_TIMEOUT:.0f} s (see the "
                               "log: listing the local domains or the CPG group failed)") from e

    async def stop(self) -> None:
        task, self._announcing = self._announcing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.stop()
        if self._quorum is not None:
            await self._quorum.stop()
        self._source.close()

    # ------------------------------------------------------------------ sending

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, message: cpgwire.Message) -> None:
        if self._transport is not None:
            self._transport.send(cpgwire.encode(message))

    def _local_event(self, uuid: str, name: str, kind: Kind, detail: str) -> None:
        self._send(cpgwire.LifecycleEvent(self.me, self._next_seq(), uuid, name, kind, detail))
        self.announce_soon()

    def announce_soon(self) -> None:
        """Send a full announcement (coalesced: one listing at a time, then one more)."""
        if self._loop is None:
            return
        if self._announcing is not None and not self._announcing.done():
            self._announce_again = True
            return
        self._announcing = self._loop.create_task(self._announce())

    async def _announce(self) -> None:
        delay = 0.5
        self._announce_again = True
        while self._announce_again and self._transport is not None:
            self._announce_again = False
            try:
                generation, domains = await asyncio.to_thread(self._source.listing)
            except OSError as e:
                log.error("host cluster: cannot list local domains: %s; retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._announce_again = True
                continue
            if generation != self._source.generation:
                self._announce_again = True  # an event came in meanwhile: list again
                continue
            self._send(cpgwire.Announcement(self.me, self._next_seq(), tuple(domains)))

    # ------------------------------------------------------------------ receiving

    def _deliver(self, nodeid: int, pid: int, payload: bytes) -> None:
        try:
            message = cpgwire.decode(payload)
        except ProtocolError as e:
            self._malformed(nodeid, pid, str(e))
            return
        addr = (nodeid, pid)
        now = self._clock()
        with self._lock:
            self._bind(addr, message.host, now)
            if isinstance(message, cpgwire.Announcement):
                domains = {d.uuid: d for d in message.domains}
                self.table.announce(message.host, domains, now, message.seq)
            else:
                self.table.event(message.host, message.uuid, message.name, message.kind,
                                 message.detail, now, message.seq)
        own = self._transport is not None and addr == (self._transport.nodeid,
                                                       self._transport.pid)
        if own and isinstance(message, cpgwire.Announcement):
            self._own_announced.set()

    def _bind(self, addr: tuple[int, int], host: str, now: float) -> None:
        known = self._addr_host.get(addr)
        if known == host:
            return
        if known is not None:
            log.error("host cluster: member %s renamed itself from %s to %s", addr, known,
                      host)
            self._forget_addr(addr, now)
        others = [a for a, h in self._addr_host.items() if h == host and a in self._live]
        if others:
            log.error("host cluster: %s and %s both claim the host name %s; set distinct "
                      "host_name values", others[0], addr, host)
        self._addr_host[addr] = host
        self._host_node[host] = addr[0]
        self._live.add(addr)
        self._hosts.add(host)
        if not self.table.is_member(host):
            self.table.host_joined(host, now)
            self._left_at.pop(host, None)
            self._fenced.discard(host)
            log.info("host cluster: %s (node %d pid %d) is a member", host, *addr)

    def _forget_addr(self, addr: tuple[int, int], now: float) -> None:
        self._live.discard(addr)
        host = self._addr_host.pop(addr, None)
        if host is None or host == self.me:
            return
        if any(h == host for a, h in self._addr_host.items() if a in self._live):
            return  # another process of the same host name is still there
        if self.table.is_member(host):
            self.table.host_left(host, now)
            self._left_at[host] = self._wall()
            log.warning("host cluster: %s left the group; its guests are answered for only "
                        "once the host cluster has fenced it", host)

    def _confchg(self, members: list[Address], left: list[Address],
                 joined: list[Address]) -> None:
        now = self._clock()
        if self._quorum is not None and any(a.reason == "NODEDOWN" for a in left):
            # a new ring: hold the responder role until its quorum is known (set before
            # the table changes, so a worker thread never sees the departure ungated)
            self._quorum.gate.cpg_nodes_down()
        with self._lock:
            self._live = {(m.nodeid, m.pid) for m in members}
            for a in left:
                log.info("host cluster: member node %d pid %d left (%s)", a.nodeid, a.pid,
                         a.reason)
                self._forget_addr((a.nodeid, a.pid), now)
            for addr in [a for a in self._addr_host if a not in self._live]:
                self._forget_addr(addr, now)
        if joined:
            log.info("host cluster: joined: %s", ", ".join(
                f"node {a.nodeid} pid {a.pid} ({a.reason})" for a in joined))
        self.announce_soon()

    def ring_changed(self, seq: int, nodes: tuple[int, ...]) -> None:
        """CPG's totem callback: a new ring with these corosync nodes (loop thread).

        A departed host whose node is in the ring is alive (its guestfenced is not
        in the group, or not yet): only a fence after now counts for it, and one
        confirmed fenced before (it rebooted, its guestfenced is not back) may run
        guests again (libvirt autostart, an operator): it no longer counts as fenced.
        """
        if self._quorum is not None:
            self._quorum.gate.cpg_ring(seq)
        ring = frozenset(nodes)
        revived: list[str] = []
        with self._lock:
            self._ring = ring
            for host, node in sorted(self._host_node.items()):
                if node not in ring or host not in self._left_at or self.table.is_member(host):
                    continue
                self._left_at[host] = self._wall()
                if host in self._fenced:
                    self.table.host_unfenced(host, self._clock())
                    self._fenced.discard(host)
                    revived.append(host)
        for host in revived:
            log.warning("host cluster: %s is back in the corosync ring without its "
                        "guestfenced: no longer counted as fenced; its guests fail until it "
                        "joins the group or is fenced again", host)

    def _disconnected(self) -> None:
        """corosync went away: nobody else can be trusted to be alive; we keep our guests."""
        now = self._clock()
        if self._quorum is not None:
            self._quorum.gate.cpg_lost()
        with self._lock:
            self._ring = None
            for addr in list(self._addr_host):
                self._forget_addr(addr, now)

    def _malformed(self, nodeid: int, pid: int, why: str) -> None:
        self.malformed += 1
        self._malformed_unlogged += 1
        now = self._clock()
        if now - self._malformed_logged_at >= MALFORMED_LOG_INTERVAL:
            log.warning("host cluster: dropped %d malformed message(s), latest from node %d "
                        "pid %d: %s", self._malformed_unlogged, nodeid, pid, why)
            self._malformed_logged_at = now
            self._malformed_unlogged = 0

    # ------------------------------------------------------------------ queries

    def decide(self, target: str) -> Decision:
        with self._lock:
            return self.table.owner(target)

    def members(self) -> list[str]:
        with self._lock:
            return self.table.members()

    def role_for(self, target: str, decision: Decision, members: list[str]) -> Role:
        """:func:`role_of`, except that the responder for guests nobody live owns must
        be in a quorate partition: a host cut off from the ring stays silent for them
        (it still executes for its own guests)."""
        role = role_of(self.me, decision, members)
        if role != "answer" or self._quorum is None:
            return role
        why = self._quorum.gate.why_closed()
        if why is None:
            return role
        log.debug("%s: responder, but %s: silent", target, why)
        return "silent"

    def confirm_fenced(self, host: str) -> bool:
        """Ask the host cluster (blocking); a yes is remembered until the host rejoins.

        One question at a time; callers that arrived while a question was being
        asked take the answer of the next one (asked after they arrived, so never
        staler than their own): a flood of requests for a dead host's guests
        starts one ``stonith_admin`` at a time, not one each.
        """
        arrived = self._clock()
        with self._confirming:
            with self._lock:
                if host in self._fenced:
                    return True
                if self.table.is_member(host):
                    return False
                if self._ring is not None and self._host_node.get(host) in self._ring:
                    log.info("host cluster: %s is still in the corosync ring (its node is "
                             "alive): not fenced", host)
                    return False
                left_at = self._left_at.get(host)
            if left_at is None:
                log.warning("host cluster: %s is not known to have left; not confirming", host)
                return False
            asked = self._not_fenced.get(host)
            if asked is not None and asked[0] == left_at and asked[1] >= arrived:
                return False
            started = self._clock()
            if not self._confirm(host, left_at):
                self._not_fenced[host] = (left_at, started)
                return False
            with self._lock:
                if self.table.is_member(host) or self._left_at.get(host) != left_at:
                    return False  # it came back while we asked
                self.table.host_fenced(host, self._clock())
                self._fenced.add(host)
        log.warning("host cluster: %s confirmed fenced; its guests count as off", host)
        return True

    def copies_elsewhere(self, uuid: str) -> list[str]:
        """Other hosts whose listing has ``uuid`` not shut off (fenced hosts' stale
        listings do not count: nothing runs there any more)."""
        with self._lock:
            return [h for u in self.table.uuids(uuid) for h in self.table.hosts_listing(u)
                    if h != self.me and h not in self._fenced]

    def executor(self, host: str) -> LibvirtBackend | None:
        return self._executor if host == self.me else None

    def snapshot(self) -> TrackingSnapshot:
        with self._lock:
            uuids: dict[str, str] = {}
            for host in self._hosts:
                for u, (name, _state) in self.table.listing(host).items():
                    uuids.setdefault(u, name)
            guests = tuple(self._location(u, name) for u, name in sorted(uuids.items()))
            departed = tuple(sorted(h for h in self._left_at if h not in self._fenced))
            return TrackingSnapshot("cpg", self.me, tuple(self.table.members()), guests, 0,
                                    departed)

    def _location(self, uuid: str, name: str) -> GuestLocation:
        d = self.table.owner(uuid)
        host = acting_host(d)
        state = -1
        if host is not None:
            state = self.table.listing(host).get(uuid, (name, -1))[1]
        return GuestLocation(name, uuid, host, state, decision_kind(d))


# ---------------------------------------------------------------------- factory


def _setting(config: Any, name: str, default: Any) -> Any:
    value = getattr(config, name, default)
    return default if value is None else value


def make_tracker(config: Any) -> CpgTracker:
    """The host-cluster tracker for guestfenced's ``backend = "cpg"`` configuration block."""
    from guestfence.host.config_modes import short_hostname
    from guestfence.tracking.migration_guard import GuardedLibvirtBackend

    uris: Sequence[str] = tuple(_setting(config, "uris", ()))
    if not uris:
        raise ConfigError("backends/cpg needs a 'uri' of the local libvirt")
    me = str(_setting(config, "host_name", "") or short_hostname())
    group = str(_setting(config, "group", DEFAULT_GROUP))
    executor = GuardedLibvirtBackend(uris, name_mode=_setting(config, "name_mode", "name"),
                                     claim_shut_off=_setting(config, "claim_shut_off", True))
    local = LocalDomains(uris)
    quorum = QuorumWatch()

    def on_ring(seq: int, nodes: tuple[int, ...]) -> None:
        tracker.ring_changed(seq, nodes)

    tracker = CpgTracker(me, cpg_transport(group, on_ring), local, make_confirmer(config),
                         executor, quorum=quorum)
    executor.guard(local.migrating_out, tracker.copies_elsewhere)
    return tracker
