"""Static mode: roles from the map, loud violations, and the libvirt feed on the test driver."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from guestfence.host.backends.tracked import TrackedBackend
from guestfence.lab.testdriver import Guest, node_uri, write_node_xml
from guestfence.tracking import DomainState, Kind, Owner
from guestfence.tracking.locations import RUNNING, SHUTOFF
from guestfence.tracking.static import StaticTracker
from guestfence.virt.wire import Op, Result

U1 = "6f1c1e0a-2b4d-4c1e-9f00-000000000001"
U3 = "6f1c1e0a-2b4d-4c1e-9f00-000000000003"
MAP = {"host1": ("vm1", "vm2"), "host2": ("vm3",)}


def tracker_with(domains: dict[str, tuple[str, int]], me: str = "host1") -> StaticTracker:
    """A tracker whose feed is 'connected' and whose table holds ``domains`` (uuid -> ...)."""
    t = StaticTracker(me, "test:///unused", dict(MAP))
    t._feed.connected = True
    t._table.host_joined(me, 0.0)
    t._table.announce(me, {u: DomainState(n, u, s) for u, (n, s) in domains.items()}, 0.0)
    t._check(me)
    return t


def test_own_guest_executes_other_hosts_guests_are_silent() -> None:
    t = tracker_with({U1: ("vm1", RUNNING)})
    b = TrackedBackend(t)
    assert b.owns("vm1") and b.owns(U1)
    assert b.lookup("vm1") is not None
    assert not b.owns("vm3")  # host2's guest: host2 answers
    assert not b.owns("nobody")  # in no map, not here
    assert t.snapshot().violations == 0


def test_mapped_here_but_missing_fails(caplog: pytest.LogCaptureFixture) -> None:
    b = TrackedBackend(tracker_with({}))
    assert b.owns("vm2")  # the map gives it to us: we answer, and it is not here
    assert b.execute(Op.OFF, "vm2") == Result.FAIL
    assert "vm2: not found on any reachable host: fail" in caplog.text


def test_guest_on_the_wrong_host_is_reported_and_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    t = tracker_with({U3: ("vm3", RUNNING)})  # host2's guest runs here
    assert "static map violation: guest vm3 runs on host host1, mapped to host2" in caplog.text
    assert t.snapshot().violations == 1
    b = TrackedBackend(t)
    assert not b.owns("vm3")  # one answer per guest: host2, the host the map gives it
    assert b.execute(Op.OFF, "vm3") == Result.FAIL  # asked anyway (TCP): never acted on
    t._check("host1")  # the same violation again is not counted twice
    assert t.snapshot().violations == 1
    # host2's daemon does not see it and answers fail (the map gives it vm3)
    other = TrackedBackend(tracker_with({}, me="host2"))
    assert other.owns("vm3") and other.execute(Op.STATUS, "vm3") == Result.FAIL
    # a guest in no map answers fail from the host running it
    stray = "6f1c1e0a-2b4d-4c1e-9f00-000000000009"
    t2 = tracker_with({stray: ("stray", RUNNING)})
    assert TrackedBackend(t2).owns("stray")
    assert TrackedBackend(t2).execute(Op.OFF, "stray") == Result.FAIL


def test_a_definition_left_by_a_migration_is_not_off() -> None:
    t = tracker_with({U1: ("vm1", RUNNING)})
    for kind, detail in ((Kind.SUSPENDED, "MIGRATED"), (Kind.STOPPED, "MIGRATED")):
        t._table.event("host1", U1, "vm1", kind, detail, 1.0)
        t._event("host1", U1, "vm1", kind, detail)
    # libvirtd restarted: the listing shows the definition left behind, shut off
    t._table.announce("host1", {U1: DomainState("vm1", U1, SHUTOFF)}, 2.0)
    b = TrackedBackend(t)
    assert b.owns("vm1")
    assert b.execute(Op.OFF, "vm1") == Result.FAIL
    assert b.execute(Op.STATUS, "vm1") == Result.FAIL
    t._table.event("host1", U1, "vm1", Kind.STARTED, "BOOTED", 3.0)  # started here again
    t._event("host1", U1, "vm1", Kind.STARTED, "BOOTED")
    assert t.decide("vm1") == Owner("host1", U1, "vm1", RUNNING)


def test_migration_in_is_a_violation(caplog: pytest.LogCaptureFixture) -> None:
    t = tracker_with({})
    t._table.event("host1", U3, "vm3", Kind.STARTED, "MIGRATED", 1.0)
    t._check("host1")
    assert "guest vm3 in a live migration on host1" in caplog.text
    assert t.snapshot().violations >= 1


def test_not_connected_means_no_member() -> None:
    t = tracker_with({U1: ("vm1", RUNNING)})
    t._feed.connected = False
    b = TrackedBackend(t)
    assert b.owns("vm1")  # ours by the map: we answer ...
    assert b.execute(Op.STATUS, "vm1") == Result.FAIL  # ... fail: libvirt is not reachable
    assert b.execute(Op.DEVSTATUS, "") == Result.FAIL


def test_feed_follows_the_test_driver(tmp_path: Path) -> None:
    """The real feed: the listing at start, then an event of its own connection."""
    node = tmp_path / "host1.xml"
    write_node_xml(node, [Guest("vm1", U1), Guest("vm3", U3, running=False)])

    async def scenario() -> None:
        t = StaticTracker("host1", node_uri(node), dict(MAP))
        await t.start()
        try:
            assert t.members() == ["host1"]
            snap = t.snapshot()
            assert {(g.name, g.state) for g in snap.guests} == {("vm1", RUNNING),
                                                               ("vm3", SHUTOFF)}
            assert snap.violations == 0  # a shut-off definition of vm3 is no violation
            b = TrackedBackend(t)
            assert await asyncio.to_thread(b.owns, "vm1")
            # the test driver keeps state per connection: start vm3 on the feed's own one
            t._feed._conn.lookupByName("vm3").create()
            for _ in range(200):
                if t.snapshot().violations:
                    break
                await asyncio.sleep(0.01)
            assert t.snapshot().violations == 1
            assert await asyncio.to_thread(b.execute, Op.OFF, "vm3") == Result.FAIL
        finally:
            await t.stop()

    asyncio.run(scenario())


def test_start_fails_clearly_without_libvirt(tmp_path: Path) -> None:
    from guestfence.errors import BackendError

    t = StaticTracker("host1", node_uri(tmp_path / "missing.xml"), dict(MAP))
    with pytest.raises(BackendError, match="cannot connect to libvirt"):
        asyncio.run(t.start())


# -- guestfence check --fence-virt-conf --------------------------------------------------


def test_check_finds_guests_off_their_mapped_host(tmp_path: Path) -> None:
    from guestfence.check.engine import run_checks
    from guestfence.check.model import Guest as TGuest
    from guestfence.check.model import Host, Topology
    from guestfence.check.rules_static import load_static_map
    from guestfence.errors import ConfigError

    conf = tmp_path / "fence_virt.conf"
    conf.write_text('fence_virtd { listener = "multicast"; backend = "static"; }\n'
                    'backends { static { uri = "qemu:///system"; host_name = "host1";\n'
                    '  map { host1 = "vm1 vm2"; host2 = "vm3 vm9"; } } }\n')
    topo = Topology(hosts=(Host("host1.example.com"), Host("host2")),
                    other_guests=(TGuest("vm1", "host1.example.com"),
                                  TGuest("VM3", "host1.example.com"), TGuest("stray", "host2")))
    report = run_checks(load_static_map(topo, str(conf)))
    found = [f for f in report.findings if f.rule == "STATIC-MAP-PLACEMENT"]
    assert [(f.severity, f.guests) for f in found] == [
        ("error", ("VM3",)), ("error", ("stray",)), ("info", ("vm2", "vm9"))]
    assert "VM3 runs on host1.example.com, but the static map of" in found[0].found
    assert "gives it to host2" in found[0].found and "move VM3 back to host2" in found[0].fix
    assert "does not list it" in found[1].found
    assert not [f for f in run_checks(topo).findings if f.rule == "STATIC-MAP-PLACEMENT"]
    conf.write_text('fence_virtd { listener = "multicast"; backend = "libvirt"; }\n'
                    'backends { libvirt { uri = "qemu:///system"; } }\n')
    with pytest.raises(ConfigError, match="needs backend = \"static\""):
        load_static_map(topo, str(conf))


def test_definitions_left_by_a_migration_are_found_from_libvirts_reason() -> None:
    import libvirt

    from guestfence.tracking.static import left_by_migration

    class Dom:
        def __init__(self, uuid: str, state: int, reason: int) -> None:
            self.uuid, self._state = uuid, (state, reason)

        def state(self) -> tuple[int, int]:
            return self._state

        def UUIDString(self) -> str:
            return self.uuid

    class Conn:
        def listAllDomains(self, flags: int) -> list[Dom]:
            assert flags == libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE
            return [Dom(U1.upper(), libvirt.VIR_DOMAIN_SHUTOFF,
                        libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED),
                    Dom(U1.replace("1", "2"), libvirt.VIR_DOMAIN_SHUTOFF,
                        libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED)]

    assert left_by_migration(Conn()) == {U1}
