"""fence_scsi and storage-check through our own target, which supports PREEMPT AND ABORT.

The counterpart of the tgt tests: here fencing needs no fallback, registrations
belong to the I_T nexus (initiator name + ISID), so they outlive the agent's
own session, and with APTPL they outlive a restart of the target.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.ourtarget import OurTarget
from guestfence.scsi.fencing import SharedStorage
from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.prclient import PrClient
from guestfence.scsi.sense import SenseKey, decode_sense
from guestfence.scsi.transport import Borrowed, Direction, Status

pytestmark = pytest.mark.integration

NODES = {"node1": 0x6C9D0001, "node2": 0x6C9D0002, "node3": 0x6C9D0003}
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])


def initiator(node: str) -> str:
    return f"iqn.2026-11.org.guestfence.lab:{node}"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[OurTarget]:
    with OurTarget(tmp_path / "target", luns=2) as t:
        yield t


def write_status(transport: IscsiTransport) -> Status:
    status = Status.GOOD
    for _ in range(4):  # an initiator retries after unit attentions
        result = transport.execute(WRITE10, Direction.TO_DEVICE, bytes(512))
        status = Status(result.status)
        if status != Status.CHECK_CONDITION:
            break
        assert decode_sense(result.sense).key == SenseKey.UNIT_ATTENTION, result
    return status


def test_storage_check_calls_it_fit(target: OurTarget) -> None:
    r = subprocess.run([venv_tool("guestfence"), "storage-check", target.url(2), "--scratch",
                        target.url(1)], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    scratch = next(x for x in r.stdout.splitlines() if x.startswith(f"{target.url(1)}: "))
    assert scratch.startswith(f"{target.url(1)}: fit for fence_scsi")
    assert "re-login" not in scratch  # registrations belong to the nexus, not the session


def test_fence_scsi_fences_with_preempt_and_abort(target: OurTarget) -> None:
    urls = [target.url(1), target.url(2)]
    paths = {(n, u): IscsiTransport(u, initiator(n), isid_seed=n, connect_timeout=5)
             for n in NODES for u in urls}
    try:
        for node, key in NODES.items():
            SharedStorage(urls, lambda u, n=node: Borrowed(paths[(n, u)])).unfence(key)
        fencer = SharedStorage(urls, lambda u: Borrowed(paths[("node3", u)]))
        outcome = fencer.fence(NODES["node3"], NODES["node1"])
        assert {o.method for o in outcome.values()} == {"PREEMPT AND ABORT"}
        for url in urls:
            assert write_status(paths[("node1", url)]) == Status.RESERVATION_CONFLICT
            assert write_status(paths[("node2", url)]) == Status.GOOD
    finally:
        for transport in paths.values():
            transport.close()


def agent(state: Path, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_tool("fence_scsi"), "--state-dir", str(state / node),
                           "--initiator-name", initiator(node), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_agent_processes_and_aptpl_across_a_restart(target: OurTarget, tmp_path: Path) -> None:
    """Each agent run is a new session of the same nexus; APTPL keeps keys over a restart."""
    devices = ("-d", f"{target.url(1)},{target.url(2)}")
    for node, key in NODES.items():
        on = agent(tmp_path, node, "-o", "on", "-k", f"{key:x}", "--aptpl", *devices)
        assert (on.returncode, on.stdout) == (0, "Success: Powered ON\n"), on.stderr
    target.restart()
    for url in (target.url(1), target.url(2)):
        with IscsiTransport(url, initiator("observer")) as observer:
            client = PrClient(observer)
            client.test_unit_ready()
            assert sorted(client.read_keys().keys) == sorted(NODES.values())
            assert client.read_reservation().reservation is not None
    off = agent(tmp_path, "node3", "-o", "off", "-k", f"{NODES['node1']:x}", *devices)
    assert (off.returncode, off.stdout) == (0, "Success: Powered OFF\n"), off.stderr
    assert "falling back" not in off.stderr
    status = agent(tmp_path, "node2", "-o", "status", "-k", f"{NODES['node1']:x}", *devices)
    assert (status.returncode, status.stdout) == (2, "Status: OFF\n"), status.stderr
    # node1 logs in again as itself: its writes now conflict
    with IscsiTransport(target.url(1), initiator("node1"), isid_seed=initiator("node1")) as n1:
        assert write_status(n1) == Status.RESERVATION_CONFLICT


def test_acknowledged_writes_survive_a_killed_target(target: OurTarget) -> None:
    """Every WRITE the target acknowledged is read back after it is killed (SIGKILL) and
    restarted. (A killed process keeps the page cache; the fdatasync before each
    acknowledgement, which power loss needs, is checked in tests/unit/test_target_scsi.py.)"""
    blocks = {lba: bytes([lba % 251]) * 512 for lba in range(0, 4096, 97)}
    with IscsiTransport(target.url(1), initiator("writer"), connect_timeout=5) as w:
        for lba, data in blocks.items():
            cdb = bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0])
            assert w.execute(cdb, Direction.TO_DEVICE, data).status in (Status.GOOD,
                                                                         Status.CHECK_CONDITION)
        for lba, data in blocks.items():  # the first WRITE may have met the login's UA
            cdb = bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0])
            assert w.execute(cdb, Direction.TO_DEVICE, data).status == Status.GOOD
    target.restart(hard=True)
    with IscsiTransport(target.url(1), initiator("reader"), connect_timeout=5) as r:
        PrClient(r).test_unit_ready()
        for lba, data in blocks.items():
            cdb = bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0])
            got = r.execute(cdb, Direction.FROM_DEVICE, data_in_length=512)
            assert (got.status, got.data) == (Status.GOOD, data), lba


@pytest.mark.parametrize(("sync", "wce"), [("always", False), ("on-flush", True)])
def test_sync_policy_is_what_the_caching_page_says(tmp_path: Path, sync: str,
                                                   wce: bool) -> None:
    with OurTarget(tmp_path / "t", sync=sync) as t, \
            IscsiTransport(t.url(1), initiator("probe"), connect_timeout=5) as probe:
        PrClient(probe).test_unit_ready()
        page = probe.execute(bytes([0x1A, 0x08, 0x08, 0, 255, 0]), Direction.FROM_DEVICE,
                             data_in_length=255)
        assert page.status == Status.GOOD
        caching = page.data[4:]  # after the mode parameter header (DBD set: no descriptor)
        assert caching[0] & 0x3F == 0x08 and bool(caching[2] & 0x04) == wce
