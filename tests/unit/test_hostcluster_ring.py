"""A departed host whose corosync node is alive is never "fenced" (the CPG totem ring)."""

from __future__ import annotations

import asyncio
import time

from guestfence.host.backends.tracked import TrackedBackend
from guestfence.tracking.locations import OwnerGone
from guestfence.virt.wire import Op, Result

from .test_hostcluster_tracker import U1, FakeBus, run, three_hosts, until


def test_a_fenced_host_back_in_the_ring_without_its_daemon_is_no_longer_fenced() -> None:
    async def body() -> None:
        bus = FakeBus()
        h1, h2, _h3 = await three_hosts(bus)
        h2.tracker.ring_changed(10, (1, 2, 3))
        bus.leave(h1.member, "NODEDOWN")
        await until(lambda: h2.tracker.members() == ["host2", "host3"])
        h2.tracker.ring_changed(11, (2, 3))
        h2.fenced_hosts["host1"] = time.time()  # rebooted by the host cluster, now
        backend = TrackedBackend(h2.tracker)
        assert backend.execute(Op.OFF, "g1") == Result.SUCCESS
        await asyncio.sleep(0.01)
        # host1 boots, corosync joins the ring; its guestfenced is not up (yet): libvirt
        # may have autostarted g1 there
        h2.tracker.ring_changed(12, (1, 2, 3))
        assert h2.tracker.decide("g1") == OwnerGone("host1", False, U1, "g1")
        asked = len(h2.asked)
        assert backend.execute(Op.OFF, "g1") == Result.FAIL
        assert backend.execute(Op.STATUS, "g1") == Result.FAIL
        assert len(h2.asked) == asked  # alive in the ring: the history is not even asked
        assert h2.tracker.snapshot().departed_unfenced == ("host1",)
        # it dies again: the first reboot is in the history but older than its return
        h2.tracker.ring_changed(13, (2, 3))
        assert backend.execute(Op.OFF, "g1") == Result.FAIL
        assert h2.asked[-1][0] == "host1" and h2.asked[-1][1] > h2.fenced_hosts["host1"]
        h2.fenced_hosts["host1"] = time.time() + 1
        assert backend.execute(Op.OFF, "g1") == Result.SUCCESS
    run(body)


def test_a_host_whose_daemon_died_but_node_lives_is_never_confirmed() -> None:
    async def body() -> None:
        bus = FakeBus()
        h1, h2, _h3 = await three_hosts(bus)
        h2.tracker.ring_changed(10, (1, 2, 3))
        bus.leave(h1.member, "PROCDOWN")  # guestfenced crashed; corosync on host1 runs on
        await until(lambda: h2.tracker.members() == ["host2", "host3"])
        h2.fenced_hosts["host1"] = time.time() + 1  # a fence in the history (a stale
        # delegate's record, a fence device that failed silently): the node is in the ring
        assert TrackedBackend(h2.tracker).execute(Op.OFF, "g1") == Result.FAIL
        assert h2.tracker.confirm_fenced("host1") is False
        assert h2.asked == []
    run(body)
