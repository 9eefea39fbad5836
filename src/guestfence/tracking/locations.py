"""Which host runs which guest: a pure table fed by announcements, events and membership.

No I/O and no clock: every input carries ``now`` (seconds, any monotonic
origin) and the caller decides where the inputs come from -- corosync CPG
messages from the other guestfenced (host-cluster mode), libvirt lifecycle
events from connections to every host (no host cluster), or a local listing
checked against a :class:`StaticMap` (static mode).

Inputs
    :meth:`LocationTable.announce` -- a host's full list of domains (replaces
    what the table knew of that host; stale sequence numbers are ignored);
    :meth:`LocationTable.event` -- one libvirt lifecycle event on one host;
    :meth:`LocationTable.host_joined`, :meth:`~LocationTable.host_left`,
    :meth:`~LocationTable.host_fenced` -- membership and fencing of hosts.

Output
    :meth:`LocationTable.owner` -> a :data:`Decision`: :class:`Owner`,
    :class:`Migrating`, :class:`OwnerGone`, :class:`Unknown` or
    :class:`Ambiguous`. :func:`acting_host` names the one host that may
    execute, :func:`responder` the one member that answers when no owner can.

Live migration (lab notes): destination ``STARTED/MIGRATED``, source
``SUSPENDED/MIGRATED``, destination ``RESUMED/MIGRATED``, source
``STOPPED/MIGRATED``; the guest is listed on both hosts for a while. The
source owns the guest until the destination resumes it (or the source stops
with detail MIGRATED); ``STARTED`` on the destination never moves ownership.

Unlike the C ``cpg`` backend, a guest whose host left the membership is never
reported "off": it is :class:`OwnerGone` with ``fenced=False`` until
:meth:`LocationTable.host_fenced` confirms the host was fenced.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Literal

# libvirt virDomainState values (kept here so the core needs no libvirt import).
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)


class Migration(Enum):
    """A host's part in a live migration, when the announcing daemon knows it."""

    IN = "in"
    """Destination: qemu started with -incoming, not yet resumed."""
    OUT = "out"
    """Source: paused for the switch-over, not yet stopped."""


class Kind(StrEnum):
    """libvirt lifecycle event kinds (``VIR_DOMAIN_EVENT_*``), in libvirt's numbering order."""

    DEFINED = "DEFINED"
    UNDEFINED = "UNDEFINED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    RESUMED = "RESUMED"
    STOPPED = "STOPPED"
    SHUTDOWN = "SHUTDOWN"
    PMSUSPENDED = "PMSUSPENDED"
    CRASHED = "CRASHED"


