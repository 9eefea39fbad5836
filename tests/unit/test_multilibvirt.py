"""No-host-cluster mode: one feed per host, members = reachable hosts, who answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guestfence.errors import BackendError
from guestfence.host.backends.tracked import TrackedBackend
from guestfence.lab.testdriver import Guest, node_uri, write_node_xml
from guestfence.tracking import DomainState, Kind, Migrating, Owner, OwnerGone
from guestfence.tracking.locations import RUNNING
from guestfence.tracking.multilibvirt import MultiLibvirtTracker
from guestfence.virt.wire import Op, Result

U1 = "6f1c1e0a-2b4d-4c1e-9f00-000000000001"
U2 = "6f1c1e0a-2b4d-4c1e-9f00-000000000002"


def offline(me: str | None, where: dict[str, dict[str, str]],
            reachable: tuple[str, ...] = ("h1", "h2")) -> MultiLibvirtTracker:
    """A tracker fed by hand: ``where`` = host -> {uuid: name} running there."""
    t = MultiLibvirtTracker({h: f"test:///{h}" for h in ("h1", "h2", "h3")}, me)
    for host in ("h1", "h2", "h3"):
        t._table.host_joined(host, 0.0)
        t._table.announce(host, {u: DomainState(n, u, RUNNING)
                                 for u, n in where.get(host, {}).items()}, 0.0)
        if host in reachable:
            t._feeds[host].connected = True
        else:
            t._table.host_left(host, 1.0)
    return t


def test_each_host_daemon_answers_for_its_own_guests() -> None:
    where = {"h1": {U1: "vm1"}, "h2": {U2: "vm2"}}
    d1, d2 = TrackedBackend(offline("h1", where)), TrackedBackend(offline("h2", where))
    assert d1.owns("vm1") and not d2.owns("vm1")
    assert d2.owns("vm2") and not d1.owns("vm2")


def test_management_daemon_answers_everything() -> None:
    t = offline(None, {"h1": {U1: "vm1"}, "h2": {U2: "vm2"}})
    assert t.answers_all and t.me == ""
    b = TrackedBackend(t)
    assert b.owns("vm1") and b.owns("vm2") and b.owns("unknown-vm")


def test_unreachable_host_fails_never_off(caplog: pytest.LogCaptureFixture) -> None:
    t = offline(None, {"h3": {U1: "vm1"}})  # h3 is not reachable
    assert t.members() == ["h1", "h2"]
    assert isinstance(t.decide("vm1"), OwnerGone)
    b = TrackedBackend(t)
    for op in (Op.OFF, Op.STATUS, Op.REBOOT):
        assert b.execute(op, "vm1") == Result.FAIL
    assert "vm1: owner h3 is unreachable and is not confirmed fenced: fail" in caplog.text
    # with host_name set, exactly one daemon (the lowest reachable host) answers the fail
    assert TrackedBackend(offline("h1", {"h3": {U1: "vm1"}})).owns("vm1")
    assert not TrackedBackend(offline("h2", {"h3": {U1: "vm1"}})).owns("vm1")


def test_a_reachable_host_running_it_wins_over_an_unreachable_listing() -> None:
    t = offline(None, {"h3": {U1: "vm1"}, "h2": {U1: "vm1"}})
    assert t.decide("vm1") == Owner("h2", U1, "vm1", RUNNING)


class FakeExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def execute(self, op: int, uuid: str) -> int:
        self.calls.append((op, uuid))
        return Result.SUCCESS

    def lookup(self, uuid: str) -> None:
        return None  # no copy on the other reachable hosts


def test_off_where_it_runs_is_no_success_while_an_unreachable_host_listed_a_copy(
        caplog: pytest.LogCaptureFixture) -> None:
    # vm1 ran on h3 (now unreachable: a partition) and on h2; h3's copy may still run
    t = offline(None, {"h3": {U1: "vm1"}, "h2": {U1: "vm1"}})
    ex = FakeExecutor()
    t.executor = lambda host: ex if host in ("h1", "h2") else None  # type: ignore[method-assign,assignment,return-value]
    assert TrackedBackend(t).execute(Op.OFF, "vm1") == Result.FAIL
    assert ex.calls == [(Op.OFF, U1)]  # the copy within reach is powered off all the same
    assert "vm1: off on h2, but unreachable h3 last listed a copy: fail" in caplog.text
    # h3's last listing without vm1 (or vm1 shut off there): success
    t2 = offline(None, {"h2": {U1: "vm1"}, "h3": {}})
    t2.executor = lambda host: ex if host in ("h1", "h2") else None  # type: ignore[method-assign,assignment,return-value]
    assert TrackedBackend(t2).execute(Op.OFF, "vm1") == Result.SUCCESS


def test_ownership_follows_the_lab_event_order() -> None:
    t = offline("h1", {"h1": {U1: "vm1"}})
    t._table.event("h2", U1, "vm1", Kind.STARTED, "MIGRATED", 2.0)
    t._table.event("h1", U1, "vm1", Kind.SUSPENDED, "MIGRATED", 2.01)
    assert t.decide("vm1") == Migrating("h1", "h2", "h1", U1, "vm1")
    t._table.event("h2", U1, "vm1", Kind.RESUMED, "MIGRATED", 2.02)
    assert t.decide("vm1") == Migrating("h1", "h2", "h2", U1, "vm1")
    assert not TrackedBackend(t).owns("vm1")  # h2's daemon answers from now on
    snap = t.snapshot()
    assert [(g.name, g.host, g.decision) for g in snap.guests] == [("vm1", "h2", "migrating")]


def test_start_with_one_host_down_and_all_down(tmp_path: Path) -> None:
    node = tmp_path / "h1.xml"
    write_node_xml(node, [Guest("vm1", U1)])
    missing = node_uri(tmp_path / "h2.xml")

    async def scenario() -> None:
        t = MultiLibvirtTracker({"h1": node_uri(node), "h2": missing}, None)
        await t.start()
        try:
            assert t.members() == ["h1"]
            assert t.decide("vm1") == Owner("h1", U1, "vm1", RUNNING)
            assert t.snapshot().members == ("h1",)
        finally:
            await t.stop()
        nobody = MultiLibvirtTracker({"h2": missing}, None)
        with pytest.raises(BackendError, match="no host reachable: h2: cannot connect"):
            await nobody.start()

    asyncio.run(scenario())


def test_empty_hosts_refused() -> None:
    with pytest.raises(BackendError):
        MultiLibvirtTracker({}, None)


def test_admin_view_fields() -> None:
    t = offline(None, {"h1": {U1: "vm1"}}, reachable=("h1",))
    b = TrackedBackend(t)
    assert b.uris == ("test:///h1", "test:///h2", "test:///h3")
    assert b.healthy()  # a management daemon needs one reachable host
    assert not TrackedBackend(offline("h3", {}, reachable=("h1",))).healthy()
    assert b.host_list()[0].name == "vm1"


# -- the libvirt feed: hold-back during a listing, loss and reconnect ----------------------


def test_feed_applies_events_that_arrive_during_the_listing_after_it() -> None:
    import threading

    from guestfence.tracking import LocationTable
    from guestfence.tracking.libvirt_feed import HostFeed
    from guestfence.tracking.locations import SHUTOFF

    async def scenario() -> None:
        table, lock = LocationTable(), threading.Lock()
        feed = HostFeed("h1", "fake:///", table, lock)
        feed._loop = asyncio.get_running_loop()
        attempts: list[int] = []

        def fake_open() -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise OSError("cannot connect to libvirt at fake:///: refused")

        def fake_list() -> dict[str, DomainState]:
            listed = {U1: DomainState("vm1", U1, RUNNING)}  # taken before the stop below
            done = threading.Event()
            feed._post(feed._apply, (U1, "vm1", Kind.STOPPED, "DESTROYED"))
            feed._post(done.set)  # callbacks run in order: the event was handled first
            assert done.wait(5)
            return listed

        feed._open = fake_open  # type: ignore[method-assign]
        feed._list = fake_list  # type: ignore[method-assign]
        feed._close = lambda: None  # type: ignore[method-assign]
        await feed.start()  # the first attempt fails; start returns after it
        assert not feed.connected and "refused" in (feed.last_error or "")
        for _ in range(500):  # retried after the first backoff step
            if feed.connected:
                break
            await asyncio.sleep(0.01)
        assert feed.connected and table.members() == ["h1"]
        assert table.owner("vm1") == Owner("h1", U1, "vm1", SHUTOFF)  # the event won
        feed._lost.set()  # libvirtd went away
        for _ in range(500):
            if not feed.connected:
                break
            await asyncio.sleep(0.01)
        assert table.members() == []
        await feed.stop()

    asyncio.run(scenario())
