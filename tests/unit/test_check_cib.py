"""read_cib: a real Pacemaker 2.1 CIB, malformed XML, a CIB without stonith.

The fixture tests/data/cib-pacemaker-2.1.xml is the unedited output of
``cibadmin --query`` on a real 3-node cluster: Debian 12, corosync
3.1.7-1+deb12u2, pacemaker 2.1.5-1+deb12u1 (crm_feature_set 3.16.1), fence-agents
4.12.1-1, captured on 2026-11-26. Each node ran corosync + pacemakerd in its own
network and mount namespace (../shared/lab/pacemaker-ns-cluster.sh, no systemd;
corosync.conf written by that script: cluster_name labcluster, knet, nodes
node1..node3 at 10.231.0.1-3). Commands, as root:

    apt-get install -y pacemaker pacemaker-cli-utils corosync
    export LAB=/tmp/gf-cib/lab PFX=gfcib DC_DEADTIME=2s
    L=../shared/lab/pacemaker-ns-cluster.sh
    $L start 3
    $L wait-online 3 90                 # "online after 5s"
    $L exec 1 cibadmin --create -o resources -X '<primitive id="fence-xvm"
        class="stonith" type="fence_xvm">
      <instance_attributes id="fence-xvm-instance_attributes">
        <nvpair id="fence-xvm-instance_attributes-pcmk_host_map" name="pcmk_host_map"
                value="node1:vm-node1;node2:vm-node2;node3:vm-node3"/>
        <nvpair id="fence-xvm-instance_attributes-key_file" name="key_file"
                value="/etc/cluster/fence_xvm.key"/>
        <nvpair id="fence-xvm-instance_attributes-multicast_address"
                name="multicast_address" value="225.0.0.12"/>
      </instance_attributes>
      <operations>
        <op id="fence-xvm-monitor-interval-60s" name="monitor" interval="60s"/>
      </operations></primitive>'
    $L exec 1 cibadmin --create -o resources -X '<primitive id="fence-scsi"
        class="stonith" type="fence_scsi">
      <instance_attributes id="fence-scsi-instance_attributes">
        <nvpair id="fence-scsi-instance_attributes-devices" name="devices" value="/dev/sdb"/>
      </instance_attributes>
      <meta_attributes id="fence-scsi-meta_attributes">
        <nvpair id="fence-scsi-meta_attributes-provides" name="provides" value="unfencing"/>
      </meta_attributes>
      <operations>
        <op id="fence-scsi-monitor-interval-60s" name="monitor" interval="60s"/>
      </operations></primitive>'
    sleep 20; $L exec 1 crm_mon -1      # 3 nodes online; unfencing fails (no /dev/sdb)
    $L exec 1 cibadmin --query > tests/data/cib-pacemaker-2.1.xml
    $L stop                             # corosync, pacemakerd, children, namespaces
    rm -rf /tmp/gf-cib/lab

Nothing was written to /etc/corosync or /var/lib/pacemaker of the machine (the
script bind-mounts per-node directories over them inside each node's mount
namespace). Pacemaker filled in dc-version, cluster-infrastructure and
cluster-name (from corosync's totem.cluster_name) and the <nodes> and <status>
sections itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guestfence.check.discover import (
    CibCluster,
    DiscoveryError,
    StonithDevice,
    parse_cib,
    parse_host_list,
    parse_host_map,
    read_cib,
)
from guestfence.errors import ConfigError

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "cib-pacemaker-2.1.xml"


@pytest.fixture(scope="module")
def real() -> CibCluster:
    return read_cib(str(FIXTURE))


def test_real_cib_cluster_and_nodes(real: CibCluster) -> None:
    assert real.name == "labcluster"
    assert real.nodes == ("node1", "node2", "node3")
    assert real.stonith_enabled is None  # not set: Pacemaker's default (true)
    assert real.source == str(FIXTURE)


def test_real_cib_stonith_devices(real: CibCluster) -> None:
    assert [(d.id, d.agent) for d in real.stonith] == [
        ("fence-xvm", "fence_xvm"),
        ("fence-scsi", "fence_scsi"),
    ]
    assert real.fence_agents == ("fence_xvm", "fence_scsi")
    xvm, scsi = real.stonith
    assert xvm.params["pcmk_host_map"] == "node1:vm-node1;node2:vm-node2;node3:vm-node3"
    assert xvm.params["key_file"] == "/etc/cluster/fence_xvm.key"
    assert xvm.params["multicast_address"] == "225.0.0.12"
    assert dict(xvm.host_map) == {"node1": "vm-node1", "node2": "vm-node2",
                                  "node3": "vm-node3"}
    assert xvm.hosts == ("node1", "node2", "node3")
    assert xvm.enabled
    # fence_scsi: its targets are not in the CIB (the fencer asks the agent)
    assert dict(scsi.params) == {"devices": "/dev/sdb"}
    assert scsi.hosts is None
    assert dict(scsi.host_map) == {}
    assert real.key_file == "/etc/cluster/fence_xvm.key"


def test_real_cib_node_to_vm(real: CibCluster) -> None:
    assert [real.vm_name(n) for n in real.nodes] == ["vm-node1", "vm-node2", "vm-node3"]
    assert real.stonith[0].plug_for("NODE2") == "vm-node2"  # the fencer ignores case
    assert real.stonith[1].plug_for("node2") is None
    assert real.vm_name("ghost") == "ghost"


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "cib.xml"
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    i = next(i for i, line in enumerate(lines) if 'uname="node3"/>' in line)
    lines[i] = lines[i].replace("/>", ">")  # <node ... uname="node3"> left open
    bad.write_text("\n".join(lines), encoding="utf-8")
    closing = lines.index("    </nodes>") + 1  # the line where expat notices
    with pytest.raises(DiscoveryError) as exc:
        read_cib(str(bad))
    msg = str(exc.value)
    assert closing == 16
    assert msg.startswith(f"{bad}:{closing}: not valid XML (mismatched tag)"), msg
    assert "cibadmin --query" in msg
    assert isinstance(exc.value, ConfigError)


def test_not_a_cib(tmp_path: Path) -> None:
    other = tmp_path / "domain.xml"
    other.write_text("<domain type='kvm'><name>vm1</name></domain>\n", encoding="utf-8")
    with pytest.raises(DiscoveryError, match=r"domain\.xml: not a Pacemaker CIB: the root "
                                             r"element is <domain>, expected <cib>"):
        read_cib(str(other))
    with pytest.raises(DiscoveryError, match="has no <configuration>"):
        parse_cib("<cib><status/></cib>", "x.xml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match=r"missing\.xml: cannot read: No such file"):
        read_cib(str(tmp_path / "missing.xml"))


def test_cib_without_stonith(tmp_path: Path) -> None:
    text = FIXTURE.read_text(encoding="utf-8")
    start, end = text.index("<resources>"), text.index("</resources>") + len("</resources>")
    path = tmp_path / "no-stonith.xml"
    path.write_text(text[:start] + "<resources/>" + text[end:], encoding="utf-8")
    cib = read_cib(str(path))
    assert cib.nodes == ("node1", "node2", "node3")
    assert cib.stonith == ()
    assert cib.fence_agents == ()
    assert cib.key_file is None
    assert cib.vm_name("node1") == "node1"


def test_minimal_cib_properties_groups_and_remote_nodes() -> None:
    cib = parse_cib("""<cib><configuration>
      <crm_config><cluster_property_set id="o">
        <nvpair id="o1" name="stonith-enabled" value="false"/>
      </cluster_property_set></crm_config>
      <nodes>
        <node id="1" uname="a"/><node id="2" uname="b" type="member"/>
        <node id="r" uname="remote1" type="remote"/>
      </nodes>
      <resources>
        <primitive id="ip" class="ocf" provider="heartbeat" type="IPaddr2"/>
        <group id="g"><primitive id="f1" class="stonith" type="fence_xvm">
          <instance_attributes id="f1-ia">
            <nvpair id="f1-p" name="port" value="guest-a"/>
            <nvpair id="f1-l" name="pcmk_host_list" value="a"/>
          </instance_attributes>
          <meta_attributes id="f1-m"><nvpair id="f1-t" name="target-role" value="Stopped"/>
          </meta_attributes></primitive></group>
      </resources></configuration></cib>""", "mini.xml")
    assert cib.name is None
    assert cib.stonith_enabled is False
    assert cib.nodes == ("a", "b")
    (dev,) = cib.stonith
    assert dev == StonithDevice(id="f1", agent="fence_xvm",
                                params={"port": "guest-a", "pcmk_host_list": "a"},
                                hosts=("a",), enabled=False)
    assert dev.plug_for("a") == "guest-a"
    assert dev.plug_for("b") is None
    assert cib.vm_name("a") == "guest-a"
    assert cib.fence_agents == ()  # the only device is disabled


@pytest.mark.parametrize(("text", "expected"), [
    ("node1:vm-node1;node2:vm-node2;node3:vm-node3",
     {"node1": "vm-node1", "node2": "vm-node2", "node3": "vm-node3"}),
    ("node1=1 node2:2,3\tnode3:4;", {"node1": "1", "node2": "2,3", "node3": "4"}),
    ("  ;bad; :x; y: ;ok:vm  ", {"ok": "vm"}),
    ("", {}),
])
def test_parse_host_map(text: str, expected: dict[str, str]) -> None:
    assert parse_host_map(text) == expected


def test_parse_host_list() -> None:
    assert parse_host_list(" node1 node2,node3;node4\n") == ("node1", "node2", "node3", "node4")
    assert parse_host_list("") == ()
