"""Keys equal to fence-agents' for the same cluster and node (spec worked examples)."""

from __future__ import annotations

import pytest

from guestfence.scsi.keys import (
    ReservationKeyError,
    derive_key,
    key_int,
    node_index,
    normalise_key,
    parse_cluster_name,
)

NODELIST = """\
nodelist.local_node_pos (u32) = 1
nodelist.node.0.name (str) = node1
nodelist.node.0.nodeid (u32) = 1
nodelist.node.0.ring0_addr (str) = 192.0.2.1
nodelist.node.1.name (str) = node2
nodelist.node.1.nodeid (u32) = 7
nodelist.node.1.ring0_addr (str) = 192.0.2.2
nodelist.node.2.ring0_addr (str) = node3
"""


def test_spec_examples() -> None:
    assert derive_key("mycluster", "node1", "id", NODELIST) == "6c9d0000"
    assert derive_key("mycluster", "node2", "id", NODELIST) == "6c9d0001"
    assert derive_key("mycluster", "node2", "hash") == "6c9d7888"


def test_index_not_nodeid_and_ring_addr_fallback() -> None:
    assert node_index(NODELIST, "node2") == 1  # nodeid is 7
    assert node_index(NODELIST, "node3") == 2
    with pytest.raises(ReservationKeyError, match="does not exist"):
        node_index(NODELIST, "node9")


def test_cluster_name_from_cmapctl() -> None:
    assert parse_cluster_name("totem.cluster_name (str) = mycluster\n") == "mycluster"
    with pytest.raises(ReservationKeyError, match=r"no totem\.cluster_name"):
        parse_cluster_name("totem.version (u32) = 2\n")


@pytest.mark.parametrize(("given", "norm"), [("0x6C9D0001", "6c9d0001"), ("00ab", "ab"),
                                             (" 1 ", "1"), ("ffffffffffffffff", "f" * 16)])
def test_normalise(given: str, norm: str) -> None:
    assert normalise_key(given) == norm
    assert key_int(given) == int(norm, 16)


@pytest.mark.parametrize(("bad", "message"), [("0", "cannot be 0"), ("0x000", "cannot be 0"),
                                              ("", "hexadecimal"), ("xyz", "hexadecimal"),
                                              ("1" * 17, "more than 16")])
def test_bad_keys(bad: str, message: str) -> None:
    with pytest.raises(ReservationKeyError, match=message):
        normalise_key(bad)


def test_unknown_method() -> None:
    with pytest.raises(ReservationKeyError, match="expected id or hash"):
        derive_key("c", "n", "random")
