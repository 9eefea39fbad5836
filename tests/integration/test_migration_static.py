"""Static mode on real hosts: a guest on the wrong host, or migrated, is reported and fails.

Two hosts (h1, h2), each a private libvirtd with real QEMU (TCG) guests; a
guestfenced per host with ``backend = "static"`` and the same map; fence_xvm
multicasts from a third namespace. ``guestfence check --fence-virt-conf``
compares the map with what libvirt discovery shows.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from guestfence.lab.hostslab import HostsLab
from guestfence.lab.libvirtd import pid_alive
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool

pytestmark = pytest.mark.integration

MAP = (("h1", ("vm1", "vm2")), ("h2", ("vm3", "wrong")))


@pytest.fixture
def hosts(hosts_lab: HostsLab, tmp_key: Path) -> HostsLab:
    lab = hosts_lab
    lab.labs["h1"].define_and_start("vm1", memory_mib=32)
    lab.labs["h1"].define_and_start("wrong", memory_mib=32)  # the map gives it to h2
    lab.labs["h2"].define_and_start("vm3", memory_mib=32)
    for host in lab.host_names:
        lab.daemon(host, daemon_config_text(
            str(tmp_key), [lab.tcp_uri(host)], interface="eth0", backend="static",
            host_name=host, static_map=MAP))
    return lab


def lines(daemon: OurDaemon, guest: str) -> list[str]:
    return [x for x in daemon.request_lines() if f"target={guest} " in x]


def violations(lab: HostsLab, host: str) -> int:
    r = subprocess.run([venv_tool("guestfence"), "status", "--json", "--socket",
                        str(lab.admin_socket(host))], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr

    def find(node: Any) -> int | None:
        if isinstance(node, dict):
            if isinstance(node.get("tracking"), dict):
                return int(node["tracking"]["violations"])
            for value in node.values():
                found = find(value)
                if found is not None:
                    return found
        return None

    count = find(json.loads(r.stdout))
    assert count is not None, r.stdout
    return count


def test_guest_on_the_wrong_host_is_reported_and_fails(hosts: HostsLab, tmp_key: Path) -> None:
    lab = hosts
    h1, h2 = lab.daemons["h1"], lab.daemons["h2"]
    h1.wait_for_log("static map violation: guest wrong runs on host h1, mapped to h2")
    assert violations(lab, "h1") == 1 and violations(lab, "h2") == 0

    wrong_pid = lab.labs["h1"].qemu_pid("wrong")
    assert wrong_pid is not None
    assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "wrong", "-t", "10")[0] == 1, lab.logs()
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "wrong", "-t", "10")[0] == 1
    assert pid_alive(wrong_pid), "a request for a misplaced guest acted on it"
    # one answer per request: h2, the host the map gives it (h1, where it runs, is silent)
    assert lab.request_counts("wrong", total=2) == {"h1": 0, "h2": 2}, lab.logs()
    assert all("outcome=fail" in x for x in lines(h2, "wrong"))

    # normal guests still work, each answered by its own host only
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "vm1") == (0, "Status: ON")
    pid = lab.labs["h2"].qemu_pid("vm3")
    assert pid is not None
    assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "vm3")[0] == 0, lab.logs()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, not even a zombie
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "vm3") == (2, "Status: OFF")
    assert lab.request_counts("vm1", total=1) == {"h1": 1, "h2": 0}
    assert lab.request_counts("vm3", total=2) == {"h1": 0, "h2": 2}

    # guestfence check finds it from the same map and live discovery
    r = subprocess.run([venv_tool("guestfence"), "check", "--libvirt", lab.labs["h1"].uri,
                        "--libvirt", lab.labs["h2"].uri, "--fence-virt-conf",
                        h1.config, "--format", "json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    found = [f for f in json.loads(r.stdout)["findings"] if f["rule"] == "STATIC-MAP-PLACEMENT"]
    assert [(f["severity"], f["guests"], f["hosts"]) for f in found] == [
        ("error", ["wrong"], ["h1", "h2"]), ("info", ["vm2"], [])], found  # vm2: not defined


def test_live_migration_is_reported_and_its_requests_fail(hosts: HostsLab,
                                                          tmp_key: Path) -> None:
    lab = hosts
    lab.labs["h1"].migrate("vm1", lab.labs["h2"])
    lab.daemons["h2"].wait_for_log("static map violation: guest vm1 runs on host h2, "
                                   "mapped to h1")
    lab.daemons["h1"].wait_for_log("static map violation: guest vm1 in a live migration")
    assert violations(lab, "h2") >= 1
    assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "vm1", "-t", "10")[0] == 1, lab.logs()
    assert lab.labs["h2"].qemu_pid("vm1") is not None  # not acted on
    assert lab.request_counts("vm1", total=1) == {"h1": 1, "h2": 0}

    # h1's guestfenced restarts: the definition the migration left behind on h1 (shut
    # off, reason "migrated") is still no "off" while vm1 runs on h2
    h1 = lab.daemons["h1"]
    h1.stop()
    h1.start(timeout=30)
    assert lab.fence_xvm(tmp_key, "-o", "off", "-H", "vm1", "-t", "10")[0] == 1, lab.logs()
    assert lab.fence_xvm(tmp_key, "-o", "status", "-H", "vm1", "-t", "10")[0] == 1
    assert lab.labs["h2"].qemu_pid("vm1") is not None
