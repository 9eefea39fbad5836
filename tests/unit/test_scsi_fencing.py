"""Unfence and fence across several devices, against the SPC-4 fake target.

Each "node" keeps one I_T nexus per device, as a node's own SCSI path does
(fence-agents sends its PR commands through the node's /dev/sdX); the opener
hands that nexus out and ``close`` leaves it open.
"""

from __future__ import annotations

import pytest

from guestfence.errors import GuestfenceError
from guestfence.scsi import pr
from guestfence.scsi.fencing import FencingError, SharedStorage
from guestfence.scsi.sense import SenseKey, decode_sense
from guestfence.scsi.transport import Borrowed, Direction, ScsiResult, Status

from .fake_pr_target import FakePrTarget

KEYS = {"node1": 0x6C9D0000, "node2": 0x6C9D0001, "node3": 0x6C9D0002}
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])


class Cluster:
    def __init__(self, devices: int = 2, **target_options: bool) -> None:
        self.targets = {f"lun{i}": FakePrTarget(name=f"lun{i}", **target_options)
                        for i in range(devices)}
        self.paths = {(node, dev): Borrowed(t.connect(f"iqn.2026-11.lab:{node}"))
                      for node in KEYS for dev, t in self.targets.items()}

    def storage(self, node: str, **options: bool) -> SharedStorage:
        return SharedStorage(list(self.targets), lambda dev: self.paths[(node, dev)], **options)

    def write(self, node: str, dev: str) -> int:
        """Status of a WRITE(10); like an initiator, retried after a unit attention."""
        for _ in range(3):
            result = self.paths[(node, dev)].execute(WRITE10, Direction.TO_DEVICE, bytes(512))
            if result.status != Status.CHECK_CONDITION:
                break
            assert decode_sense(result.sense).key == SenseKey.UNIT_ATTENTION, result
        return result.status

    def unfence_all(self) -> None:
        for node, key in KEYS.items():
            self.storage(node).unfence(key)


def test_unfence_registers_everywhere_and_reserves_once() -> None:
    c = Cluster()
    c.unfence_all()
    for t in c.targets.values():
        assert sorted(t.keys) == sorted(KEYS.values())
        assert t.reservation is not None
        assert t.reservation.type == pr.PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    assert all(c.write(n, d) == Status.GOOD for n in KEYS for d in c.targets)


def test_fence_cuts_the_victim_only_and_is_verified() -> None:
    c = Cluster(devices=3)
    c.unfence_all()
    outcome = c.storage("node3").fence(KEYS["node3"], KEYS["node1"])  # node1 holds it
    assert all(o.preempted and o.method == "PREEMPT AND ABORT" for o in outcome.values())
    for dev, t in c.targets.items():
        assert KEYS["node1"] not in t.keys
        assert t.reservation is not None
        assert c.write("node1", dev) == Status.RESERVATION_CONFLICT
        assert c.write("node2", dev) == Status.GOOD
        assert c.write("node3", dev) == Status.GOOD
    assert not c.storage("node2").is_registered(KEYS["node1"])
    assert c.storage("node2").is_registered(KEYS["node2"])


def test_fencing_an_absent_key_is_already_off() -> None:
    c = Cluster()
    c.unfence_all()
    c.storage("node2").fence(KEYS["node2"], KEYS["node1"])
    again = c.storage("node3").fence(KEYS["node3"], KEYS["node1"])
    assert not any(o.preempted for o in again.values())


def test_fencing_yourself_is_refused() -> None:
    c = Cluster()
    with pytest.raises(GuestfenceError, match="can not fence yourself"):
        c.storage("node1").fence(KEYS["node1"], KEYS["node1"])


def test_target_without_preempt_and_abort_fails_clearly() -> None:
    c = Cluster(reject_preempt_and_abort=True)
    c.unfence_all()
    with pytest.raises(FencingError) as info:
        c.storage("node3").fence(KEYS["node3"], KEYS["node1"])
    message = str(info.value)
    assert "lun0" in message and "lun1" in message
    assert "rejects PREEMPT AND ABORT" in message and "preempt_fallback" in message
    assert all(KEYS["node1"] in t.keys for t in c.targets.values())  # nothing claimed done


def test_opt_in_fallback_uses_preempt_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    c = Cluster(reject_preempt_and_abort=True)
    c.unfence_all()
    outcome = c.storage("node3", preempt_fallback=True).fence(KEYS["node3"], KEYS["node1"])
    assert {o.method for o in outcome.values()} == {"PREEMPT (fallback)"}
    assert "falling back to PREEMPT" in caplog.text
    assert all(c.write("node1", d) == Status.RESERVATION_CONFLICT for d in c.targets)


def test_lost_reservation_is_taken_again_so_the_victim_stays_cut_off() -> None:
    c = Cluster(devices=1)
    c.unfence_all()
    target = c.targets["lun0"]
    target.power_cycle()  # no APTPL: registrations and reservation are gone
    c.storage("node3").fence(KEYS["node3"], KEYS["node1"])
    assert target.reservation is not None
    assert c.write("node1", "lun0") == Status.RESERVATION_CONFLICT


def test_a_failing_device_fails_the_action_and_is_named() -> None:
    c = Cluster()
    c.unfence_all()
    broken = c.paths[("node3", "lun1")].transport
    broken.fail_next(*[ScsiResult(Status.BUSY)] * 10)
    with pytest.raises(FencingError) as info:
        c.storage("node3").fence(KEYS["node3"], KEYS["node1"])
    assert list(info.value.failures) == ["lun1"]


def test_stale_registration_of_our_key_is_replaced() -> None:
    """The same key on an old nexus (an iSCSI re-login): self-preempt, then register."""
    c = Cluster(devices=1)
    c.unfence_all()
    target = c.targets["lun0"]
    fresh = Borrowed(target.connect("iqn.2026-11.lab:node2"))  # node2 logged in again
    storage = SharedStorage(["lun0"], lambda dev: fresh)
    storage.unfence(KEYS["node2"])
    assert target.keys.count(KEYS["node2"]) == 1
    assert fresh.execute(WRITE10, Direction.TO_DEVICE, bytes(512)).status == Status.GOOD
