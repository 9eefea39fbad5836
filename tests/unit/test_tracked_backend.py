"""The tracked backend: decision + role -> answer (pure), and acting through a fake tracker."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from guestfence.host.backends.libvirt import DomainInfo
from guestfence.host.backends.tracked import (
    Execute,
    Reply,
    Silent,
    TrackedBackend,
    plan,
    request_role,
)
from guestfence.tracking import (
    Ambiguous,
    Decision,
    DomainState,
    Kind,
    LocationTable,
    Migrating,
    Owner,
    OwnerGone,
    Unknown,
)
from guestfence.tracking.locations import PAUSED, RUNNING, SHUTOFF
from guestfence.tracking.tracker import GuestLocation, Mode, TrackingSnapshot
from guestfence.virt.wire import Op, Result

U1 = "6f1c1e0a-2b4d-4c1e-9f00-000000000001"


# -- the pure mapping ---------------------------------------------------------------------


def test_owner_executes_on_its_host() -> None:
    d = Owner("h1", U1, "vm1", RUNNING)
    assert plan(Op.OFF, d, "execute") == Execute("h1", U1)
    assert plan(Op.STATUS, d, "execute") == Execute("h1", U1)


def test_migrating_executes_on_the_current_owner() -> None:
    d = Migrating("h1", "h2", "h2", U1, "vm1")
    assert plan(Op.OFF, d, "execute") == Execute("h2", U1)


def test_silent_role_never_answers() -> None:
    assert isinstance(plan(Op.OFF, Owner("h2", U1, "vm1", RUNNING), "silent"), Silent)


@pytest.mark.parametrize("op", [Op.OFF, Op.REBOOT, Op.STATUS, Op.ON])
def test_unfenced_departed_owner_fails(op: int) -> None:
    step = plan(op, OwnerGone("h1", False, U1, "vm1"), "answer")
    assert isinstance(step, Reply) and step.code == Result.FAIL
    assert step.reason == ("vm1: owner h1 left the host cluster and is not confirmed fenced: "
                           "fail")


def test_fenced_departed_owner_is_off() -> None:
    gone = OwnerGone("h1", True, U1, "vm1")
    assert plan(Op.OFF, gone, "answer").code == Result.SUCCESS  # type: ignore[union-attr]
    assert plan(Op.REBOOT, gone, "answer").code == Result.SUCCESS  # type: ignore[union-attr]
    assert plan(Op.STATUS, gone, "answer").code == Result.OFF  # type: ignore[union-attr]
    assert plan(Op.ON, gone, "answer").code == Result.FAIL  # type: ignore[union-attr]


@pytest.mark.parametrize("decision", [Ambiguous(("h1", "h2"), "vm1"), Unknown("vm1"),
                                      Owner("h3", U1, "vm1", RUNNING)])
@pytest.mark.parametrize("op", [Op.OFF, Op.REBOOT, Op.STATUS])
def test_answer_without_a_live_owner_is_never_success(decision: Decision, op: int) -> None:
    step = plan(op, decision, "answer")
    assert isinstance(step, Reply) and step.code == Result.FAIL and step.reason


def test_roles_follow_role_of_and_the_management_mode() -> None:
    owner = Owner("h2", U1, "vm1", RUNNING)
    assert request_role("h1", owner, ["h1", "h2"]) == "silent"
    assert request_role("h2", owner, ["h1", "h2"]) == "execute"
    # a management daemon acts on every live host and answers the rest
    assert request_role("", owner, ["h1", "h2"], answers_all=True) == "execute"
    assert request_role("", owner, ["h1"], answers_all=True) == "answer"
    assert request_role("", Unknown("vm1"), ["h1"], answers_all=True) == "answer"


# -- the backend over a fake tracker -----------------------------------------------------


class FakeExecutor:
    """A host's libvirt as LibvirtBackend shows it: uuid -> state; off makes it SHUTOFF."""

    def __init__(self, domains: dict[str, int], off_result: int = Result.SUCCESS) -> None:
        self.domains = domains
        self.off_result = off_result
        self.calls: list[tuple[int, str]] = []

    def lookup(self, target: str) -> DomainInfo | None:
        state = self.domains.get(target)
        return None if state is None else DomainInfo("vm1", target, state, "fake://")

    def execute(self, op: int, target: str) -> int:
        self.calls.append((op, target))
        if target not in self.domains:
            return Result.FAIL
        if op == Op.STATUS:
            return Result.OFF if self.domains[target] == SHUTOFF else Result.SUCCESS
        if op == Op.OFF:
            if self.off_result == Result.SUCCESS:
                self.domains[target] = SHUTOFF
            return self.off_result
        return Result.SUCCESS


