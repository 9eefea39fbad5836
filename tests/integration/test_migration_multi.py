"""No-host-cluster mode across a real live migration: exactly one daemon answers, the right one.

Two hosts (h1, h2), each a private libvirtd with real QEMU (TCG) guests in
its own network and mount namespace, listening on ``qemu+tcp`` on the LAN.
A guestfenced per host in ``multi-libvirt`` mode holds connections to both
hosts' libvirtd and follows their lifecycle events. ``fence_xvm`` runs in a
third namespace and multicasts on the LAN, so both daemons hear every request.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from guestfence.lab.hostslab import HostsLab
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text

pytestmark = pytest.mark.integration

VIR_DOMAIN_RUNNING, VIR_DOMAIN_SHUTOFF = 1, 5


@pytest.fixture
def hosts(hosts_lab: HostsLab, tmp_key: Path) -> HostsLab:
    lab = hosts_lab
    for host in lab.host_names:
        lab.daemon(host, daemon_config_text(
            str(tmp_key), [], interface="eth0", backend="multi-libvirt", host_name=host,
            hosts=lab.hosts_block()))
    return lab


def lines(daemon: OurDaemon, guest: str, action: str) -> list[str]:
    return [x for x in daemon.request_lines() if f"target={guest} action={action} " in x]


def counts(lab: HostsLab, guest: str, action: str, total: int) -> dict[str, int]:
    """Request lines per daemon once ``total`` are logged in all."""
    return lab.request_counts(guest, action, total)


def gone(pid: int) -> bool:
    """Not even a zombie left."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def migrate_in_background(lab: HostsLab, guest: str, src: str, dst: str) \
        -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["seconds"] = lab.labs[src].migrate(guest, lab.labs[dst])
        except Exception as e:  # reported by the test
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, result


def test_status_and_off_follow_a_live_migration(hosts: HostsLab, tmp_key: Path) -> None:
    lab = hosts
    h1, h2 = lab.labs["h1"], lab.labs["h2"]
    h1.define_and_start("g1", memory_mib=32)
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "g1") == (0, "Status: ON"), lab.logs()
    assert counts(lab, "g1", "status", 1) == {"h1": 1, "h2": 0}

    # requests during the migration: each answered ON, each by one daemon only
    worker, result = migrate_in_background(lab, "g1", "h1", "h2")
    during = []
    while worker.is_alive() and len(during) < 4:
        during.append(lab.popen_fence_xvm(tmp_key, "-o", "status", "-H", "g1", "-t", "20"))
        worker.join(0.12)  # a new request every ~120 ms while libvirt migrates
    worker.join(60)
    assert "error" not in result, result
    answers = [(p.wait(30), (p.stdout.read() if p.stdout else "").strip()) for p in during]
    assert answers and all(a == (0, "Status: ON") for a in answers), (answers, lab.logs())
    assert h2.domain_state("g1") == VIR_DOMAIN_RUNNING
    assert h1.domain_state("g1") == VIR_DOMAIN_SHUTOFF  # the definition stays behind
    total = 1 + len(during)
    assert sum(counts(lab, "g1", "status", total).values()) == total, lab.logs()

    # right after: the new owner answers, the old one stays silent
    before = counts(lab, "g1", "status", total)
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "g1") == (0, "Status: ON")
    after = counts(lab, "g1", "status", total + 1)
    assert (after["h1"] - before["h1"], after["h2"] - before["h2"]) == (0, 1), lab.logs()

    pid = h2.qemu_pid("g1")
    assert pid is not None
    assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "g1")[0] == 0, lab.logs()
    assert gone(pid), f"qemu {pid} of g1 still exists after off returned"
    assert h1.qemu_pids("g1") == [] and h2.qemu_pids("g1") == []
    assert counts(lab, "g1", "off", 1) == {"h1": 0, "h2": 1}
    assert "outcome=success" in lines(lab.daemons["h2"], "g1", "off")[0]
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "g1") == (2, "Status: OFF")


