"""Fencing a real QEMU guest: a private libvirtd runs a diskless TCG guest.

libvirtd runs in the test's network namespace and in a private mount namespace
(see :mod:`guestfence.lab.libvirtd`).  guestfenced runs in the same network
namespace (so its multicast stays there) but in the machine's mount namespace:
it reaches libvirtd through the socket file in the scratch directory, with a
``qemu:///system?socket=SCRATCH/run/libvirt/libvirt-sock`` URI.  That avoids
entering the mount namespace with nsenter, and a unix socket addressed by path
does not care about network namespaces.

The point of the test: ``fence_xvm -o off`` succeeds only once the guest is
really off, i.e. its qemu process is gone (reaped) when the agent returns.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.lab.libvirtd import LibvirtLab, missing_tools, pid_alive
from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool

pytestmark = pytest.mark.integration

GUEST = "gfqemu1"
C_FENCE_XVM = "/usr/sbin/fence_xvm"


@pytest.fixture
def libvirt_lab(netns: Namespace, tmp_path: Path, request: pytest.FixtureRequest) \
        -> Iterator[LibvirtLab]:
    """A running private libvirtd in ``netns``; stopped (with every process) afterwards."""
    missing = missing_tools()
    if missing:
        pytest.fail("the real-QEMU test needs: " + "; ".join(missing), pytrace=False)
    lab = LibvirtLab(tmp_path / "libvirt", netns)
    try:
        lab.start()
        yield lab
    finally:
        try:
            lab.stop()
        finally:
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                print(f"--- {lab!r}\n{lab.log_tail()}\n--- qemu log\n{lab.qemu_log(GUEST)}")


def _gone(pid: int) -> bool:
    """The process no longer exists at all: not even a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_off_returns_only_when_qemu_is_gone(
    libvirt_lab: LibvirtLab, netns: Namespace, tmp_path: Path, tmp_key: Path
) -> None:
    lab = libvirt_lab
    pid = lab.define_and_start(GUEST, memory_mib=64)
    assert pid_alive(pid)
    assert b"-accel\0tcg\0" in Path(f"/proc/{pid}/cmdline").read_bytes()  # software emulation

    conf = tmp_path / "guestfenced.conf"
    conf.write_text(daemon_config_text(str(tmp_key), [lab.uri]))  # multicast on lo
    conf.chmod(0o600)

    def agent(*args: str, exe: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [exe or venv_tool("fence_xvm"), "-k", str(tmp_key), *args]
        return netns.run(argv, capture_output=True, text=True, timeout=30)

    def status(exe: str | None = None) -> tuple[int, str]:
        r = agent("-o", "status", "-H", GUEST, exe=exe)
        return r.returncode, r.stdout.strip()

    with OurDaemon(conf, namespace=netns) as daemon:
        assert status() == (0, "Status: ON"), daemon.log_text()
        assert status(C_FENCE_XVM) == (0, "Status: ON"), daemon.log_text()

        off = agent("-o", "off", "-H", GUEST)
        # checked right away: success may only be reported once qemu has exited
        assert _gone(pid), f"qemu {pid} still exists after off returned"
        assert off.returncode == 0, off.stdout + off.stderr + daemon.log_text()
        assert lab.qemu_pids(GUEST) == []
        assert status() == (2, "Status: OFF")

        on = agent("-o", "on", "-H", GUEST)
        assert on.returncode == 0, on.stdout + on.stderr + daemon.log_text()
        new_pid = lab.qemu_pid(GUEST)  # on answers once libvirt shows the guest running
        assert new_pid is not None and new_pid != pid and pid_alive(new_pid)
        assert lab.qemu_pids(GUEST) == [new_pid]
        assert status() == (0, "Status: ON")

        off = agent("-o", "off", "-H", GUEST)
        assert _gone(new_pid), f"qemu {new_pid} still exists after off returned"
        assert off.returncode == 0, off.stdout + off.stderr
        assert status() == (2, "Status: OFF")
        assert any("outcome=" in line for line in daemon.request_lines())


def test_daemon_reconnects_after_libvirtd_restart(
    libvirt_lab: LibvirtLab, netns: Namespace, tmp_path: Path, tmp_key: Path
) -> None:
    """libvirtd goes away under a running guestfenced: failures meanwhile, never a hang;
    once libvirtd is back on the same socket the daemon reconnects by itself."""
    libvirt_lab.define_and_start(GUEST, memory_mib=64)
    conf = tmp_path / "guestfenced.conf"
    conf.write_text(daemon_config_text(str(tmp_key), [libvirt_lab.uri]))
    conf.chmod(0o600)

    def agent(*args: str) -> subprocess.CompletedProcess[str]:
        return netns.run([venv_tool("fence_xvm"), "-k", str(tmp_key), "-t", "5", *args],
                         capture_output=True, text=True, timeout=30)

    with OurDaemon(conf, namespace=netns) as daemon:
        assert agent("-o", "status", "-H", GUEST).returncode == 0, daemon.log_text()
        libvirt_lab.stop()
        t0 = time.monotonic()
        down = agent("-o", "monitor")
        assert down.returncode == 1, down.stdout + down.stderr
        assert time.monotonic() - t0 < 6
        restarted = LibvirtLab(libvirt_lab.scratch, netns)  # same scratch: same socket
        try:
            restarted.start()
            restarted.start_domain(GUEST)  # the definition persisted, as on a real host
            assert agent("-o", "monitor").returncode == 0, daemon.log_text()
            r = agent("-o", "status", "-H", GUEST)
            assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), daemon.log_text()
        finally:
            restarted.stop()
