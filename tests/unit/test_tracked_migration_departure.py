"""Both ends of a live migration depart: "off" only once every host with a copy is fenced."""

from __future__ import annotations

from guestfence.host.backends.tracked import TrackedBackend
from guestfence.tracking import DomainState, Kind, LocationTable, OwnerGone
from guestfence.tracking.locations import RUNNING
from guestfence.virt.wire import Op, Result

from .test_tracked_backend import U1, FakeTracker


def migrating_h1_to_h3(resumed: bool) -> LocationTable:
    t = LocationTable()
    for host in ("h1", "h2", "h3"):
        t.host_joined(host, 0.0)
    t.announce("h1", {U1: DomainState("vm1", U1, RUNNING)}, 0.0, 1)
    t.event("h3", U1, "vm1", Kind.STARTED, "MIGRATED", 1.0, 1)
    t.event("h1", U1, "vm1", Kind.SUSPENDED, "MIGRATED", 1.01, 2)
    if resumed:
        t.event("h3", U1, "vm1", Kind.RESUMED, "MIGRATED", 1.02, 2)
    t.host_left("h1", 2.0)  # a partition takes both ends away
    t.host_left("h3", 2.0)
    return t


def test_the_table_counts_every_end_of_the_migration() -> None:
    for resumed, owner, other in ((False, "h1", "h3"), (True, "h3", "h1")):
        t = migrating_h1_to_h3(resumed)
        assert t.owner("vm1") == OwnerGone(owner, False, U1, "vm1")
        t.host_fenced(owner, 3.0)
        # the other end may hold (or have resumed, or resume) the guest: not off, and it
        # is the host named for confirmation now
        assert t.owner("vm1") == OwnerGone(other, False, U1, "vm1")
        t.host_fenced(other, 3.0)
        assert t.owner("vm1") == OwnerGone(owner, True, U1, "vm1")


def test_the_answerer_confirms_each_departed_end_before_success() -> None:
    t = migrating_h1_to_h3(resumed=False)
    tracker = FakeTracker("h2", t, fenced={"h1"})
    backend = TrackedBackend(tracker)  # type: ignore[arg-type]
    assert backend.execute(Op.OFF, "vm1") == Result.FAIL  # h3 not fenced
    assert tracker.confirm_calls == ["h1", "h3"]
    assert backend.execute(Op.STATUS, "vm1") == Result.FAIL
    tracker.fenced.add("h3")
    assert backend.execute(Op.OFF, "vm1") == Result.SUCCESS
    assert backend.execute(Op.STATUS, "vm1") == Result.OFF


def test_a_status_asked_just_after_the_guest_moved_away_answers_on_never_off() -> None:
    from guestfence.tracking.locations import SHUTOFF

    t = LocationTable()
    for host in ("h1", "h2"):
        t.host_joined(host, 0.0)
    t.announce("h2", {U1: DomainState("vm1", U1, RUNNING)}, 0.0, 1)  # resumed on h2
    backend = TrackedBackend(FakeTracker("h1", t))  # type: ignore[arg-type]
    assert backend.execute(Op.STATUS, "vm1") == Result.SUCCESS  # running, on h2
    assert backend.execute(Op.OFF, "vm1") == Result.FAIL  # only h2 acts
    t.announce("h2", {U1: DomainState("vm1", U1, SHUTOFF)}, 1.0, 2)
    assert backend.execute(Op.STATUS, "vm1") == Result.FAIL  # "off" only from h2's libvirt
