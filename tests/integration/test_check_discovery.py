"""Live discovery for `guestfence check`: libvirt's test driver (one node file per host),
the real Pacemaker CIB of tests/data (how it was captured: tests/unit/test_check_cib.py),
and the merge with a small topology file.

Lab: three KVM hosts, a 3-node guest cluster (node1..3 run in VMs vm-node1..3, one per
host, per the CIB's pcmk_host_map) and other guests:

    kvm1  16 CPUs 64 GiB   vm-node1 (2 vCPU, 4 GiB)   build (8 vCPU, 16 GiB)
    kvm2  16 CPUs 64 GiB   vm-node2 (2 vCPU, 4 GiB)   db (4 vCPU, 8 GiB, shut off)
    kvm3   8 CPUs 32 GiB   vm-node3 (2 vCPU, 3 GiB)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from guestfence.check.discover import (
    DiscoveryError,
    discover_libvirt,
    inspect_libvirt,
    merge,
    read_cib,
)
from guestfence.check.loader import parse_topology
from guestfence.check.model import Guest, Host, Origin, Topology, Version
from guestfence.errors import ConfigError
from guestfence.lab import testdriver as td

pytestmark = pytest.mark.integration

CIB = Path(__file__).resolve().parents[1] / "data" / "cib-pacemaker-2.1.xml"
GIB_KIB = 1024 * 1024


def _uuid(host: int, n: int) -> str:
    return f"33333333-0000-0000-{host:04d}-{n:012d}"


LAB = {
    "kvm1": (16, 64, [td.Guest("vm-node1", _uuid(1, 1), 4 * GIB_KIB, 2),
                      td.Guest("build", _uuid(1, 2), 16 * GIB_KIB, 8)]),
    "kvm2": (16, 64, [td.Guest("vm-node2", _uuid(2, 1), 4 * GIB_KIB, 2),
                      td.Guest("db", _uuid(2, 2), 8 * GIB_KIB, 4, running=False)]),
    "kvm3": (8, 32, [td.Guest("vm-node3", _uuid(3, 1), 3 * GIB_KIB, 2)]),
}

# Names the hosts, the cluster and its fence agents; no sizes.
TOPOLOGY = """\
hosts:
  - {name: kvm1, hypervisor: kvm, version: RHEL 6.2, host_cluster: hosts, fence_virtd: true}
  - {name: kvm2, hypervisor: kvm, version: RHEL 6.2, host_cluster: hosts, fence_virtd: true}
  - {name: kvm3, hypervisor: kvm, version: RHEL 6.2, host_cluster: hosts, fence_virtd: true}
clusters:
  - name: labcluster
    os: RHEL 6.2
    fence_agents: [fence_xvm, fence_scsi]
    fence_virtd_mode: host-cluster
    storage:
      - {native: /dev/sdb, persistent_reservations: true}
    members:
      - {name: vm-node1, host: kvm1}
      - {name: vm-node2, host: kvm2}
      - {name: vm-node3, host: kvm3}