_DETAILS: dict[Kind, tuple[str, ...]] = {
    Kind.DEFINED: ("ADDED", "UPDATED", "RENAMED", "FROM_SNAPSHOT"),
    Kind.UNDEFINED: ("REMOVED", "RENAMED"),
    Kind.STARTED: ("BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "WAKEUP"),
    Kind.SUSPENDED: ("PAUSED", "MIGRATED", "IOERROR", "WATCHDOG", "RESTORED",
                     "FROM_SNAPSHOT", "API_ERROR", "POSTCOPY", "POSTCOPY_FAILED"),
    Kind.RESUMED: ("UNPAUSED", "MIGRATED", "FROM_SNAPSHOT", "POSTCOPY", "POSTCOPY_FAILED"),
    Kind.STOPPED: ("SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED",
                   "FROM_SNAPSHOT"),
    Kind.SHUTDOWN: ("FINISHED", "GUEST", "HOST"),
    Kind.PMSUSPENDED: ("MEMORY", "DISK"),
    Kind.CRASHED: ("PANICKED", "CRASHLOADED"),
}


def from_libvirt(event: int, detail: int) -> tuple[Kind, str]:
    """Kind and detail name of a libvirt lifecycle callback's ``(event, detail)`` integers.

    Unknown numbers (newer libvirt) give the detail ``"UNKNOWN"``; an unknown
    event raises ValueError.
    """
    kinds = list(Kind)
    if not 0 <= event < len(kinds):
        raise ValueError(f"unknown libvirt lifecycle event {event}")
    kind = kinds[event]
    names = _DETAILS[kind]
    return kind, names[detail] if 0 <= detail < len(names) else "UNKNOWN"


def canonical_uuid(text: str) -> str | None:
    """The canonical lower-case form of a UUID in any form ``uuid.UUID`` accepts, else None."""
    try:
        return str(uuidlib.UUID(text.strip()))
    except ValueError:
        return None


@dataclass(frozen=True)
class DomainState:
    """One domain in a host's announcement."""

    name: str
    uuid: str
    state: int
    """libvirt ``virDomainState`` (RUNNING, PAUSED, SHUTOFF, ...)."""
    migrating: Migration | None = None
    """Set by the announcing daemon while it sees a migration in or out."""


# -- decisions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Exactly one host has the guest (running, paused, or defined and shut off)."""

    host: str
    uuid: str
    name: str
    state: int


@dataclass(frozen=True)
class Migrating:
    """Both hosts list the guest; ``owner`` (the source until the switch-over) acts."""

    src: str
    dst: str
    owner: str
    uuid: str
    name: str


@dataclass(frozen=True)
class OwnerGone:
    """The guest's last known owner left the membership.

    Success may be answered only when ``fenced`` (the host cluster fenced that host).
    """

    host: str
    fenced: bool
    uuid: str
    name: str


@dataclass(frozen=True)
class Unknown:
    """No host has the guest (or only a destination that was never resumed)."""

    target: str


@dataclass(frozen=True)
class Ambiguous:
    """Running on several hosts outside a migration: report loudly and answer fail."""

    hosts: tuple[str, ...]
    target: str


Decision = Owner | Migrating | OwnerGone | Unknown | Ambiguous


def acting_host(decision: Decision) -> str | None:
    """The one host that may carry out an operation, or None when nobody may."""
    if isinstance(decision, Owner):
        return decision.host
    if isinstance(decision, Migrating):
        return decision.owner
    return None


def responder(decision: Decision, members: Iterable[str]) -> str | None:
    """The member that answers when the owner cannot (lowest name), or None.

    None when the acting host is itself a member (it answers) or when there is
    no member at all.
    """
    live = sorted(members)
    actor = acting_host(decision)
    if actor is not None and actor in live:
        return None
    return live[0] if live else None


Role = Literal["execute", "answer", "silent"]
"""A daemon's part in one request (see :mod:`guestfence.host.backends.tracked`)."""


def role_of(me: str, decision: Decision, members: Iterable[str]) -> Role:
    """``"execute"``, ``"answer"`` (reply without acting) or ``"silent"`` for host ``me``."""
    live = list(members)
    actor = acting_host(decision)
    if actor is not None and actor in live:
        return "execute" if actor == me else "silent"
    return "answer" if responder(decision, live) == me else "silent"


# -- the table -----------------------------------------------------------------------

# An entry's role on its host.
_ACTIVE = 0  # running (or paused outside a migration)
_IN = 1  # migration destination, not resumed
_OUT = 2  # migration source, paused for the switch-over
_OFF = 3  # defined, shut off


class _Entry:
    __slots__ = ("name", "role", "since", "state")

    def __init__(self, name: str, state: int, role: int, since: float) -> None:
        self.name = name
        self.state = state
        self.role = role
        self.since = since


class _Host:
    __slots__ = ("domains", "fenced", "fenced_at", "left_at", "member", "seq")

    def __init__(self) -> None:
        self.member = True
        self.fenced = False
        self.left_at: float | None = None
        self.fenced_at: float | None = None
        self.seq: int | None = None
        self.domains: dict[str, _Entry] = {}


def _role_from_state(st: DomainState, previous: _Entry | None) -> int:
    if st.migrating is Migration.IN:
        return _IN
    if st.migrating is Migration.OUT:
        return _OUT
    if st.state == SHUTOFF:
        return _OFF
    if st.state == PAUSED and previous is not None and previous.role in (_IN, _OUT):
        return previous.role  # a plain listing during a migration keeps what events said
    return _ACTIVE


class LocationTable:
    """Where every guest is, as far as announcements, events and membership tell."""

    def __init__(self, *, trust_running_member: bool = False) -> None:
        """``trust_running_member``: a member showing the guest running wins over the
        listing of a departed host that is not fenced yet. That is the no-host-cluster
        mode (an unreachable host cannot be fenced by us; a reachable one that runs the
        guest is acted on). In host-cluster mode it stays False: the departed host may
        still run a copy, so the answer is Ambiguous (fail) until it is fenced."""
        self.trust_running_member = trust_running_member
        self._hosts: dict[str, _Host] = {}
        self._by_uuid: dict[str, dict[str, _Entry]] = {}
        self._by_name: dict[str, dict[str, int]] = {}  # casefold name -> uuid -> entry count
        self._last_runner: dict[str, str] = {}  # uuid -> host where it last ran unpaused

    # ------------------------------------------------------------------ membership

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            h = self._hosts[host] = _Host()
        return h

    def host_joined(self, host: str, now: float) -> None:
        """``host`` is a member (again). After a fence its old listing is dropped.

        Sequence numbers start afresh: a restarted daemon may count from 0.
        """
        h = self._host(host)
        if h.fenced:
            self._clear(host, h)
        h.member, h.fenced, h.left_at, h.fenced_at, h.seq = True, False, None, None, None

    def host_left(self, host: str, now: float) -> None:
        """``host`` left the membership (or became unreachable); its listing is kept, frozen."""
        h = self._host(host)
        if h.member:
            h.member, h.left_at = False, now

    def host_fenced(self, host: str, now: float) -> None:
        """The host cluster confirmed that ``host`` was fenced: nothing runs there any more."""
        h = self._host(host)
        if h.member:
            h.member, h.left_at = False, now
        h.fenced, h.fenced_at = True, now

    def host_unfenced(self, host: str, now: float) -> None:
        """A host counted as fenced is alive again (seen in the host cluster's ring) but
        not a member: its guests are no longer "off"; only a new fence counts."""
        h = self._hosts.get(host)
        if h is not None and not h.member and h.fenced:
            h.fenced, h.fenced_at, h.left_at = False, None, now

    def members(self) -> list[str]:
        return sorted(name for name, h in self._hosts.items() if h.member)

    def is_member(self, host: str) -> bool:
        h = self._hosts.get(host)
        return h is not None and h.member

    # ------------------------------------------------------------------ inputs

    def _accept(self, host: str, seq: int | None) -> _Host | None:
        h = self._hosts.get(host)
        if h is None:
            h = self._host(host)  # first word from a host: it is a member
        elif not h.member:
            return None  # late message from a host that left: wait for host_joined
        if seq is not None:
            if h.seq is not None and seq <= h.seq:
                return None
            h.seq = seq
        return h

    def announce(self, host: str, domains: Mapping[str, DomainState], now: float,
                 seq: int | None = None) -> bool:
        """Replace everything known of ``host`` by its full listing; False if ignored.

        Ignored when ``seq`` is not above the last one accepted from this host
        since it (re)joined, or when the host has left the membership.
        """
        h = self._accept(host, seq)
        if h is None:
            return False
        fresh: dict[str, DomainState] = {}
        for key, st in domains.items():
            u = st.uuid if st.uuid in self._by_uuid else (  # known keys are canonical
                canonical_uuid(st.uuid) or canonical_uuid(key))
            if u is not None:
                fresh[u] = st
        for u in [u for u in h.domains if u not in fresh]:
            self._remove(host, h, u)
        for u, st in fresh.items():
            prev = h.domains.get(u)
            role = _role_from_state(st, prev)
            if prev is not None and prev.role == role and prev.state == st.state:
                if prev.name != st.name:
                    self._rename(u, prev, st.name)
                continue
            self._set(host, h, u, st.name, st.state, role, now)
        return True

    def event(self, host: str, uuid: str, name: str, kind: Kind | str, detail: str,
              now: float, seq: int | None = None) -> bool:
        """Apply one lifecycle event seen on ``host``; False if ignored (see :meth:`announce`)."""
        u = canonical_uuid(uuid)
        try:
            k = Kind(kind.upper()) if isinstance(kind, str) else kind
        except ValueError:
            return False
        if u is None:
            return False
        h = self._accept(host, seq)
        if h is None:
            return False
        d = detail.upper()
        prev = h.domains.get(u)
        if k is Kind.DEFINED:
            if prev is None:
                self._set(host, h, u, name, SHUTOFF, _OFF, now)
            elif prev.name != name:
                self._rename(u, prev, name)
        elif k is Kind.UNDEFINED:
            if prev is not None and prev.role == _OFF:
                self._remove(host, h, u)
        elif k is Kind.STARTED:
            if d == "MIGRATED":
                self._set(host, h, u, name, PAUSED, _IN, now)
            else:
                self._set(host, h, u, name, RUNNING, _ACTIVE, now)
        elif k is Kind.SUSPENDED:
            if d in ("MIGRATED", "POSTCOPY") and (prev is None or prev.role != _IN):
                self._set(host, h, u, name, PAUSED, _OUT, now)
            else:
                role = _ACTIVE if prev is None or prev.role == _OFF else prev.role
                self._set(host, h, u, name, PAUSED, role, now)
        elif k is Kind.RESUMED:
            self._set(host, h, u, name, RUNNING, _ACTIVE, now)
        elif k is Kind.STOPPED:
            if d == "MIGRATED":
                # The switch-over is done: a destination still shown incoming has the guest.
                self._remove(host, h, u)
                for other, e in self._by_uuid.get(u, {}).items():
                    if e.role == _IN:
                        self._set(other, self._hosts[other], u, e.name, RUNNING, _ACTIVE, now)
            elif d == "FAILED" and prev is not None and prev.role == _IN:
                self._remove(host, h, u)
            else:
                self._set(host, h, u, name, SHUTOFF, _OFF, now)
        elif k is Kind.PMSUSPENDED:
            self._set(host, h, u, name, PMSUSPENDED, _ACTIVE, now)
        elif k is Kind.CRASHED:
            self._set(host, h, u, name, CRASHED, _ACTIVE if prev is None else prev.role, now)
        # SHUTDOWN (a shutdown in progress) changes nothing: STOPPED follows.
        return True

    # ------------------------------------------------------------------ bookkeeping

    def _set(self, host: str, h: _Host, u: str, name: str, state: int, role: int,
             now: float) -> None:
        e = h.domains.get(u)
        if e is None:
            e = h.domains[u] = _Entry(name, state, role, now)
            self._by_uuid.setdefault(u, {})[host] = e
            idx = self._by_name.setdefault(name.casefold(), {})
            idx[u] = idx.get(u, 0) + 1
        else:
            if e.name != name:
                self._rename(u, e, name)
            if e.state != state or e.role != role:
                e.state, e.role, e.since = state, role, now
        if role == _ACTIVE and state != PAUSED:
            self._last_runner[u] = host

    def _rename(self, u: str, e: _Entry, name: str) -> None:
        self._unindex_name(u, e.name)
        idx = self._by_name.setdefault(name.casefold(), {})
        idx[u] = idx.get(u, 0) + 1
        e.name = name

    def _unindex_name(self, u: str, name: str) -> None:
        key = name.casefold()
        idx = self._by_name.get(key)
        if idx is None or u not in idx:
            return
        idx[u] -= 1
        if idx[u] <= 0:
            del idx[u]
            if not idx:
                del self._by_name[key]

    def _remove(self, host: str, h: _Host, u: str) -> None:
        e = h.domains.pop(u, None)
        if e is None:
            return
        self._unindex_name(u, e.name)
        where = self._by_uuid.get(u)
        if where is not None:
            where.pop(host, None)
            if not where:
                del self._by_uuid[u]
                self._last_runner.pop(u, None)

    def _clear(self, host: str, h: _Host) -> None:
        for u in list(h.domains):
            self._remove(host, h, u)

    # ------------------------------------------------------------------ queries

    def uuids(self, target: str) -> list[str]:
        """UUIDs ``target`` (a UUID in any spelling, or a name) refers to: the guests with
        exactly that name, or else those whose name differs only in case."""
        u = canonical_uuid(target)
        if u is not None and u in self._by_uuid:
            return [u]
        named = self._by_name.get(target.casefold(), {})
        # libvirt names are case-sensitive: "db" and "DB" are two guests. The C backends
        # match without case (strcasecmp), kept for a name only known in another case;
        # but a guest with exactly this name is the one meant, never its namesake.
        exact = [u for u in named
                 if any(e.name == target for e in self._by_uuid.get(u, {}).values())]
        return sorted(exact or named)

    def listing(self, host: str) -> dict[str, tuple[str, int]]:
        """What the table holds for ``host``: uuid -> (name, state)."""
        h = self._hosts.get(host)
        if h is None:
            return {}
        return {u: (e.name, e.state) for u, e in h.domains.items()}

    def hosts_listing(self, uuid: str) -> list[str]:
        """Hosts (members or not) whose listing has ``uuid`` not shut off."""
        return sorted(host for host, e in self._by_uuid.get(uuid, {}).items() if e.role != _OFF)

    def owner(self, target: str) -> Decision:
        """Who has ``target`` (name or UUID): see the module docstring."""
        uuids = self.uuids(target)
        if not uuids:
            return Unknown(target)
        if len(uuids) == 1:
            return self._decide(uuids[0], target)
        decisions = [self._decide(u, target) for u in uuids]
        # Same name, different UUIDs: one that is really there wins over shut-off definitions.
        present: list[Decision] = [d for d in decisions if not isinstance(d, Unknown)
                   and not (isinstance(d, Owner) and d.state == SHUTOFF)]
        if len(present) == 1:
            return present[0]
        if not present:
            off = [d for d in decisions if isinstance(d, Owner)]
            if len(off) == 1:
                return off[0]
            if not off:
                return Unknown(target)
            present = list(off)
        hosts: set[str] = set()
        for d in present:
            if isinstance(d, Ambiguous):
                hosts.update(d.hosts)
            elif isinstance(d, Migrating):
                hosts.update((d.src, d.dst))
            elif isinstance(d, Owner | OwnerGone):
                hosts.add(d.host)
        return Ambiguous(tuple(sorted(hosts)), target)

    def _decide(self, u: str, target: str) -> Decision:
        where = self._by_uuid.get(u, {})
        live: list[tuple[str, _Entry]] = []
        gone: list[tuple[str, _Entry]] = []
        for host, e in where.items():
            (live if self._hosts[host].member else gone).append((host, e))
        name = next(iter(where.values())).name if where else target
        live_present = [(h, e) for h, e in live if e.role != _OFF]
        running = [h for h, e in live_present if e.role == _ACTIVE and e.state != PAUSED]
        if len(running) >= 2:
            return Ambiguous(tuple(sorted(running)), target)
        gone_present = [(h, e) for h, e in gone if e.role != _OFF]
        unfenced = [h for h, _ in gone_present if not self._hosts[h].fenced]
        if running and unfenced and not self.trust_running_member:
            return Ambiguous(tuple(sorted({*running, *unfenced})), target)
        if running:  # a live host shows it running: listings of absent hosts lose
            return self._resolve(u, name, live_present, target)
        if live_present or gone_present:
            d = self._resolve(u, name, live_present + gone_present, target)
            actor = acting_host(d)
            if actor is not None and not self._hosts[actor].member:
                # off only when every copy is on a fenced host: a migration's other end
                # (departed unfenced, or live) may hold the guest; name a host still to
                # confirm, so the answerer asks about that one
                host = actor if actor in unfenced or not unfenced else unfenced[0]
                return OwnerGone(host, not live_present and not unfenced, u, name)
            if isinstance(d, Ambiguous) and all(not self._hosts[h].member for h in d.hosts):
                return self._gone(u, name, list(d.hosts))
            if isinstance(d, Unknown) and gone_present:
                return self._gone(u, name, [h for h, _ in gone_present])
            return d
        # Shut off everywhere it is defined.
        if gone:
            return self._gone(u, name, [h for h, _ in gone])
        if live:
            last = self._last_runner.get(u)
            hosts = sorted(h for h, _ in live)
            host = last if last in hosts else hosts[0]
            return Owner(host, u, where[host].name, SHUTOFF)
        return Unknown(target)

    def _gone(self, u: str, name: str, hosts: list[str]) -> OwnerGone:
        last = self._last_runner.get(u)
        host = last if last in hosts else max(hosts, key=lambda h: (self._by_uuid[u][h].since, h))
        return OwnerGone(host, all(self._hosts[h].fenced for h in hosts), u, name)

    def _resolve(self, u: str, name: str, present: list[tuple[str, _Entry]],
                 target: str) -> Decision:
        """Owner among hosts listing the guest (not shut off), ignoring membership."""
        run = [h for h, e in present if e.role == _ACTIVE and e.state != PAUSED]
        paused = [h for h, e in present if e.role == _ACTIVE and e.state == PAUSED]
        outgoing = [h for h, e in present if e.role == _OUT]
        incoming = [h for h, e in present if e.role == _IN]
        every = tuple(sorted(h for h, _ in present))
        if len(run) >= 2 or len(outgoing) >= 2 or len(every) > 2:
            return Ambiguous(every, target)
        last = self._last_runner.get(u)
        if run:
            owner = run[0]
            others = [h for h in every if h != owner]
            if not others:
                return Owner(owner, u, name, RUNNING)
            other = others[0]
            entries = dict(present)
            if other in outgoing or (other in paused
                                     and entries[other].since <= entries[owner].since):
                return Migrating(other, owner, owner, u, name)  # after the switch-over
            return Migrating(owner, other, owner, u, name)  # destination not resumed yet
        if outgoing:
            src = outgoing[0]
            others = [h for h in every if h != src]
            if not others:
                return Owner(src, u, name, PAUSED)  # the destination went away: source keeps it
            return Migrating(src, others[0], src, u, name)
        if len(paused) == 1:
            if not incoming:
                return Owner(paused[0], u, name, PAUSED)
            return Migrating(paused[0], incoming[0], paused[0], u, name)
        if len(paused) == 2:
            # Both paused, no migration hints: the host it last ran on is the source.
            if last in paused:
                dst = paused[0] if paused[1] == last else paused[1]
                return Migrating(last, dst, last, u, name)
            return Ambiguous(every, target)
        # Only incoming destinations and nobody running the guest: not there yet.
        return Unknown(target)

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        """Number of distinct UUIDs known."""
        return len(self._by_uuid)


# -- static mode --------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """Something the static map does not allow, for loud reporting."""

    kind: str
    """``"unmapped"`` (running on a host the map does not give it), ``"migrating"``,
    ``"mapped-twice"`` (the map itself gives one guest to two hosts)."""
    guest: str
    host: str
    mapped_to: tuple[str, ...]
    detail: str


class StaticMap:
    """Config ``host -> guests`` (names or UUIDs); a daemon acts only for its own guests."""

    def __init__(self, mapping: Mapping[str, Iterable[str]]) -> None:
        self._hosts_of: dict[str, set[str]] = {}  # casefold name or canonical uuid -> hosts
        for host, guests in mapping.items():
            for g in guests:
                self._hosts_of.setdefault(self._key(g), set()).add(host)

    @staticmethod
    def _key(guest: str) -> str:
        return canonical_uuid(guest) or guest.casefold()

    def mapped_hosts(self, name: str, uuid: str | None = None) -> set[str]:
        hosts = set(self._hosts_of.get(name.casefold(), ()))
        if uuid is not None:
            hosts |= self._hosts_of.get(self._key(uuid), set())
        return hosts

    def mapped_for(self, target: str, decision: Decision) -> set[str]:
        """The hosts the map gives ``target``, asked for by the decision's name and UUID
        (when it names a guest) and by ``target`` as written."""
        if isinstance(decision, Owner | Migrating | OwnerGone):
            return self.mapped_hosts(decision.name, decision.uuid) | self.mapped_hosts(target)
        return self.mapped_hosts(target)

    def check(self, table: LocationTable) -> list[Violation]:
        """Guests present where the map does not put them, migrations, double entries."""
        out: list[Violation] = []
        twice = {key for key, hosts in self._hosts_of.items() if len(hosts) > 1}
        for key, hosts in sorted(self._hosts_of.items()):
            if len(hosts) > 1:
                out.append(Violation("mapped-twice", key, sorted(hosts)[0],
                                     tuple(sorted(hosts)), "the map gives this guest to "
                                     f"{len(hosts)} hosts"))
        for u in sorted(table._by_uuid):
            where = table._by_uuid[u]
            present = sorted(h for h, e in where.items() if e.role != _OFF)
            if not present:
                continue
            name = where[present[0]].name
            mapped = self.mapped_hosts(name, u)
            if len(mapped) > 1 and not {name.casefold(), u} & twice:
                out.append(Violation("mapped-twice", name, sorted(mapped)[0],
                                     tuple(sorted(mapped)), "the map gives this guest (by "
                                     f"name and UUID) to {len(mapped)} hosts"))
            roles = {where[h].role for h in present}
            if _IN in roles or _OUT in roles or len(present) > 1:
                out.append(Violation("migrating", name, ",".join(present),
                                     tuple(sorted(mapped)),
                                     f"listed on {', '.join(present)} (live migration?)"))
            for h in present:
                if h not in mapped:
                    out.append(Violation(
                        "unmapped", name, h, tuple(sorted(mapped)),
                        f"{name} ({u}) runs on {h}; the map gives it to "
                        f"{', '.join(sorted(mapped)) or 'no host'}"))
        return out

    def decide(self, table: LocationTable, target: str) -> Decision:
        """The table's decision, allowed only when it agrees with the map; Ambiguous otherwise.

        A guest the map does not know, one running elsewhere, or one in a
        migration gives :class:`Ambiguous` (answer fail); one the table has
        not seen anywhere gives :class:`Unknown`.
        """
        d = table.owner(target)
        if isinstance(d, Unknown):
            return d
        mapped = self.mapped_for(target, d)
        if isinstance(d, Owner) and mapped == {d.host}:
            return d
        seen: set[str] = set(mapped)
        if isinstance(d, Owner | OwnerGone):
            seen.add(d.host)
        elif isinstance(d, Migrating):
            seen |= {d.src, d.dst}
        else:
            seen |= set(d.hosts)
        return Ambiguous(tuple(sorted(seen)), target)
