"""Topology files: the example loads; every kind of bad input is a clear, located error."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfence.check.loader import TopologyError, load_topology, parse_memory_mib, parse_topology
from guestfence.check.model import Version, parse_version

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "topology.yaml"

MINIMAL = """\
hosts:
  - name: kvm1
    hypervisor: kvm
clusters:
  - name: c1
    members:
      - name: g1
        host: kvm1
"""


def test_example_loads() -> None:
    topo = load_topology(str(EXAMPLE))
    assert [h.name for h in topo.hosts] == ["kvm1", "kvm2", "kvm3"]
    web = topo.clusters[0]
    assert web.fence_agents == ("fence_xvm",)
    assert web.fence_virtd_mode == "host-cluster"
    assert [(m.name, m.host, m.vcpus, m.memory_mib) for m in web.members] == [
        ("web1", "kvm1", 2, 4096), ("web2", "kvm2", 2, 4096), ("web3", "kvm3", 2, 4096)]
    assert web.storage[0].preempt_and_abort is True
    assert topo.other_guests[0].name == "build"
    assert str(topo.hosts[0].origin) == f"{EXAMPLE}:3"


def test_bare_metal_member() -> None:
    topo = parse_topology(MINIMAL + "      - name: metal1\n        bare_metal: true\n")
    assert topo.clusters[0].members[1].bare_metal


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "<topology>: the file is empty"),
        ("- a\n- b\n", "<topology>:1: topology: found a list; expected a mapping"),
        ("hostz: []\n", "<topology>:1: topology.hostz: found an unknown key; expected one of"),
        ("hosts:\n  - hypervisor: kvm\n", "<topology>:2: hosts[0].name: found none"),
        ("hosts:\n  - name: h\n    hypervisor: vbox\n",
         "<topology>:3: hosts[0].hypervisor: found 'vbox'; expected one of: kvm, xen"),
        ("hosts:\n  - name: h\n    cpus: -2\n", "<topology>:3: hosts[0].cpus"),
        ("hosts:\n  - name: h\n    cpus: many\n", "hosts[0].cpus: found 'many'"),
        ("hosts:\n  - name: h\n    memory: lots\n", "hosts[0].memory: found 'lots'; expected e.g."),
        ("hosts:\n  - name: h\n    version: six\n", "hosts[0].version: found 'six'"),
        ("hosts:\n  - name: h\n    fence_virtd: maybe\n", "expected true or false"),
        ("hosts:\n  - name: h\n  - name: h\n", "<topology>:3: host name 'h': found a second"),
        (MINIMAL.replace("host: kvm1", "host: kvm9"),
         "<topology>:7: host of guest 'g1': found 'kvm9'; expected one of the hosts"),
        (MINIMAL.replace("        host: kvm1\n", ""), "clusters[0].members[0].host: found none"),
        (MINIMAL + "    fence_agents: [fence_ipmilan]\n",
         "clusters[0].fence_agents[0]: found 'fence_ipmilan'"),
        (MINIMAL + "    fence_virtd_mode: qmf\n", "clusters[0].fence_virtd_mode: found 'qmf'"),
        (MINIMAL + "    storage:\n      - iscsi: 10.0.0.1\n",
         "clusters[0].storage[0].iscsi: found '10.0.0.1'; expected an iscsi://"),
        (MINIMAL + "    storage:\n      - {iscsi: 'iscsi://a/b/0', native: /dev/sdb}\n",
         "exactly one of 'iscsi: URL' or 'native: DEVICE'"),
        ("clusters:\n  - name: c\n    members: []\n", "clusters[0].members: found none"),
        ("clusters:\n  - name: c\n    members:\n      - {name: a, bare_metal: true, host: h}\n",
         "no host for a bare_metal member"),
    ],
)
def test_bad_input_is_a_located_error(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(text)
    assert message in str(info.value)


def test_yaml_syntax_error_has_a_line() -> None:
    # libyaml reports where the input ended (line 2), the pure parser line 1: both located
    with pytest.raises(TopologyError, match=r"^<topology>:\d+: not valid YAML"):
        parse_topology("hosts: [")


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(str(tmp_path / "missing.yaml"))
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TopologyError, match="not UTF-8"):
        load_topology(str(binary))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_topology_or_a_topology_error(text: str) -> None:
    with contextlib.suppress(TopologyError):  # anything else fails the test
        parse_topology(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(MINIMAL) - 1), st.sampled_from(["", ":", "-", "\n", " ", "[", "{", "'"]))
def test_damaged_minimal_topology(at: int, insert: str) -> None:
    text = MINIMAL[:at] + insert + MINIMAL[at + 1:]
    try:
        parse_topology(text)
    except TopologyError as e:
        assert str(e).startswith("<topology>")


@pytest.mark.parametrize(("text", "mib"), [("4096", 4096), ("4GiB", 4096), ("512 MiB", 512),
                                          ("1.5g", 1536), ("1TiB", 1048576)])
def test_memory_sizes(text: str, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize(("text", "version"), [
    ("RHEL 6.2", Version("RHEL", 6, 2)), ("rhel6", Version("RHEL", 6, 0)),
    ("ESXi 5.0", Version("ESXi", 5, 0)), ("RHEV-M 3.0", Version("RHEV-M", 3, 0)),
    ("vSphere 4.1", Version("vSphere", 4, 1)), ("Red Hat Enterprise Linux 5.6",
                                                 Version("RHEL", 5, 6))])
def test_versions(text: str, version: Version) -> None:
    assert parse_version(text) == version