@dataclass
class FakeTracker:
    me: str
    table: LocationTable
    executors: dict[str, FakeExecutor] = field(default_factory=dict)
    fenced: set[str] = field(default_factory=set)
    mode: Mode = "cpg"
    confirm_calls: list[str] = field(default_factory=list)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def decide(self, target: str) -> Decision:
        return self.table.owner(target)

    def members(self) -> list[str]:
        return self.table.members()

    def confirm_fenced(self, host: str) -> bool:
        self.confirm_calls.append(host)
        if host in self.fenced:
            self.table.host_fenced(host, 1.0)
            return True
        return False

    def executor(self, host: str) -> FakeExecutor | None:  # type: ignore[override]
        return self.executors.get(host)

    def snapshot(self) -> TrackingSnapshot:
        guests = []
        for host in self.table.members():
            for u, (name, state) in self.table.listing(host).items():
                guests.append(GuestLocation(name, u, host, state, "owner"))
        return TrackingSnapshot(self.mode, self.me, tuple(self.members()), tuple(guests), 0)


def table_with(where: dict[str, int]) -> LocationTable:
    t = LocationTable()
    for host in ("h1", "h2", "h3"):
        t.host_joined(host, 0.0)
        t.announce(host, {U1: DomainState("vm1", U1, where[host])} if host in where else {},
                   0.0, seq=1)
    return t


def test_owner_daemon_executes_verified_off_others_stay_silent() -> None:
    t = table_with({"h2": RUNNING})
    ex = FakeExecutor({U1: RUNNING})
    owner = TrackedBackend(FakeTracker("h2", t, {"h2": ex}))  # type: ignore[arg-type]
    other = TrackedBackend(FakeTracker("h1", t, {"h2": ex}))  # type: ignore[arg-type]
    assert owner.owns("vm1") and not other.owns("vm1")
    assert owner.lookup("vm1") is not None and owner.lookup("vm1").uuid == U1  # type: ignore
    assert owner.execute(Op.STATUS, "vm1") == Result.SUCCESS
    assert owner.execute(Op.OFF, "vm1") == Result.SUCCESS
    assert ex.calls[-1] == (Op.OFF, U1)  # acted by UUID, not by a name that may repeat
    assert owner.host_list()[0].uuid == U1
    assert other.host_list() == []


def test_failed_off_is_failure() -> None:
    t = table_with({"h2": RUNNING})
    ex = FakeExecutor({U1: RUNNING}, off_result=Result.FAIL)
    assert TrackedBackend(FakeTracker("h2", t, {"h2": ex})).execute(  # type: ignore[arg-type]
        Op.OFF, "vm1") == Result.FAIL


def test_departed_owner_fails_until_confirmed_fenced(caplog: pytest.LogCaptureFixture) -> None:
    t = table_with({"h1": RUNNING})
    t.host_left("h1", 1.0)
    tracker = FakeTracker("h2", t)
    backend = TrackedBackend(tracker)  # type: ignore[arg-type]
    assert backend.owns("vm1")  # h2 is the lowest live member: it answers
    assert not TrackedBackend(FakeTracker("h3", t)).owns("vm1")  # type: ignore[arg-type]
    assert backend.execute(Op.OFF, "vm1") == Result.FAIL
    assert "vm1: owner h1 left the host cluster and is not confirmed fenced: fail" in caplog.text
    assert tracker.confirm_calls == ["h1"]
    tracker.fenced.add("h1")
    assert backend.execute(Op.OFF, "vm1") == Result.SUCCESS
    assert backend.execute(Op.STATUS, "vm1") == Result.OFF


