"""The daemon's backend for the three host modes: a location tracker decides, a host acts.

:class:`TrackedBackend` puts the daemon's :class:`~guestfence.host.server.Backend`
protocol on top of any :class:`~guestfence.tracking.tracker.Tracker`. For every
request the tracker's decision and membership give this daemon a role
(:func:`request_role`) and the role and operation give the answer (:func:`plan`,
pure and unit-tested):

``execute``
    carry the operation out through ``tracker.executor(acting host)``, a
    :class:`~guestfence.host.backends.libvirt.LibvirtBackend` that answers
    success for off only once libvirt shows the guest off;
``answer``
    nobody live owns the guest: success for off/reboot (status off) only when the
    owner host left and is confirmed fenced; failure otherwise, with a log line
    saying why;
``silent``
    another daemon answers: :meth:`TrackedBackend.owns` is False, so a shared
    multicast group hears one answer.

A live migration can finish between the decision and the operation. After an
``off`` the other reachable hosts are checked directly and any copy found there
(the destination of a migration) is powered off too, so success still means
"off everywhere we can see"; a status or a failed operation on a host the guest
has just left is asked again of the new owner (at most :data:`MAX_ATTEMPTS`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from guestfence.errors import BackendError
from guestfence.tracking.locations import (
    SHUTOFF,
    Ambiguous,
    Decision,
    Migrating,
    Owner,
    OwnerGone,
    Role,
    Unknown,
    acting_host,
    role_of,
)
from guestfence.tracking.tracker import Tracker, TrackingSnapshot
from guestfence.virt.wire import HostRecord, Op, Result

if TYPE_CHECKING:
    from guestfence.host.backends.libvirt import DomainInfo, LibvirtBackend

log = logging.getLogger("guestfenced")

MAX_ATTEMPTS = 3
TARGETED_OPS = (Op.OFF, Op.ON, Op.REBOOT, Op.STATUS)


@runtime_checkable
class RoleDeciding(Protocol):
    """A tracker that knows better than :func:`role_of` when this daemon answers.

    The static tracker (only the mapped host answers, even for a guest it does
    not see) and a multi-libvirt management daemon (answers for every host)."""

    def role_for(self, target: str, decision: Decision, members: list[str]) -> Role: ...


@dataclass(frozen=True)
class TrackedDomain:
    """What :meth:`TrackedBackend.lookup` returns: enough for the per-domain lock."""

    name: str
    uuid: str
    host: str | None
    state: int


# -- the pure part ------------------------------------------------------------------


@dataclass(frozen=True)
class Execute:
    host: str
    uuid: str


@dataclass(frozen=True)
class Reply:
    code: int
    reason: str
    """Why, for the log (empty for an unremarkable answer)."""


@dataclass(frozen=True)
class Silent:
    reason: str


Plan = Execute | Reply | Silent


def request_role(me: str, decision: Decision, members: list[str], *,
                 answers_all: bool = False) -> Role:
    """This daemon's role: :func:`role_of`, or, for a daemon that answers for every host
    (``answers_all``), execute wherever a live host acts and answer otherwise."""
    if not answers_all:
        return role_of(me, decision, members)
    actor = acting_host(decision)
    return "execute" if actor is not None and actor in members else "answer"


def _name(decision: Decision) -> str:
    if isinstance(decision, Owner | Migrating | OwnerGone):
        return decision.name
    return decision.target


GONE_PHRASE: dict[str, str] = {
    "cpg": "left the host cluster",
    "multi-libvirt": "is unreachable",
    "static": "is unreachable (its libvirt does not answer)",
}
"""How each mode says that a guest's owner host is no longer a member."""


def plan(op: int, decision: Decision, role: Role, gone: str = GONE_PHRASE["cpg"]) -> Plan:
    """What to do for ``op`` given the decision and this daemon's role (no I/O).

    Never a success that is not verified: without an acting live host the only
    success is off/reboot of a guest whose host was confirmed fenced. ``gone``
    words a departed owner in the log line ("left the host cluster").
    """
    name = _name(decision)
    if role == "silent":
        actor = acting_host(decision)
        return Silent(f"{name}: {actor} acts" if actor else f"{name}: another host answers")
    if role == "execute":
        actor = acting_host(decision)
        if isinstance(decision, Owner | Migrating) and actor is not None:
            return Execute(actor, decision.uuid)
        return Reply(Result.FAIL, f"{name}: no host to act on: fail")  # role_of never does this
    # role == "answer": no live owner
    if isinstance(decision, OwnerGone):
        if not decision.fenced:
            return Reply(Result.FAIL, f"{name}: owner {decision.host} {gone} and is not "
                         "confirmed fenced: fail")
        if op == Op.STATUS:
            return Reply(Result.OFF, f"{name}: owner {decision.host} was fenced: off")
        if op in (Op.OFF, Op.REBOOT):
            return Reply(Result.SUCCESS, f"{name}: owner {decision.host} was fenced: "
                         "already off")
        return Reply(Result.FAIL, f"{name}: owner {decision.host} was fenced; cannot power "
                     "it on from here: fail")
    if isinstance(decision, Ambiguous):
        return Reply(Result.FAIL, f"{name}: listed on {', '.join(decision.hosts)} "
                     "(not one owner): fail")
    if isinstance(decision, Unknown):
        return Reply(Result.FAIL, f"{name}: not found on any reachable host: fail")
    actor = acting_host(decision)
    return Reply(Result.FAIL, f"{name}: its host {actor} is not reachable: fail")


