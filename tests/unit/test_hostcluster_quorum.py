"""Quorum gating in host-cluster mode: only a quorate partition responds for others' guests.

The gate (pure) and the CpgTracker over the fake CPG bus with a fake quorum
source; the ctypes layout of libquorum's callbacks against corosync 3.1.7's
quorum.h.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

import pytest

from guestfence.host.backends.tracked import TrackedBackend
from guestfence.tracking import quorum as q
from guestfence.tracking.cpg import Address, OnConfchg, OnDeliver
from guestfence.tracking.hostcluster import CpgTracker, GroupTransport
from guestfence.tracking.locations import Owner, OwnerGone
from guestfence.tracking.quorum import QuorumGate
from guestfence.virt.wire import Op, Result

from .test_hostcluster_tracker import FakeBus, FakeMember, FakeSource, run, running, until

U2 = "6f1c1e0a-2b4d-4c1e-9f00-000000000002"


# -- the gate ------------------------------------------------------------------------


def test_gate_is_closed_until_corosync_says_quorate() -> None:
    gate = QuorumGate()
    assert gate.why_closed() is not None and "unknown" in gate.why_closed()  # type: ignore[operator]
    gate.cpg_ring(5)
    gate.notified(False, 5, (1,))
    assert "not quorate" in (gate.why_closed() or "")
    gate.notified(True, 5, (1, 2, 3))
    assert gate.may_answer_for_others()
    gate.lost()  # the quorum connection went away: nothing is known
    assert not gate.may_answer_for_others()


def test_gate_waits_for_the_quorum_of_the_new_ring_in_either_order() -> None:
    # CPG first: NODEDOWN, then the ring's number, then (other channel) its quorum
    gate = QuorumGate()
    gate.cpg_ring(4)
    gate.notified(True, 4)
    assert gate.may_answer_for_others()
    gate.cpg_nodes_down()
    assert not gate.may_answer_for_others()  # still the old ring's "quorate"
    gate.cpg_ring(8)
    assert not gate.may_answer_for_others()
    gate.notified(False, 8)
    assert not gate.may_answer_for_others()  # the new ring is not quorate
    # quorum first: the new ring's quorum arrives before CPG's confchg and totem callback
    gate.notified(True, 12)
    gate.cpg_nodes_down()
    assert not gate.may_answer_for_others()
    gate.cpg_ring(12)
    assert gate.may_answer_for_others()
    gate.cpg_lost()  # CPG reconnecting: its ring is unknown
    assert not gate.may_answer_for_others()
    gate.cpg_ring(13)
    assert not gate.may_answer_for_others()  # quorum of ring 13 not heard yet
    gate.notified(True, 13)
    assert gate.may_answer_for_others()


def test_without_a_quorum_provider_the_gate_stays_open_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    gate = QuorumGate()
    with caplog.at_level(logging.WARNING, logger="guestfenced"):
        gate.provider(q.QUORUM_FREE)
    assert gate.may_answer_for_others()
    assert "no quorum provider" in caplog.text


def test_callback_layout_matches_quorum_h() -> None:
    assert ctypes.sizeof(q.QuorumCallbacks) == 8  # one function pointer
    assert (q.QUORUM_FREE, q.QUORUM_SET) == (0, 1)
    assert q.CS_TRACK_CURRENT | q.CS_TRACK_CHANGES == 3
    lib = q.load_library()  # libquorum5 comes with corosync (Makefile)
    assert lib.quorum_initialize.argtypes[1] is ctypes.POINTER(q.QuorumCallbacks)
    assert lib.quorum_dispatch.restype is q.cs_error_t


def test_notification_callback_feeds_the_gate() -> None:
    gate = QuorumGate()
    handle = q.QuorumHandle(gate)
    nodes = (ctypes.c_uint32 * 2)(2, 3)
    handle._notify(0, 1, 42, 2, ctypes.cast(nodes, ctypes.POINTER(ctypes.c_uint32)))
    gate.cpg_ring(42)
    assert gate.may_answer_for_others()
    handle._notify(0, 0, 43, 0, None)  # type: ignore[arg-type]
    assert not gate.may_answer_for_others()


# -- the tracker ---------------------------------------------------------------------


class FakeQuorum:
    def __init__(self) -> None:
        self.gate = QuorumGate()
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class QHost:
    def __init__(self, bus: FakeBus, name: str, nodeid: int, *domains: object) -> None:
        self.name = name
        self.source = FakeSource(*domains)  # type: ignore[arg-type]
        self.quorum = FakeQuorum()
        self.asked: list[str] = []

        def transport(d: OnDeliver, c: OnConfchg, up: Callable[[], None],
                      down: Callable[[], None]) -> GroupTransport:
            self.member = FakeMember(bus, nodeid, 1000 + nodeid, d, c, up, down)
            return self.member

        def confirm(host: str, _left_at: float) -> bool:
            self.asked.append(host)
            return False

        self.tracker = CpgTracker(name, transport, self.source, confirm, quorum=self.quorum)
        self.backend = TrackedBackend(self.tracker)


def partition(bus: FakeBus, alone: QHost, others: list[QHost]) -> None:
    """``alone`` loses the ring: each side sees the other leave with NODEDOWN."""
    bus.members.remove(alone.member)
    gone = [Address(o.member.nodeid, o.member.pid, "NODEDOWN") for o in others]
    rest = [Address(o.member.nodeid, o.member.pid) for o in others]
    me = Address(alone.member.nodeid, alone.member.pid)
    loop = asyncio.get_running_loop()
    loop.call_soon(alone.member.on_confchg, [me], gone, [])
    for o in others:
        loop.call_soon(o.member.on_confchg, rest,
                       [Address(me.nodeid, me.pid, "NODEDOWN")], [])


def test_a_host_outside_the_quorate_partition_is_silent_for_others_guests() -> None:
    async def body() -> None:
        bus = FakeBus()
        h1 = QHost(bus, "host1", 1, running("g1"))
        h2 = QHost(bus, "host2", 2, running("g2", uuid=U2))
        h3 = QHost(bus, "host3", 3)
        hosts = [h1, h2, h3]
        for h in hosts:
            h.quorum.gate.cpg_ring(1)
            h.quorum.gate.notified(True, 1, (1, 2, 3))
            await h.tracker.start()
            assert h.quorum.started
        await until(lambda: all(h.tracker.members() == ["host1", "host2", "host3"]
                                and isinstance(h.tracker.decide("g2"), Owner) for h in hosts))
        assert [h.backend.owns("g2") for h in hosts] == [False, True, False]

        partition(bus, h1, [h2, h3])
        await until(lambda: h1.tracker.members() == ["host1"]
                    and h2.tracker.members() == ["host2", "host3"])
        # the new ring's number and quorum are not in yet: nobody responds for departed hosts
        assert h1.tracker.decide("g2") == OwnerGone("host2", False, U2, "g2")
        assert not h1.backend.owns("g2") and not h2.backend.owns("g1")
        for h in hosts:
            h.quorum.gate.cpg_ring(2)
        h1.quorum.gate.notified(False, 2, (1,))
        for h in (h2, h3):
            h.quorum.gate.notified(True, 2, (2, 3))

        # host1, alone and not quorate: silent for host2's guest, acts for its own
        assert h1.backend.owns("g2") is False
        assert h1.backend.execute(Op.OFF, "g2") == Result.FAIL  # never asked to: no answer
        assert h1.asked == []  # and it never asks the host cluster about host2
        assert h1.backend.owns("g1") is True
        assert [r.name for r in h1.backend.host_list()] == ["g1"]
        # the quorate side: host2 is the responder for host1's guest (fail until fenced)
        assert h2.backend.owns("g1") is True and h3.backend.owns("g1") is False
        assert h2.backend.execute(Op.OFF, "g1") == Result.FAIL
        assert h2.asked == ["host1"]
        assert h2.backend.owns("g2") is True  # its own guest, as always

        await h1.tracker.stop()
        assert h1.quorum.stopped
    run(body)


def test_quorum_start_failure_leaves_nothing_running() -> None:
    class Unreachable(FakeQuorum):
        async def start(self) -> None:
            raise q.QuorumUnreachable(12)

    async def body() -> None:
        bus = FakeBus()
        source = FakeSource()
        closed: list[bool] = []
        source.close = lambda: closed.append(True)  # type: ignore[method-assign]
        made: list[object] = []

        def transport(d: OnDeliver, c: OnConfchg, up: Callable[[], None],
                      down: Callable[[], None]) -> GroupTransport:
            made.append(1)
            return FakeMember(bus, 1, 1, d, c, up, down)

        quorum = Unreachable()
        tracker = CpgTracker("host1", transport, source, lambda h, t: False, quorum=quorum)
        with pytest.raises(q.QuorumError, match=r"cannot connect to corosync \(CS_ERR_NOT_EXIST\)"):
            await tracker.start()
        assert made == [] and closed == [True] and quorum.stopped and bus.members == []
    run(body)
