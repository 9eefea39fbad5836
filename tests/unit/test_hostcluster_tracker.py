"""CpgTracker over a fake CPG bus (no corosync): announcements, events, membership, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import guestfence.tracking.hostcluster as hc
from guestfence.errors import BackendError
from guestfence.host.backends.tracked import TrackedBackend
from guestfence.tracking.cpg import Address, OnConfchg, OnDeliver
from guestfence.tracking.hostcluster import CpgTracker, GroupTransport
from guestfence.tracking.locations import (
    PAUSED,
    RUNNING,
    DomainState,
    Kind,
    Migrating,
    Owner,
    OwnerGone,
    Unknown,
    role_of,
)
from guestfence.virt.wire import Op, Result

U1 = "6f1c1e0a-2b4d-4c1e-9f00-000000000001"


class FakeBus:
    """CPG semantics that matter here: one total order, self-delivery, confchg to all."""

    def __init__(self) -> None:
        self.members: list[FakeMember] = []
        self.sent = 0

    def _post(self, fn: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_soon(fn)

    def join(self, m: FakeMember) -> None:
        self.members.append(m)
        view = list(self.members)
        self._confchg(view, [], [Address(m.nodeid, m.pid, "JOIN")])

    def leave(self, m: FakeMember, reason: str) -> None:
        if m in self.members:
            self.members.remove(m)
            self._confchg(list(self.members), [Address(m.nodeid, m.pid, reason)], [])

    def _confchg(self, view: list[FakeMember], left: list[Address],
                 joined: list[Address]) -> None:
        addrs = [Address(x.nodeid, x.pid) for x in view]
        for x in view:
            self._post(lambda x=x: x.on_confchg(addrs, left, joined))  # type: ignore[misc]

    def mcast(self, sender: FakeMember, payload: bytes) -> None:
        self.sent += 1
        for x in list(self.members):
            self._post(lambda x=x: x.on_deliver(sender.nodeid, sender.pid, payload))  # type: ignore[misc]


class FakeMember:
    def __init__(self, bus: FakeBus, nodeid: int, pid: int, on_deliver: OnDeliver,
                 on_confchg: OnConfchg, on_connected: Callable[[], None],
                 on_disconnected: Callable[[], None]) -> None:
        self.bus, self._nodeid, self.pid = bus, nodeid, pid
        self.on_deliver, self.on_confchg = on_deliver, on_confchg
        self.on_connected, self.on_disconnected = on_connected, on_disconnected

    @property
    def nodeid(self) -> int:
        return self._nodeid

    async def start(self) -> None:
        self.bus.join(self)
        self.on_connected()

    def send(self, payload: bytes) -> None:
        if self in self.bus.members:
            self.bus.mcast(self, payload)

    async def stop(self) -> None:
        self.bus.leave(self, "LEAVE")


class FakeSource:
    def __init__(self, *domains: DomainState) -> None:
        self.domains = {d.uuid: d for d in domains}
        self.generation = 0
        self.on_event: Callable[[str, str, Kind, str], None] | None = None

    async def start(self, on_event: Callable[[str, str, Kind, str], None],
                    on_lost: Callable[[], None]) -> None:
        self.on_event = on_event

    def listing(self) -> tuple[int, list[DomainState]]:
        return self.generation, list(self.domains.values())

    def close(self) -> None:
        pass

    def emit(self, uuid: str, name: str, kind: Kind, detail: str,
             now: DomainState | None) -> None:
        """libvirt reports an event; ``now`` is the domain afterwards (None: gone)."""
        self.generation += 1
        if now is None:
            self.domains.pop(uuid, None)
        else:
            self.domains[uuid] = now
        assert self.on_event is not None
        self.on_event(uuid, name, kind, detail)


class Host:
    def __init__(self, bus: FakeBus, name: str, nodeid: int, *domains: DomainState,
                 confirm: Callable[[str, float], bool] | None = None) -> None:
        self.name = name
        self.source = FakeSource(*domains)
        self.asked: list[tuple[str, float]] = []
        self.fenced_hosts: dict[str, float] = {}  # host -> completion wall time

        def default_confirm(host: str, left_at: float) -> bool:
            self.asked.append((host, left_at))
            done = self.fenced_hosts.get(host)
            return done is not None and done >= left_at

        def transport(d: OnDeliver, c: OnConfchg, up: Callable[[], None],
                      down: Callable[[], None]) -> GroupTransport:
            self.member = FakeMember(bus, nodeid, 1000 + nodeid, d, c, up, down)
            return self.member

        self.tracker = CpgTracker(name, transport, self.source, confirm or default_confirm)


def running(name: str, state: int = RUNNING, uuid: str = U1) -> DomainState:
    return DomainState(name, uuid, state)


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def three_hosts(bus: FakeBus) -> list[Host]:
    hosts = [Host(bus, "host1", 1, running("g1")), Host(bus, "host2", 2),
             Host(bus, "host3", 3)]
    for h in hosts:
        await h.tracker.start()
    await until(lambda: all(h.tracker.members() == ["host1", "host2", "host3"]
                            and isinstance(h.tracker.decide("g1"), Owner) for h in hosts))
    return hosts


def roles(hosts: list[Host], target: str = "g1") -> dict[str, str]:
    return {h.name: role_of(h.name, h.tracker.decide(target), h.tracker.members())
            for h in hosts}


def test_every_member_learns_every_owner_and_exactly_one_executes() -> None:
    async def body() -> None:
        hosts = await three_hosts(FakeBus())
        for h in hosts:
            assert h.tracker.decide("g1") == Owner("host1", U1, "g1", RUNNING)
            assert h.tracker.decide(U1.upper()) == Owner("host1", U1, "g1", RUNNING)
        assert roles(hosts) == {"host1": "execute", "host2": "silent", "host3": "silent"}
        snap = hosts[2].tracker.snapshot()
        assert snap.mode == "cpg" and snap.members == ("host1", "host2", "host3")
        assert [(g.name, g.host, g.decision) for g in snap.guests] == [("g1", "host1", "owner")]
    run(body)


def test_live_migration_moves_ownership_on_resume_not_on_start() -> None:
    async def body() -> None:
        hosts = await three_hosts(FakeBus())
        h1, h2, h3 = hosts
        # the lab's event order: dst STARTED, src SUSPENDED, dst RESUMED, src STOPPED
        h2.source.emit(U1, "g1", Kind.STARTED, "MIGRATED", running("g1", PAUSED))
        await until(lambda: isinstance(h3.tracker.decide("g1"), Migrating))
        assert all(h.tracker.decide("g1") == Migrating("host1", "host2", "host1", U1, "g1")
                   for h in hosts)
        h1.source.emit(U1, "g1", Kind.SUSPENDED, "MIGRATED", running("g1", PAUSED))
        await asyncio.sleep(0.05)
        assert roles(hosts)["host1"] == "execute"
        h2.source.emit(U1, "g1", Kind.RESUMED, "MIGRATED", running("g1"))
        await until(lambda: all(roles(hosts) == {"host1": "silent", "host2": "execute",
                                                 "host3": "silent"} for _ in [0]))
        h1.source.emit(U1, "g1", Kind.STOPPED, "MIGRATED", None)
        await until(lambda: all(h.tracker.decide("g1") == Owner("host2", U1, "g1", RUNNING)
                                for h in hosts))
        # the full announcements that follow every event agree with the events
        await asyncio.sleep(0.05)
        assert all(h.tracker.decide("g1") == Owner("host2", U1, "g1", RUNNING) for h in hosts)
    run(body)


def test_a_departed_owner_is_answered_for_only_once_fenced_after_it_left() -> None:
    async def body() -> None:
        hosts = await three_hosts(FakeBus())
        h1, h2, h3 = hosts
        before_leave = time.time() - 30  # an old fence of host1, before this membership
        h2.fenced_hosts["host1"] = before_leave
        await h1.member.stop()  # PROCDOWN/NODEDOWN look the same to the table
        await until(lambda: h2.tracker.members() == ["host2", "host3"])
        d = h2.tracker.decide("g1")
        assert d == OwnerGone("host1", False, U1, "g1")
        assert roles([h2, h3]) == {"host2": "answer", "host3": "silent"}  # lowest name
        backend = TrackedBackend(h2.tracker)
        assert backend.execute(Op.OFF, "g1") == Result.FAIL  # the old fence does not count
        assert h2.asked and h2.asked[-1][0] == "host1"
        left_at = h2.asked[-1][1]
        assert left_at > before_leave
        assert TrackedBackend(h3.tracker).owns("g1") is False
        asked = len(h2.asked)
        h2.fenced_hosts["host1"] = left_at + 2  # the host cluster fences it now
        assert backend.execute(Op.OFF, "g1") == Result.SUCCESS  # asked again: no stale "no"
        assert len(h2.asked) == asked + 1
        assert backend.execute(Op.STATUS, "g1") == Result.OFF
        assert h2.tracker.decide("g1") == OwnerGone("host1", True, U1, "g1")
        assert h2.tracker.snapshot().departed_unfenced == ()
        assert h3.tracker.snapshot().departed_unfenced == ("host1",)
        # the guest restarted elsewhere: the fenced host's stale listing is no copy
        assert h3.tracker.copies_elsewhere(U1) == ["host1"]  # not confirmed there
        assert h2.tracker.copies_elsewhere(U1) == []
    run(body)


def test_rejoin_after_fence_starts_afresh() -> None:
    async def body() -> None:
        bus = FakeBus()
        hosts = await three_hosts(bus)
        h1, h2, _ = hosts
        await h1.member.stop()
        await until(lambda: h2.tracker.members() == ["host2", "host3"])
        h2.fenced_hosts["host1"] = time.time() + 1
        assert h2.tracker.confirm_fenced("host1")
        # host1 reboots: its daemon comes back with no guest and counts from 1 again
        h1b = Host(bus, "host1", 1)
        await h1b.tracker.start()
        await until(lambda: h2.tracker.members() == ["host1", "host2", "host3"])
        assert isinstance(h2.tracker.decide("g1"), Unknown)
        assert h2.tracker.confirm_fenced("host1") is False  # a member is never "fenced"
    run(body)


def test_partitioned_owner_keeps_its_guest_failing_elsewhere() -> None:
    async def body() -> None:
        bus = FakeBus()
        hosts = await three_hosts(bus)
        h1, h2, h3 = hosts
        bus.leave(h1.member, "NODEDOWN")
        await until(lambda: h2.tracker.members() == ["host2", "host3"])
        # nobody fenced host1: the others answer fail, never success
        for h in (h2, h3):
            assert TrackedBackend(h.tracker).execute(Op.OFF, "g1") in (Result.FAIL,)
            assert TrackedBackend(h.tracker).execute(Op.STATUS, "g1") == Result.FAIL
    run(body)


def test_malformed_messages_are_counted_and_change_nothing() -> None:
    async def body() -> None:
        bus = FakeBus()
        hosts = await three_hosts(bus)
        h1, h2, _ = hosts
        before = h2.tracker.decide("g1")
        for junk in (b"", b"gf\x01\x01{", b"gf\x07\x01{}", b"\x00" * 50):
            bus.mcast(h1.member, junk)
        await until(lambda: h2.tracker.malformed == 4)
        assert h2.tracker.decide("g1") == before
        assert h2.tracker.members() == ["host1", "host2", "host3"]
    run(body)


def test_stale_listing_never_overrides_a_newer_event() -> None:
    async def body() -> None:
        hosts = await three_hosts(FakeBus())
        h1, _, h3 = hosts
        real_listing = h1.source.listing
        raced = []

        def listing_raced_by_an_event() -> tuple[int, list[DomainState]]:
            if not raced:  # the first listing after the event was taken just before it
                raced.append(1)
                return 0, [running("g1")]
            return real_listing()

        h1.source.listing = listing_raced_by_an_event  # type: ignore[method-assign]
        h1.source.emit(U1, "g1", Kind.STOPPED, "DESTROYED", running("g1", 5))
        await until(lambda: h3.tracker.decide("g1") == Owner("host1", U1, "g1", 5))
        await until(lambda: len(raced) == 1)
        await asyncio.sleep(0.05)
        assert h3.tracker.decide("g1") == Owner("host1", U1, "g1", 5)
    run(body)


def test_first_inventory_must_come_back() -> None:
    class Mute(FakeMember):
        def send(self, payload: bytes) -> None:
            pass

    async def body() -> None:
        bus = FakeBus()

        def transport(d: OnDeliver, c: OnConfchg, up: Callable[[], None],
                      down: Callable[[], None]) -> GroupTransport:
            return Mute(bus, 1, 1, d, c, up, down)

        tracker = CpgTracker("host1", transport, FakeSource(), lambda h, t: False)
        old, hc.FIRST_INVENTORY_TIMEOUT = hc.FIRST_INVENTORY_TIMEOUT, 0.2
        try:
            with pytest.raises(BackendError, match="first announcement"):
                await tracker.start()
        finally:
            hc.FIRST_INVENTORY_TIMEOUT = old
    run(body)


def test_concurrent_confirmations_share_one_question_never_a_staler_one() -> None:
    import threading

    async def body() -> None:
        bus = FakeBus()
        release = threading.Event()
        asks: list[float] = []

        def slow_no(host: str, left_at: float) -> bool:
            asks.append(time.monotonic())
            if len(asks) == 1:
                release.wait(5)  # the first question hangs until B and C arrived
            return False

        hosts = [Host(bus, "host1", 1, running("g1")), Host(bus, "host2", 2, confirm=slow_no)]
        for h in hosts:
            await h.tracker.start()
        await until(lambda: hosts[1].tracker.members() == ["host1", "host2"])
        await hosts[0].member.stop()
        await until(lambda: hosts[1].tracker.members() == ["host2"])
        tracker = hosts[1].tracker
        results: list[bool] = []
        a = threading.Thread(target=lambda: results.append(tracker.confirm_fenced("host1")))
        a.start()
        await until(lambda: len(asks) == 1)
        late = [threading.Thread(target=lambda: results.append(tracker.confirm_fenced("host1")))
                for _ in range(2)]
        for t in late:
            t.start()
        await asyncio.sleep(0.1)
        release.set()
        for t in (a, *late):
            await asyncio.to_thread(t.join, 5)
        assert results == [False, False, False]
        assert len(asks) == 2  # A's question, then one for both late callers
    run(body)