# -- the backend -----------------------------------------------------------------------

LOOKUP_TRIES = 3


def _lookup_settled(ex: LibvirtBackend, uuid: str) -> DomainInfo | None:
    """``ex.lookup``, asked again when it fails: a domain that libvirt removes while we
    read it (the end of a failed incoming migration) fails the read once, then is gone."""
    for attempt in range(1, LOOKUP_TRIES + 1):
        try:
            return ex.lookup(uuid)
        except BackendError:
            if attempt == LOOKUP_TRIES:
                raise
    return None


class TrackedBackend:
    """The daemon's Backend on top of a location tracker (static, cpg, multi-libvirt)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.name = f"tracked-{tracker.mode}"

    # ------------------------------------------------------------ decisions

    @property
    def _answers_all(self) -> bool:
        """A multi-libvirt management daemon (no host_name) answers for every host."""
        return bool(getattr(self.tracker, "answers_all", False))

    def _role(self, target: str, decision: Decision, members: list[str]) -> Role:
        if isinstance(self.tracker, RoleDeciding):
            return self.tracker.role_for(target, decision, members)
        return request_role(self.tracker.me, decision, members, answers_all=self._answers_all)

    def resolve(self, target: str) -> tuple[Decision, Role]:
        """The decision and this daemon's role; asks for fencing confirmation when needed."""
        decision = self.tracker.decide(target)
        members = self.tracker.members()
        role = self._role(target, decision, members)
        asked: set[str] = set()
        # every departed host holding a copy must be confirmed (the decision names one
        # still to confirm); a confirmation is recorded in the tracker's table, so the
        # decision is taken again from it, never patched here
        while (role == "answer" and isinstance(decision, OwnerGone) and not decision.fenced
               and decision.host not in asked):
            gone = decision.host
            asked.add(gone)
            try:
                fenced = self.tracker.confirm_fenced(gone)
            except BackendError as e:
                log.error("%s: cannot ask whether host %s was fenced: %s", decision.name, gone, e)
                fenced = False
            if not fenced:
                break
            decision = self.tracker.decide(target)
            members = self.tracker.members()
            role = self._role(target, decision, members)
        return decision, role

    def lookup(self, target: str) -> TrackedDomain | None:
        decision = self.tracker.decide(target)
        if isinstance(decision, Owner):
            return TrackedDomain(decision.name, decision.uuid, decision.host, decision.state)
        if isinstance(decision, Migrating):
            return TrackedDomain(decision.name, decision.uuid, decision.owner, -1)
        if isinstance(decision, OwnerGone):
            return TrackedDomain(decision.name, decision.uuid, None, -1)
        return None

    def owns(self, target: str) -> bool:
        """Whether this daemon answers for ``target`` (cheap: no fencing confirmation)."""
        decision = self.tracker.decide(target)
        return self._role(target, decision, self.tracker.members()) != "silent"

    def snapshot(self) -> TrackingSnapshot:
        return self.tracker.snapshot()

    @property
    def uris(self) -> tuple[str, ...]:
        """The libvirt URIs the tracker follows, when it says (for the admin view)."""
        return tuple(getattr(self.tracker, "uris", ()) or ())

    def healthy(self) -> bool:
        """This daemon can answer: its host is a member (or, answering for every host,
        at least one host is reachable)."""
        members = self.tracker.members()
        if self._answers_all:
            return bool(members)
        return self.tracker.me in members

    # ------------------------------------------------------------ operations

    def execute(self, op: int, target: str) -> int:
        if op == Op.DEVSTATUS:
            return Result.SUCCESS if self.healthy() else Result.FAIL
        if op not in TARGETED_OPS:
            return Result.FAIL
        for attempt in range(1, MAX_ATTEMPTS + 1):
            decision, role = self.resolve(target)
            step = plan(op, decision, role, GONE_PHRASE.get(self.tracker.mode, "left"))
            if isinstance(step, Reply):
                if step.code == Result.FAIL and step.reason:
                    log.warning("%s", step.reason)
                elif step.reason:
                    log.info("%s", step.reason)
                return step.code
            if isinstance(step, Silent):
                # asked although another host acts (it took the guest over by a live
                # migration since this daemon chose to answer): a status can still be
                # true without acting; anything else is left to the acting host
                if op == Op.STATUS and self._running_elsewhere(decision):
                    log.info("%s; it runs there: on", step.reason)
                    return Result.SUCCESS
                log.warning("%s; this host does not answer for it: fail", step.reason)
                return Result.FAIL
            code, moved = self._act(op, step, decision)
            if not moved or attempt == MAX_ATTEMPTS:
                return code
            log.info("%s: left %s during %s; asking its new host", _name(decision), step.host,
                     Op(op).name.lower())
        return Result.FAIL

    def _running_elsewhere(self, decision: Decision) -> bool:
        """The guest is on a live host that acts for it, not shut off (never "off" from
        here: only the acting host verifies that)."""
        actor = acting_host(decision)
        if actor is None or actor not in self.tracker.members():
            return False
        return isinstance(decision, Migrating) or (
            isinstance(decision, Owner) and decision.state != SHUTOFF)

    def _act(self, op: int, step: Execute, decision: Decision) -> tuple[int, bool]:
        """Carry out ``op`` on the acting host; (result, whether the guest moved meanwhile)."""
        name = _name(decision)
        ex = self.tracker.executor(step.host)
        if ex is None:
            log.warning("%s: runs on %s, which this daemon cannot act on: fail", name, step.host)
            return Result.FAIL, False
        code = ex.execute(op, step.uuid)
        if op in (Op.OFF, Op.REBOOT) and code == Result.SUCCESS:
            # the destination of a migration may have taken over while we acted
            return (Result.SUCCESS if self._off_elsewhere(step, name) else Result.FAIL), False
        if code == Result.SUCCESS:
            return code, False
        after = self.tracker.decide(step.uuid)
        if (op in (Op.STATUS, Op.OFF, Op.REBOOT) and code == Result.FAIL
                and isinstance(after, Owner) and after.host == step.host
                and after.state == SHUTOFF and self._vanished(ex, step.uuid)):
            # A transient guest that stopped is gone from libvirt (no UNDEFINED event):
            # the tracker saw it stop on a host we reach and nobody runs it. Off.
            if op == Op.STATUS:
                return Result.OFF, False
            return (Result.SUCCESS if self._off_elsewhere(step, name) else Result.FAIL), False
        actor = acting_host(after)
        return code, actor is not None and actor != step.host

    @staticmethod
    def _vanished(ex: LibvirtBackend, uuid: str) -> bool:
        try:
            return _lookup_settled(ex, uuid) is None
        except BackendError:
            return False

    def _off_elsewhere(self, step: Execute, name: str) -> bool:
        """After a verified off on the acting host: no copy left on any other live host.

        Hosts with an executor are asked directly (and a copy is powered off:
        a migration destination that took over, or an incoming copy being torn
        down); otherwise the tracker's view must not show the guest elsewhere.
        """
        ok = True
        for host in self.tracker.members():
            if host == step.host:
                continue
            ex = self.tracker.executor(host)
            if ex is None:
                continue
            try:
                info = _lookup_settled(ex, step.uuid)
            except BackendError as e:
                log.warning("%s: cannot check %s after off: %s", name, host, e)
                ok = False
                continue
            if info is None or info.state == SHUTOFF:
                continue
            log.warning("%s: a copy is on %s after off on %s (migration); powering it off",
                        name, host, step.host)
            if ex.execute(Op.OFF, step.uuid) != Result.SUCCESS:
                try:
                    again = _lookup_settled(ex, step.uuid)
                except BackendError:
                    again = info
                if again is not None and again.state != SHUTOFF:
                    log.warning("%s: the copy on %s is still there: fail", name, host)
                    ok = False
        out_of_reach = getattr(self.tracker, "copies_out_of_reach", None)
        if out_of_reach is not None:
            # multi-libvirt acts on a reachable host that runs the guest even when an
            # unreachable one last listed it too; that copy may still run (a partition,
            # a migration its source resumed): off here, but no success
            away = [h for h in out_of_reach(step.uuid) if h != step.host]
            if away:
                log.warning("%s: off on %s, but unreachable %s last listed a copy: fail",
                            name, step.host, ", ".join(away))
                ok = False
        after = self.tracker.decide(step.uuid)
        actor = acting_host(after)
        if isinstance(after, Owner) and after.state == SHUTOFF:
            actor = None
        if actor is not None and actor != step.host and self.tracker.executor(actor) is None:
            log.warning("%s: now runs on %s after off on %s: fail", name, actor, step.host)
            ok = False
        return ok

    def host_list(self) -> list[HostRecord]:
        """The guests this daemon would execute for, from the tracker's snapshot."""
        snap = self.tracker.snapshot()
        records: list[HostRecord] = []
        for g in snap.guests:
            if g.host is None:
                continue
            decision = self.tracker.decide(g.uuid)
            if self._role(g.uuid, decision, list(snap.members)) == "execute":
                records.append(HostRecord(g.name, g.uuid, max(g.state, 0)))
        return sorted(records, key=lambda r: r.name.lower())

    def close(self) -> None:
        """Nothing to close here: the tracker is stopped by the daemon (``await stop()``)."""
