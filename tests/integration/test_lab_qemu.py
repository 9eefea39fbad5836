"""guestfence lab --qemu: pacemaker fences a real QEMU guest through our fence_xvm.

The hosts run a private libvirtd with diskless TCG guests named after the
cluster nodes; "node3 is off" is checked on the host itself: its qemu process
is gone, not only the daemon's answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.lab.guestlab import GuestLab
from guestfence.lab.libvirtd import pid_alive
from guestfence.lab.netns import run_prefix

pytestmark = pytest.mark.integration


def qemu_pid_of(lab: GuestLab, guest: str) -> int:
    info = json.loads((lab.state_dir / lab.host_of(guest) / "qemuhost.json").read_text())
    return int(info["guests"][guest])


def qemu_running(guest: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and b"qemu-system" in cmdline[0] and f"guest={guest},".encode() in \
                    b" ".join(cmdline) and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def qemu_lab(tmp_path: Path) -> Iterator[GuestLab]:
    lab = GuestLab(tmp_path / "lab", prefix=run_prefix(), qemu=True)
    try:
        lab.up(start_timeout=150)
        yield lab
    finally:
        lab.down()


def test_pacemaker_fences_a_real_qemu_guest(qemu_lab: GuestLab) -> None:
    lab = qemu_lab
    assert lab.cluster is not None
    victim = qemu_pid_of(lab, "node3")
    assert pid_alive(victim) and lab.guest_power("node3") == "on"
    done = lab.cluster.node("node1").run(["stonith_admin", "--fence", "node3", "-t", "60"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert not pid_alive(victim), "node3's qemu still runs after the fence succeeded"
    assert lab.guest_power("node3") == "off"
    assert any("target=node3 action=off " in x and "outcome=success" in x
               for x in lab.host_requests("host2"))
    assert qemu_running("node1") and qemu_running("node2")  # only the victim
    # the power link saw the qemu guest go off: node3's stack died with it
    deadline = time.monotonic() + 30
    while lab.cluster.node("node3").stack_pids():
        assert time.monotonic() < deadline, "node3's stack outlived its qemu guest"
        time.sleep(0.2)
    assert any("power cut" in x for x in lab.power_link_actions("node3"))

    lab.restart_guest("node3")
    assert lab.guest_power("node3") == "on" and qemu_running("node3")
    assert any("power on" in x for x in lab.power_link_actions("node3"))  # booted by the link
    assert lab.cluster.node("node1").corosync_members() == {1, 2, 3}
    lab.down()
    assert not any(qemu_running(g) for g in ("node1", "node2", "node3"))
