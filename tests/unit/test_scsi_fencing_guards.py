"""Safety guards found in review: a fenced node cannot come back by fencing others."""

from __future__ import annotations

import pytest

from guestfence.scsi.fencing import FencingError
from guestfence.scsi.transport import Status

from .test_scsi_fencing import KEYS, Cluster


def test_fenced_node_cannot_readmit_itself_by_fencing_back() -> None:
    c = Cluster(devices=2)
    c.storage("node1").unfence(KEYS["node1"])
    c.storage("node2").unfence(KEYS["node2"])
    c.storage("node1").fence(KEYS["node1"], KEYS["node2"])
    # split brain: node2, already fenced, tries to fence node1
    with pytest.raises(FencingError) as info:
        c.storage("node2").fence(KEYS["node2"], KEYS["node1"])
    assert "has been fenced" in str(info.value)
    assert all(KEYS["node2"] not in t.keys for t in c.targets.values())
    assert all(KEYS["node1"] in t.keys for t in c.targets.values())
    assert all(c.write("node2", d) == Status.RESERVATION_CONFLICT for d in c.targets)
    assert all(c.write("node1", d) == Status.GOOD for d in c.targets)


def test_after_a_target_lost_its_state_the_reservation_is_rebuilt() -> None:
    c = Cluster(devices=1)
    c.unfence_all()
    c.targets["lun0"].power_cycle()  # every key and the reservation are gone
    c.storage("node3").fence(KEYS["node3"], KEYS["node1"])
    assert c.targets["lun0"].reservation is not None
    assert c.write("node1", "lun0") == Status.RESERVATION_CONFLICT
