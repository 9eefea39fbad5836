"""The text files a lab cluster node starts from: corosync.conf and a seeded CIB."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

DEFAULT_CRM_CONFIG = {"dc-deadtime": "2s"}
"""Pre-seeded cluster options; the default dc-deadtime (20 s) dominates start-up."""


def corosync_conf(cluster_name: str, token_ms: int, members: Sequence[tuple[str, int, str]]
                  ) -> str:
    """corosync.conf for ``members`` (name, nodeid, ring0 address): knet, no crypto."""
    lines = [
        "totem {", "    version: 2", f"    cluster_name: {cluster_name}",
        "    transport: knet", "    crypto_cipher: none", "    crypto_hash: none",
        f"    token: {token_ms}", "}",
        "logging {", "    to_stderr: no", "    to_logfile: yes",
        "    logfile: /var/log/cluster/corosync.log", "    to_syslog: no",
        "    timestamp: on", "}",
        "quorum {", "    provider: corosync_votequorum",
    ]
    if len(members) == 2:
        lines.append("    two_node: 1")
    lines += ["}", "nodelist {"]
    for name, nodeid, address in members:
        lines += ["    node {", f"        ring0_addr: {address}", f"        name: {name}",
                  f"        nodeid: {nodeid}", "    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def seed_cib(crm_config: Mapping[str, str]) -> str:
    """An empty CIB carrying ``crm_config`` (no .sig: pacemaker-based signs it itself)."""
    cib = ET.Element("cib", {"crm_feature_set": "3.16.1", "validate-with": "pacemaker-3.9",
                             "epoch": "1", "num_updates": "0", "admin_epoch": "0"})
    conf = ET.SubElement(cib, "configuration")
    props = ET.SubElement(ET.SubElement(conf, "crm_config"), "cluster_property_set",
                          {"id": "cib-bootstrap-options"})
    for name, value in crm_config.items():
        ET.SubElement(props, "nvpair", {"id": f"cib-bootstrap-options-{name}", "name": name,
                                        "value": value})
    for section in ("nodes", "resources", "constraints"):
        ET.SubElement(conf, section)
    ET.SubElement(cib, "status")
    return ET.tostring(cib, encoding="unicode") + "\n"