def test_ambiguous_fails_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    t = table_with({"h1": RUNNING, "h2": RUNNING})
    backend = TrackedBackend(FakeTracker("h1", t))  # type: ignore[arg-type]
    assert backend.owns("vm1")
    assert backend.execute(Op.OFF, "vm1") == Result.FAIL
    assert "listed on h1, h2" in caplog.text


def test_off_during_migration_also_powers_off_the_destination() -> None:
    t = table_with({"h1": RUNNING})
    t.event("h2", U1, "vm1", Kind.STARTED, "MIGRATED", 1.0)
    t.event("h1", U1, "vm1", Kind.SUSPENDED, "MIGRATED", 1.1)
    src, dst = FakeExecutor({U1: PAUSED}), FakeExecutor({U1: RUNNING})  # dst resumed already
    tracker = FakeTracker("h1", t, {"h1": src, "h2": dst}, mode="multi-libvirt")
    assert tracker.decide("vm1") == Migrating("h1", "h2", "h1", U1, "vm1")
    assert TrackedBackend(tracker).execute(Op.OFF, "vm1") == Result.SUCCESS  # type: ignore
    assert src.domains[U1] == SHUTOFF and dst.domains[U1] == SHUTOFF


def test_status_follows_a_guest_that_just_left() -> None:
    t = table_with({"h1": RUNNING})
    src, dst = FakeExecutor({}), FakeExecutor({U1: RUNNING})  # gone from h1 already

    class Moving(FakeTracker):
        def executor(self, host: str) -> FakeExecutor | None:  # type: ignore[override]
            ex = super().executor(host)
            if host == "h1":  # the events arrive while we ask h1
                self.table.event("h2", U1, "vm1", Kind.RESUMED, "MIGRATED", 2.0)
                self.table.event("h1", U1, "vm1", Kind.STOPPED, "MIGRATED", 2.0)
            return ex

    tracker = Moving("", t, {"h1": src, "h2": dst}, mode="multi-libvirt")
    tracker.answers_all = True  # type: ignore[attr-defined]
    assert TrackedBackend(tracker).execute(Op.STATUS, "vm1") == Result.SUCCESS  # type: ignore
    assert dst.calls == [(Op.STATUS, U1)]


def test_monitor_needs_this_host_in_the_membership() -> None:
    t = table_with({})
    assert TrackedBackend(FakeTracker("h1", t)).execute(  # type: ignore[arg-type]
        Op.DEVSTATUS, "") == Result.SUCCESS
    t.host_left("h1", 1.0)
    assert TrackedBackend(FakeTracker("h1", t)).execute(  # type: ignore[arg-type]
        Op.DEVSTATUS, "") == Result.FAIL


def test_a_stopped_transient_guest_is_off_not_unknown() -> None:
    """A transient guest destroyed on a host we reach is gone from libvirt: that is off."""
    t = table_with({"h1": RUNNING})
    t.event("h1", U1, "vm1", Kind.STOPPED, "DESTROYED", 1.0)
    ex = FakeExecutor({})  # libvirt no longer lists it
    backend = TrackedBackend(FakeTracker("h1", t, {"h1": ex}))  # type: ignore[arg-type]
    assert backend.execute(Op.STATUS, "vm1") == Result.OFF
    assert backend.execute(Op.OFF, "vm1") == Result.SUCCESS
    assert backend.execute(Op.ON, "vm1") == Result.FAIL


def test_a_copy_vanishing_while_it_is_read_counts_as_gone() -> None:
    """The destination of a failed migration removes its copy while we look it up."""
    from guestfence.errors import BackendError

    class Vanishing(FakeExecutor):
        reads = 0

        def lookup(self, target: str) -> DomainInfo | None:
            self.reads += 1
            if self.reads == 1:
                raise BackendError("lookup failed: Domain not found")
            return None

    t = table_with({"h1": RUNNING})
    t.event("h2", U1, "vm1", Kind.STARTED, "MIGRATED", 1.0)
    src, dst = FakeExecutor({U1: RUNNING}), Vanishing({})
    tracker = FakeTracker("h1", t, {"h1": src, "h2": dst}, mode="multi-libvirt")
    assert TrackedBackend(tracker).execute(Op.OFF, "vm1") == Result.SUCCESS  # type: ignore
    assert dst.reads == 2 and dst.calls == []