"""


@dataclass
class Lab:
    uris: dict[str, str]

    def discover(self) -> list[tuple[Host, list[Guest]]]:
        return [discover_libvirt(u) for u in self.uris.values()]


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    uris = {}
    for name, (cpus, mem_gib, guests) in LAB.items():
        uris[name] = td.write_node_xml(tmp_path / f"{name}.xml", guests, cpus=cpus,
                                       memory_kib=mem_gib * GIB_KIB)
    return Lab(uris)


def _sizes(guests: tuple[Guest, ...] | list[Guest]) -> dict[str, tuple[str | None, int | None,
                                                                         int | None]]:
    return {g.name: (g.host, g.vcpus, g.memory_mib) for g in guests}


# ------------------------------------------------------------------- discovery

def test_discover_each_host(lab: Lab) -> None:
    host, guests = discover_libvirt(lab.uris["kvm1"])
    assert host == Host(name="kvm1", hypervisor="kvm", version=None, cpus=16,
                        memory_mib=65536)
    assert host.origin == Origin(f"libvirt:{lab.uris['kvm1']}")
    assert _sizes(guests) == {"build": ("kvm1", 8, 16384), "vm-node1": ("kvm1", 2, 4096)}
    assert [g.name for g in guests] == ["build", "vm-node1"]  # sorted by name
    assert all(g.origin == host.origin for g in guests)

    # a shut-off domain is discovered too; inspect_libvirt says which run
    seen = inspect_libvirt(lab.uris["kvm2"])
    assert seen.driver == "TEST"
    assert (seen.host.name, seen.host.cpus, seen.host.memory_mib) == ("kvm2", 16, 65536)
    assert _sizes(seen.guests) == {"db": ("kvm2", 4, 8192), "vm-node2": ("kvm2", 2, 4096)}
    assert seen.running == frozenset({"vm-node2"})

    host3, guests3 = discover_libvirt(lab.uris["kvm3"], name="kvm3.example.com",
                                      hypervisor="xen")
    assert (host3.name, host3.hypervisor, host3.cpus, host3.memory_mib) == \
        ("kvm3.example.com", "xen", 8, 32768)
    assert _sizes(guests3) == {"vm-node3": ("kvm3.example.com", 2, 3072)}


@pytest.mark.parametrize("uri", [
    "qemu+unix:///system?socket=/nonexistent/guestfence-test.sock",
    "test:///nonexistent/guestfence/kvm9.xml",
])
def test_unreachable_uri(uri: str, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DiscoveryError) as exc:
        discover_libvirt(uri)
    msg = str(exc.value)
    assert msg.startswith(f"libvirt:{uri}: cannot connect: "), msg
    assert "/nonexistent/" in msg  # libvirt's own reason is kept
    assert isinstance(exc.value, ConfigError)
    # no chained libvirtError to print as a traceback
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # libvirt printed nothing itself


# ---------------------------------------------------------------------- merge

def test_merge_file_discovery_and_cib(lab: Lab) -> None:
    base = parse_topology(TOPOLOGY, "site.yaml")
    topo, notes = merge(base, lab.discover(), read_cib(str(CIB)))
    assert notes == []

    # hosts: the file's declarations, libvirt's capacities
    assert [(h.name, h.hypervisor, h.version, h.cpus, h.memory_mib, h.host_cluster,
             h.fence_virtd) for h in topo.hosts] == [
        ("kvm1", "kvm", Version("RHEL", 6, 2), 16, 65536, "hosts", True),
        ("kvm2", "kvm", Version("RHEL", 6, 2), 16, 65536, "hosts", True),
        ("kvm3", "kvm", Version("RHEL", 6, 2), 8, 32768, "hosts", True),
    ]
    assert [h.origin for h in topo.hosts] == [Origin("site.yaml", i) for i in (2, 3, 4)]

    # the cluster: the file's cluster, members from the CIB mapped to their VMs
    (cluster,) = topo.clusters
    assert cluster.name == "labcluster"
    assert _sizes(cluster.members) == {
        "vm-node1": ("kvm1", 2, 4096),
        "vm-node2": ("kvm2", 2, 4096),
        "vm-node3": ("kvm3", 2, 3072),
    }
    assert cluster.hosts() == ("kvm1", "kvm2", "kvm3")
    assert cluster.fence_agents == ("fence_xvm", "fence_scsi")
    assert cluster.key_file == "/etc/cluster/fence_xvm.key"
    assert cluster.os == Version("RHEL", 6, 2)
    assert cluster.fence_virtd_mode == "host-cluster"
    assert [s.target for s in cluster.storage] == ["/dev/sdb"]
    assert cluster.origin == Origin("site.yaml", 6)
    assert [m.origin.line for m in cluster.members] == [13, 14, 15]  # findings point here

    # every other guest, running or not
    assert _sizes(topo.other_guests) == {"build": ("kvm1", 8, 16384), "db": ("kvm2", 4, 8192)}
    assert [g.name for g in topo.guests_on("kvm1")] == ["vm-node1", "build"]
    assert topo.sources == ("site.yaml", *(f"libvirt:{u}" for u in lab.uris.values()),
                            str(CIB))


def test_discovery_and_cib_without_file(lab: Lab) -> None:
    topo, notes = merge(None, lab.discover(), read_cib(str(CIB)))
    assert notes == []
    assert [(h.name, h.hypervisor, h.version, h.cpus, h.memory_mib) for h in topo.hosts] == [
        ("kvm1", "kvm", None, 16, 65536),
        ("kvm2", "kvm", None, 16, 65536),
        ("kvm3", "kvm", None, 8, 32768),
    ]
    (cluster,) = topo.clusters
    assert cluster.name == "labcluster"  # the CIB's cluster-name
    assert _sizes(cluster.members) == {
        "vm-node1": ("kvm1", 2, 4096),
        "vm-node2": ("kvm2", 2, 4096),
        "vm-node3": ("kvm3", 2, 3072),
    }
    assert cluster.fence_agents == ("fence_xvm", "fence_scsi")
    assert cluster.key_file == "/etc/cluster/fence_xvm.key"
    assert (cluster.os, cluster.storage, cluster.fence_virtd_mode) == (None, (), None)
    assert cluster.origin == Origin(str(CIB))
    assert _sizes(topo.other_guests) == {"build": ("kvm1", 8, 16384), "db": ("kvm2", 4, 8192)}
    assert topo.sources == (*(f"libvirt:{u}" for u in lab.uris.values()), str(CIB))

    # and with another name for the cluster
    topo2, _ = merge(None, lab.discover(), read_cib(str(CIB)), cluster_name="web")
    assert [c.name for c in topo2.clusters] == ["web"]


def test_discovery_only_every_guest_is_another_guest(lab: Lab) -> None:
    topo, notes = merge(None, lab.discover(), None)
    assert notes == []
    assert topo.clusters == ()
    assert [g.name for g in topo.other_guests] == ["build", "vm-node1", "db", "vm-node2",
                                                  "vm-node3"]


def test_conflicts_live_wins_with_a_note(lab: Lab) -> None:
    base = parse_topology("""\
