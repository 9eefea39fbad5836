"""fence_scsi against a real target: tgt on loopback, three nodes as separate iSCSI sessions.

Each node keeps one session per LUN, its data path, and fence_scsi's PR
commands travel on it (as fence-agents' travel on the node's /dev/sdX). tgt
1.0.85 rejects PREEMPT AND ABORT, so fencing there needs the opt-in fallback;
without it fencing fails and says why.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.tgt import TgtTarget, missing_tools
from guestfence.scsi.fencing import FencingError, SharedStorage
from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.sense import SenseKey, decode_sense
from guestfence.scsi.transport import Borrowed, Direction, Status

pytestmark = pytest.mark.integration

NODES = {"node1": 0x6C9D0001, "node2": 0x6C9D0002, "node3": 0x6C9D0003}
LUNS = 3
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])


class Site:
    def __init__(self, target: TgtTarget) -> None:
        self.target = target
        self.urls = [target.url(lun) for lun in range(1, LUNS + 1)]
        self.paths = {
            (node, url): Borrowed(IscsiTransport(url, f"iqn.2026-11.org.guestfence.lab:{node}",
                                                 isid_seed=node, connect_timeout=5))
            for node in NODES for url in self.urls
        }

    def storage(self, node: str, **options: bool) -> SharedStorage:
        return SharedStorage(self.urls, lambda url: self.paths[(node, url)], **options)

    def write(self, node: str, url: str) -> int:
        """WRITE(10) status, retried after unit attentions as an initiator does."""
        status = Status.GOOD
        for _ in range(4):
            result = self.paths[(node, url)].execute(WRITE10, Direction.TO_DEVICE, bytes(512))
            status = Status(result.status)
            if status != Status.CHECK_CONDITION:
                break
            assert decode_sense(result.sense).key == SenseKey.UNIT_ATTENTION, result
        return status

    def unfence_all(self) -> None:
        for node, key in NODES.items():
            self.storage(node).unfence(key)

    def close(self) -> None:
        for path in self.paths.values():
            path.transport.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    missing = missing_tools()
    if missing:
        pytest.fail("fence_scsi tests need: " + "; ".join(missing), pytrace=False)
    with TgtTarget(tmp_path / "tgt", luns=LUNS) as target:
        s = Site(target)
        try:
            yield s
        finally:
            s.close()


def test_unfence_then_fence_one_node(site: Site) -> None:
    site.unfence_all()
    assert site.storage("node2").is_registered(NODES["node1"])
    assert all(site.write(n, u) == Status.GOOD for n in NODES for u in site.urls)

    outcome = site.storage("node3", preempt_fallback=True).fence(NODES["node3"], NODES["node1"])
    assert {o.method for o in outcome.values()} == {"PREEMPT (fallback)"}

    assert not site.storage("node2").is_registered(NODES["node1"])
    for url in site.urls:
        assert site.write("node1", url) == Status.RESERVATION_CONFLICT
        assert site.write("node2", url) == Status.GOOD
        assert site.write("node3", url) == Status.GOOD


def test_preempt_and_abort_refusal_is_reported_and_changes_nothing(site: Site) -> None:
    site.unfence_all()
    with pytest.raises(FencingError) as info:
        site.storage("node3").fence(NODES["node3"], NODES["node1"])
    assert set(info.value.failures) == set(site.urls)
    assert "rejects PREEMPT AND ABORT" in str(info.value)
    assert "INVALID FIELD IN CDB (24/00)" in str(info.value)
    assert site.storage("node2").is_registered(NODES["node1"])
    assert all(site.write("node1", u) == Status.GOOD for u in site.urls)


def test_target_restarted_mid_way_no_false_success(site: Site) -> None:
    site.unfence_all()
    site.target.restart()  # tgt keeps PR state in memory only: keys and reservation are gone
    site.storage("node3", preempt_fallback=True).fence(NODES["node3"], NODES["node1"])
    for url in site.urls:
        # the fencer took the reservation again, so the unregistered victim is cut off
        assert site.write("node1", url) == Status.RESERVATION_CONFLICT
        assert site.write("node3", url) == Status.GOOD


def test_target_down_fails_and_names_every_device(site: Site) -> None:
    site.unfence_all()
    site.target.stop()
    started = time.monotonic()
    with pytest.raises(FencingError) as info:
        site.storage("node3", preempt_fallback=True).fence(NODES["node3"], NODES["node1"])
    assert set(info.value.failures) == set(site.urls)
    assert time.monotonic() - started < 15


def run_agent_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_tool("fence_scsi"), *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_agent_process_bad_url_and_unreachable_target(site: Site, tmp_path: Path) -> None:
    bad = run_agent_process("-o", "on", "-k", "1", "-d", "iscsi://127.0.0.1/no-lun-here",
                            "--state-dir", str(tmp_path / "s1"))
    assert bad.returncode == 1 and "iscsi://host[:port]/" in bad.stderr, bad.stderr
    assert not (tmp_path / "s1").exists()  # nothing was done

    url = site.urls[0].replace(f":{site.target.portal.rsplit(':', 1)[1]}/", ":9/")
    t0 = time.monotonic()
    down = run_agent_process("-o", "status", "-k", "1", "-d", url, "--login-timeout", "3")
    assert down.returncode == 1 and "127.0.0.1:9" in down.stderr, down.stderr
    assert time.monotonic() - t0 < 20


def test_agent_process_unfences_over_iscsi(site: Site, tmp_path: Path) -> None:
    """The agent's own sessions: keys land under this node's initiator name and ISID."""
    state = tmp_path / "node9"
    args = ("-d", ",".join(site.urls), "--initiator-name", "iqn.2026-11.org.guestfence:n9",
            "--state-dir", str(state), "-k", "9")
    on = run_agent_process("-o", "on", *args)
    assert (on.returncode, on.stdout) == (0, "Success: Powered ON\n"), on.stderr
    assert (state / "fence_scsi.key").read_text() == "9\n"
    status = run_agent_process("-o", "status", *args)
    assert (status.returncode, status.stdout) == (0, "Status: ON\n"), status.stderr