def test_off_during_a_migration_leaves_no_guest(hosts: HostsLab, tmp_key: Path) -> None:
    lab = hosts
    h1, h2 = lab.labs["h1"], lab.labs["h2"]
    pid = h1.define_and_start("g2", memory_mib=32)
    worker, _result = migrate_in_background(lab, "g2", "h1", "h2")
    # fire once the destination's incoming qemu exists: the guest is listed on both hosts
    deadline = time.monotonic() + 30
    while h2.domain_state("g2") is None and worker.is_alive():
        assert time.monotonic() < deadline, "the migration never reached the destination"
        time.sleep(0.005)
    off = lab.popen_fence_xvm(tmp_key, "-o", "off", "-H", "g2", "-t", "20")
    rc = off.wait(60)
    out = off.stdout.read() if off.stdout else ""
    assert rc == 0, out + lab.logs()
    assert gone(pid), f"the source qemu {pid} still exists after off returned"
    for state in (h1.domain_state("g2"), h2.domain_state("g2")):
        assert state != VIR_DOMAIN_RUNNING, lab.logs()
    worker.join(60)  # the migration fails (its source died) or had finished: either way
    assert h1.qemu_pids("g2") == [] and h2.qemu_pids("g2") == [], lab.logs()
    assert sum(counts(lab, "g2", "off", 1).values()) == 1, lab.logs()


def test_unreachable_host_fails_never_off(hosts: HostsLab, tmp_key: Path) -> None:
    lab = hosts
    lab.labs["h1"].define_and_start("g3", memory_mib=32)
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "g3") == (0, "Status: ON"), lab.logs()
    lab.labs["h1"].kill_libvirtd()
    for daemon in lab.daemons.values():
        daemon.wait_for_log("host h1: libvirt connection to", timeout=20)
    t0 = time.monotonic()
    assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "g3", "-t", "10")[0] == 1, lab.logs()
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "g3", "-t", "10")[0] == 1
    assert time.monotonic() - t0 < 15  # answered (fail), not left to time out
    # exactly one daemon (h2: the lowest reachable host) answered, and said why
    assert counts(lab, "g3", "off", 1) == {"h1": 0, "h2": 1}
    assert "outcome=fail" in lines(lab.daemons["h2"], "g3", "off")[0]
    lab.daemons["h2"].wait_for_log("g3: owner h1 is unreachable and is not confirmed "
                                   "fenced: fail")


def test_partitioned_host_fails_then_comes_back(hosts: HostsLab, tmp_key: Path) -> None:
    """h1's link to the LAN drops: its guest is never reported off; h2 answers fail once
    keepalive gives h1 up, and follows h1 again when the link is back."""
    lab = hosts
    assert lab.net is not None
    pid = lab.labs["h1"].define_and_start("g4", memory_mib=32)
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "g4") == (0, "Status: ON"), lab.logs()
    lab.net.bridge.ip("link", "set", "veth1", "down")  # h1 is veth1 on the bridge
    try:
        lab.daemons["h2"].wait_for_log("host h1: libvirt connection to", timeout=30)
        assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "g4", "-t", "10")[0] == 1, lab.logs()
        assert lab.request_counts("g4", "off", 1)["h2"] == 1
        assert "outcome=fail" in lines(lab.daemons["h2"], "g4", "off")[0]
        assert not gone(pid) and lab.labs["h1"].qemu_pid("g4") == pid  # never acted on
    finally:
        lab.net.bridge.ip("link", "set", "veth1", "up")
    deadline = time.monotonic() + 30
    while lab.daemons["h2"].log_text().count("host h1: libvirt at") < 2:  # reconnected
        assert time.monotonic() < deadline, lab.logs()
        time.sleep(0.05)
    while lab.fence_xvm(tmp_key, "-o", "status", "-H", "g4", "-t", "3") != (0, "Status: ON"):
        assert time.monotonic() < deadline, lab.logs()