hosts:
  - {name: kvm1, cpus: 32, memory: 64GiB}
  - {name: kvm2, hypervisor: xen}
  - {name: kvm3}
  - {name: kvm9, hypervisor: kvm, cpus: 4, memory: 8GiB}
clusters:
  - name: labcluster
    fence_agents: [fence_xvm]
    key_file: /etc/cluster/other.key
    members:
      - {name: node1, host: kvm1}
      - {name: vm-node2, host: kvm1, vcpus: 2, memory: 2GiB}
      - {name: vm-node3, host: kvm2}
      - {name: vm-node4, host: kvm9}
guests:
  - {name: build, host: kvm1, vcpus: 8, memory: 16GiB}
  - {name: gone, host: kvm3}
  - {name: elsewhere, host: kvm9, vcpus: 1}
""", "site.yaml")
    topo, notes = merge(base, lab.discover(), read_cib(str(CIB)))
    src = {name: f"libvirt:{uri}" for name, uri in lab.uris.items()}
    # the test driver stands in for kvm: the file's "xen" for kvm2 is no conflict
    assert notes == [
        f"host kvm1: cpus: the file says 32, {src['kvm1']} reports 16; using 16",
        f"guest vm-node2: host: the file says on kvm1, {src['kvm2']} finds it on kvm2; "
        "using kvm2",
        f"guest vm-node2: memory: the file says 2048 MiB, {src['kvm2']} reports 4096 MiB; "
        "using 4096 MiB",
        f"guest vm-node3: host: the file says on kvm2, {src['kvm3']} finds it on kvm3; "
        "using kvm3",
        f"cluster labcluster: the file lists member vm-node4, the CIB ({CIB}) has no such "
        "node; counting it as another guest",
        f"cluster labcluster: fence_agents: the file says fence_xvm, the CIB ({CIB}) "
        "configures fence_xvm, fence_scsi; using the CIB's",
        f"cluster labcluster: key_file: the file says /etc/cluster/other.key, the CIB "
        f"({CIB}) uses /etc/cluster/fence_xvm.key; using the CIB's",
        f"guest gone: the file places it on kvm3, but {src['kvm3']} has no such domain; "
        "keeping the file's entry",
    ]

    kvm1, kvm2, kvm3, kvm9 = topo.hosts
    assert (kvm1.name, kvm1.cpus, kvm1.memory_mib) == ("kvm1", 16, 65536)
    assert (kvm2.name, kvm2.hypervisor, kvm2.cpus) == ("kvm2", "xen", 16)
    assert (kvm3.name, kvm3.hypervisor, kvm3.cpus, kvm3.origin) == \
        ("kvm3", "kvm", 8, Origin("site.yaml", 4))
    assert (kvm9.name, kvm9.cpus, kvm9.memory_mib) == ("kvm9", 4, 8192)  # not discovered

    (cluster,) = topo.clusters
    # node1, named by its node name in the file, becomes its VM
    assert _sizes(cluster.members) == {
        "vm-node1": ("kvm1", 2, 4096),
        "vm-node2": ("kvm2", 2, 4096),
        "vm-node3": ("kvm3", 2, 3072),
    }
    assert cluster.origin == Origin("site.yaml", 7)
    assert _sizes(topo.other_guests) == {
        "build": ("kvm1", 8, 16384),
        "gone": ("kvm3", None, None),
        "elsewhere": ("kvm9", 1, None),
        "vm-node4": ("kvm9", None, None),
        "db": ("kvm2", 4, 8192),
    }


def test_domain_defined_on_two_hosts_counts_once(tmp_path: Path) -> None:
    a = td.write_node_xml(tmp_path / "a.xml", [td.Guest("web1", _uuid(9, 1))])
    b = td.write_node_xml(tmp_path / "b.xml", [td.Guest("web1", _uuid(9, 1), running=False)])
    base = Topology(hosts=(Host("a"), Host("b")), other_guests=(Guest("web1", "b"),))
    topo, notes = merge(base, [discover_libvirt(a), discover_libvirt(b)], None)
    assert [(g.name, g.host) for g in topo.other_guests] == [("web1", "b")]  # the file's
    assert notes == ["guest web1: defined on several hosts (a, b); counting it once, on b"]


def test_same_host_name_twice_is_an_error(lab: Lab) -> None:
    found = discover_libvirt(lab.uris["kvm1"])
    with pytest.raises(DiscoveryError, match="report the same host name 'kvm1'"):
        merge(None, [found, found], None)
