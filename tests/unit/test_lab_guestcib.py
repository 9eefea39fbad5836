"""The guest-cluster lab's generated configuration: corosync.conf, seeded CIB, stonith CIB."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from guestfence.lab import guestcib
from guestfence.lab.cluster import corosync_conf, seed_cib

NODES = ["node1", "node2", "node3"]


def test_corosync_conf_lists_every_node_and_two_node_only_for_two() -> None:
    members = [(n, i, f"10.0.0.{i}") for i, n in enumerate(NODES, start=1)]
    conf = corosync_conf("gflab", 1000, members)
    assert "cluster_name: gflab" in conf and "token: 1000" in conf
    assert conf.count("node {") == 3 and "ring0_addr: 10.0.0.3" in conf
    assert "two_node" not in conf
    assert "two_node: 1" in corosync_conf("x", 1000, members[:2])


def test_seeded_cib_carries_the_options() -> None:
    cib = ET.fromstring(seed_cib({"dc-deadtime": "2s", "stonith-action": "off"}))
    pairs = {p.get("name"): p.get("value") for p in cib.iter("nvpair")}
    assert pairs == {"dc-deadtime": "2s", "stonith-action": "off"}
    assert cib.find("configuration/resources") is not None and cib.find("status") is not None


def test_stonith_devices_use_our_agents_and_unfencing() -> None:
    res = ET.fromstring(guestcib.resources_xml(NODES, "/k", ["iscsi://h/iqn.x:y/1"]))
    prims = {p.get("id"): p for p in res.iter("primitive")}
    xvm, scsi = prims[guestcib.XVM_DEVICE], prims[guestcib.SCSI_DEVICE]
    assert (xvm.get("class"), xvm.get("type")) == ("stonith", "fence_xvm")
    params = {p.get("name"): p.get("value") for p in scsi.find("instance_attributes") or []}
    assert params["devices"] == "iscsi://h/iqn.x:y/1" and params["key_value"] == "hash"
    meta = {p.get("name"): p.get("value") for p in scsi.find("meta_attributes") or []}
    assert meta == {"provides": "unfencing"}
    ids = [e.get("id") for e in res.iter() if e.get("id")]
    assert len(ids) == len(set(ids))  # the CIB refuses duplicate ids


def test_topology_has_two_levels_per_node() -> None:
    topo = ET.fromstring(guestcib.topology_xml(NODES))
    levels = {(lv.get("target"), lv.get("index")): lv.get("devices") for lv in topo}
    assert levels[("node3", "1")] == guestcib.XVM_DEVICE
    assert levels[("node3", "2")] == guestcib.SCSI_DEVICE
    assert len(levels) == 6
