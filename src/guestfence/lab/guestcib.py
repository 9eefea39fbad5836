"""The CIB the guest-cluster lab loads: our agents as stonith devices, two fencing levels.

* ``fence-xvm`` (stonith:fence_xvm): powers a guest off through the hosts'
  guestfenced daemons; the guests carry the cluster nodes' names.
* ``fence-scsi`` (stonith:fence_scsi, ``meta provides=unfencing``): cuts a node
  off the shared LUN; each node registers its own key when it joins
  (unfencing, run by that node's fencer because the metadata says
  ``on_target="1"``).
* fencing topology: level 1 fence-xvm, level 2 fence-scsi, for every node.
* a ``Dummy`` resource, so "the cluster keeps its resources" can be checked.

Pure text building; :mod:`guestfence.lab.guestlab` loads it with cibadmin.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

XVM_DEVICE = "fence-xvm"
SCSI_DEVICE = "fence-scsi"
RESOURCE = "web"
XVM_TIMEOUT_S = 5
"""fence_xvm waits this long for a host's answer (default 30): a dead host daemon must
hand over to level 2 quickly."""


def _nvpairs(parent: ET.Element, tag: str, owner: str, values: Mapping[str, str]) -> None:
    block = ET.SubElement(parent, tag, {"id": f"{owner}-{tag.split('_')[0]}"})
    for name, value in values.items():
        ET.SubElement(block, "nvpair", {"id": f"{owner}-{name}", "name": name, "value": value})


def _primitive(resources: ET.Element, rid: str, agent: str, params: Mapping[str, str],
               meta: Mapping[str, str] | None = None, monitor: str = "60s") -> None:
    prim = ET.SubElement(resources, "primitive", {"id": rid, "class": "stonith", "type": agent})
    _nvpairs(prim, "instance_attributes", rid, params)
    if meta:
        _nvpairs(prim, "meta_attributes", rid, meta)
    ops = ET.SubElement(prim, "operations")
    ET.SubElement(ops, "op", {"id": f"{rid}-monitor", "name": "monitor", "interval": monitor})


def resources_xml(nodes: Sequence[str], key_file: str, lun_urls: Sequence[str]) -> str:
    """The ``<resources>`` section: both stonith devices and the Dummy resource."""
    resources = ET.Element("resources")
    host_list = " ".join(nodes)
    _primitive(resources, XVM_DEVICE, "fence_xvm", {
        "key_file": key_file, "timeout": str(XVM_TIMEOUT_S), "pcmk_host_list": host_list})
    _primitive(resources, SCSI_DEVICE, "fence_scsi", {
        "devices": ",".join(lun_urls), "key_value": "hash", "pcmk_host_list": host_list},
        meta={"provides": "unfencing"})
    dummy = ET.SubElement(resources, "primitive", {"id": RESOURCE, "class": "ocf",
                                                   "provider": "pacemaker", "type": "Dummy"})
    ops = ET.SubElement(dummy, "operations")
    ET.SubElement(ops, "op", {"id": f"{RESOURCE}-monitor", "name": "monitor",
                              "interval": "10s"})
    return ET.tostring(resources, encoding="unicode")


def topology_xml(nodes: Sequence[str]) -> str:
    """``<fencing-topology>``: fence-xvm first, fence-scsi when it fails, for each node."""
    topo = ET.Element("fencing-topology")
    for node in nodes:
        for index, device in ((1, XVM_DEVICE), (2, SCSI_DEVICE)):
            ET.SubElement(topo, "fencing-level", {"id": f"fl-{node}-{index}", "target": node,
                                                  "index": str(index), "devices": device})
    return ET.tostring(topo, encoding="unicode")
