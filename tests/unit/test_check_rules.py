"""`guestfence check` rules: for each rule a layout that breaks it and one that does not."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from guestfence.check import rules as rules_module
from guestfence.check.engine import run_checks
from guestfence.check.loader import load_topology, parse_topology
from guestfence.check.model import Finding, Topology
from guestfence.check.rules import RULES, RULES_BY_ID
from guestfence.check.rules_common import layout, names

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "topology.yaml"

# ------------------------------------------------------------------ layouts
# A clean baseline: three RHEL 6.2 KVM hosts in one host cluster running
# fence_virtd, and a three-member RHEL 6.2 cluster, one member per host,
# fenced with fence_xvm in host-cluster mode. Helpers override single fields;
# an override of None removes the field.

PR_STORAGE: dict[str, Any] = {"iscsi": "iscsi://192.0.2.10:3260/iqn.2026-11.org.example:t/0",
              "persistent_reservations": True, "preempt_and_abort": True,
              "software": "guestfence"}


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def host(name: str, **kw: Any) -> dict[str, Any]:
    return _drop_none({"name": name, "hypervisor": "kvm", "version": "RHEL 6.2", "cpus": 16,
                       "memory": "64GiB", "host_cluster": "hc", "fence_virtd": True, **kw})


def member(name: str, on: str | None, **kw: Any) -> dict[str, Any]:
    where = {"host": on} if on is not None else {"bare_metal": True}
    return _drop_none({"name": name, **where, "vcpus": 2, "memory": "4GiB", **kw})


def cluster(name: str, members: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return _drop_none({"name": name, "os": "RHEL 6.2", "fence_agents": ["fence_xvm"],
                       "fence_virtd_mode": "host-cluster", "members": members, **kw})


def hosts3(**kw: Any) -> list[dict[str, Any]]:
    return [host(f"kvm{i}", **kw) for i in (1, 2, 3)]


def spread(prefix: str = "web", placement: tuple[str, ...] = ("kvm1", "kvm2", "kvm3"),
           **kw: Any) -> list[dict[str, Any]]:
    return [member(f"{prefix}{i}", on, **kw) for i, on in enumerate(placement, 1)]


def topo(hosts: list[dict[str, Any]] | None = None,
         clusters: list[dict[str, Any]] | None = None,
         guests: list[dict[str, Any]] | None = None) -> Topology:
    doc: dict[str, Any] = {"hosts": hosts if hosts is not None else hosts3(),
                           "clusters": clusters if clusters is not None
                           else [cluster("web", spread())]}
    if guests:
        doc["guests"] = guests
    return parse_topology(yaml.safe_dump(doc, sort_keys=False))


def web(hosts: list[dict[str, Any]] | None = None, members: list[dict[str, Any]] | None = None,
        **kw: Any) -> Topology:
    """The baseline with cluster "web" changed by ``kw``."""
    return topo(hosts, [cluster("web", members if members is not None else spread(), **kw)])


def found(t: Topology, rule: str) -> list[Finding]:
    return [f for f in run_checks(t).findings if f.rule == rule]


def one(t: Topology, rule: str, severity: str | None = None) -> Finding:
    """The single finding of ``rule``, with the rule's severity unless told otherwise."""
    fs = found(t, rule)
    assert len(fs) == 1, fs
    assert fs[0].severity == (severity or RULES_BY_ID[rule].severity)
    return fs[0]


def per_host(t: Topology, rule: str) -> list[Finding]:
    """The findings of a per-host rule, one for each host, with the rule's severity."""
    fs = found(t, rule)
    assert [f.severity for f in fs] == [RULES_BY_ID[rule].severity] * len(fs) and fs
    assert [f.hosts for f in fs] == [(h.name,) for h in t.hosts][: len(fs)]
    return fs


def none_of(t: Topology, rule: str) -> None:
    assert found(t, rule) == []


SCSI: dict[str, Any] = {"fence_agents": ["fence_scsi"], "storage": [PR_STORAGE]}

# ------------------------------------------------------------------ registry and engine


def test_registry_is_well_formed() -> None:
    assert len(RULES) == len({r.id for r in RULES})
    for r in RULES:
        assert re.fullmatch(r"[A-Z0-9]+(-[A-Z0-9]+)*", r.id), r.id
        assert r.severity in ("error", "warning", "info")
        assert len(r.seed) > 40 and r.check.__doc__, r.id


def test_registry_comments_give_the_right_severity() -> None:
    source = Path(rules_module.__file__).read_text(encoding="utf-8")
    entries = re.findall(r"^    \w+\.(\w+),\s+# (error|warning|info):", source, re.M)
    assert len(entries) == len(RULES)
    for (name, severity), rule in zip(entries, RULES, strict=True):
        assert (name, severity) == (rule.id.replace("-", "_"), rule.severity)


def test_baseline_is_clean() -> None:
    assert run_checks(topo()).findings == ()


def test_example_has_no_error() -> None:
    report = run_checks(load_topology(str(EXAMPLE)))
    assert report.errors == 0, [f for f in report.findings if f.severity == "error"]
    assert [f.rule for f in report.findings] == ["NONCLUSTERED-GUESTS-FENCED"]
    assert report.findings[0].origin is not None
    assert report.findings[0].origin.line == 41  # the `build` guest


def test_findings_sorted_by_cluster_then_severity_then_rule() -> None:
    t = topo(hosts3(version="RHEL 6.0"), [
        cluster("a", spread("a"), fence_agents=[]),
        cluster("b", spread("b", ("kvm1", "kvm1", "kvm1")), os="RHEL 4.9",
                fence_virtd_mode="static")])
    fs = run_checks(t).findings
    order = {"a": 0, "b": 1, None: 2}
    rank = {"error": 0, "warning": 1, "info": 2}
    keys = [(order[f.cluster], rank[f.severity], f.rule) for f in fs]
    assert keys == sorted(keys)
    assert {f.cluster for f in fs} == {"a", "b", None}


def test_layout_index_follows_the_topology() -> None:
    a, b = topo(), web(os="RHEL 6.4")
    assert layout(a) is layout(a)
    assert layout(b).topology is b and layout(a).topology is a


def test_names_cuts_long_lists() -> None:
    assert names(["a", "b", "c"]) == "a, b and c"
    assert names(["a", "b"], last="or") == "a or b"
    assert names([f"g{i}" for i in range(12)], 3) == "g0, g1, g2 and 9 more"


def test_bare_metal_members_and_unknowns_do_not_crash() -> None:
    t = topo([{"name": "h1"}, {"name": "h2", "hypervisor": "vmware"}],
             [{"name": "c", "members": [{"name": "m1", "bare_metal": True},
                                        {"name": "m2", "host": "h1"},
                                        {"name": "m3", "host": "h2"}],
               "fence_agents": ["fence_scsi"],
               "storage": [{"iscsi": "iscsi://x/iqn/0"}]},
              {"name": "metal", "members": [{"name": "b1", "bare_metal": True},
                                            {"name": "b2", "bare_metal": True}],
               "fence_agents": ["fence_scsi"], "storage": [PR_STORAGE]}],
             [{"name": "o1", "host": "h1"}])
    report = run_checks(t)
    assert {f.rule for f in report.findings} >= {"HYPERVISOR-MIXED", "VMWARE-VERSION",
                                                 "SCSI-PR-UNKNOWN", "VMWARE-GUEST-VERSION"}
    assert not found(t, "SINGLE-HOST")


# ------------------------------------------------------------------ platforms and versions


def test_hyperv() -> None:
    f = per_host(topo(hosts3(hypervisor="hyperv", version="Windows Server 2012")),
                 "HYPERV-UNSUPPORTED")[0]
    assert "kvm1" in f.found and "Hyper-V" in f.found
    none_of(topo(), "HYPERV-UNSUPPORTED")


def test_hypervisor_mixed() -> None:
    hosts = [*hosts3()[:2], host("xen3", hypervisor="xen", version="RHEL 5.8")]
    f = one(web(hosts, spread(placement=("kvm1", "kvm2", "xen3"))), "HYPERVISOR-MIXED")
    assert "KVM (kvm1 and kvm2)" in f.found and "Xen (xen3)" in f.found
    assert f.cluster == "web"
    none_of(topo(), "HYPERVISOR-MIXED")


def test_hypervisor_unknown_is_one_info_per_host() -> None:
    fs = found(topo([*hosts3()[:2], host("kvm3", hypervisor=None)]), "HYPERVISOR-MIXED")
    assert [(f.severity, f.hosts) for f in fs] == [("info", ("kvm3",))]
    assert "could not check" in fs[0].found and "`hypervisor: kvm`" in fs[0].fix


def _xen(version: str | None = "RHEL 5.8", **kw: Any) -> list[dict[str, Any]]:
    return hosts3(hypervisor="xen", version=version, **kw)


def test_xen_host_version() -> None:
    f = per_host(web(_xen("RHEL 5.2"), os="RHEL 5.3"), "XEN-HOST-VERSION")[0]
    assert "kvm1 runs RHEL 5.2 (members of cluster web)" in f.found
    none_of(web(_xen("RHEL 5.3"), os="RHEL 5.3"), "XEN-HOST-VERSION")
    fs = found(web(_xen(None), os="RHEL 5.3"), "XEN-HOST-VERSION")
    assert [f.severity for f in fs] == ["info"] * 3 and "`version: RHEL 5.3`" in fs[0].fix


def test_kvm_rhel5_host() -> None:
    t = web(hosts3(version="RHEL 5.5"), os="RHEL 5.6")
    assert "kvm1 runs RHEL 5.5 with KVM" in found(t, "KVM-RHEL5-HOST")[0].found
    assert len(found(t, "KVM-RHEL5-HOST")) == 3
    none_of(t, "KVM-HOST-VERSION")  # said once, by KVM-RHEL5-HOST
    none_of(topo(), "KVM-RHEL5-HOST")


@pytest.mark.parametrize("version", ["RHEL 6.0", "Ubuntu 22.04"])
def test_kvm_host_version_breaks(version: str) -> None:
    fs = found(topo(hosts3(version=version)), "KVM-HOST-VERSION")
    assert [f.severity for f in fs] == ["error"] * 3
    assert f"host kvm2 runs {version.replace('22.04', '22.4')} with KVM" in fs[1].found


@pytest.mark.parametrize("version", ["RHEL 6.1", "RHEL 7.9", "RHEL 9.4"])
def test_kvm_host_version_passes(version: str) -> None:
    none_of(topo(hosts3(version=version)), "KVM-HOST-VERSION")


def test_kvm_host_version_unknown() -> None:
    f = one(topo([*hosts3()[:2], host("kvm3", version=None)]), "KVM-HOST-VERSION", "info")
    assert "kvm3" in f.found and f.fix == "add `version: RHEL 6.2` to host kvm3"


def _rhev(version: str | None = "RHEV-M 3.0") -> list[dict[str, Any]]:
    return hosts3(hypervisor="rhev", version=version, host_cluster=None, fence_virtd=None)


def test_rhev_version() -> None:
    f = per_host(web(_rhev("RHEV-M 2.1"), **SCSI), "RHEV-VERSION")[0]
    assert "kvm1 is managed by RHEV-M 2.1" in f.found
    none_of(web(_rhev("RHEV-M 2.2"), **SCSI), "RHEV-VERSION")
    none_of(web(_rhev("RHV 4.4"), **SCSI), "RHEV-VERSION")
    fs = found(web(_rhev("RHEL 6.2"), **SCSI), "RHEV-VERSION")
    assert [f.severity for f in fs] == ["info"] * 3 and "RHEL 6.2" in fs[0].found


def _vmware(version: str | None = "ESXi 5.0") -> list[dict[str, Any]]:
    return hosts3(hypervisor="vmware", version=version, host_cluster=None, fence_virtd=None)


SOAP: dict[str, Any] = {"fence_agents": ["fence_vmware_soap"], "fence_virtd_mode": None}


def test_vmware_version() -> None:
    fs = found(web(_vmware("ESXi 4.0"), **SOAP), "VMWARE-VERSION")
    assert len(fs) == 3 and fs[0].severity == "error" and "kvm1 runs ESXi 4.0" in fs[0].found
    none_of(web(_vmware("vSphere 4.1"), **SOAP), "VMWARE-VERSION")
    fs = found(web(_vmware(None), **SOAP), "VMWARE-VERSION")
    assert [f.severity for f in fs] == ["info"] * 3


def test_vmware_version_newer() -> None:
    fs = found(web(_vmware("ESXi 7.0"), **SOAP), "VMWARE-VERSION-NEWER")
    assert len(fs) == 3 and fs[0].severity == "warning" and "ESXi 7.0" in fs[0].found
    none_of(web(_vmware("ESXi 7.0"), **SOAP), "VMWARE-VERSION")
    none_of(web(_vmware("ESXi 5.0"), **SOAP), "VMWARE-VERSION-NEWER")


def test_rhel4_guest() -> None:
    t = web(members=[*spread()[:2], member("web3", "kvm3", os="RHEL 4.9")])
    f = one(t, "RHEL4-GUEST")
    assert "web3 (RHEL 4.9 on kvm3)" in f.found and f.guests == ("web3",)
    assert f.origin is not None and f.origin == t.clusters[0].members[2].origin
    none_of(t, "KVM-GUEST-VERSION")  # said once
    none_of(topo(), "RHEL4-GUEST")


def test_xen_guest_version() -> None:
    f = one(web(_xen(), os="RHEL 5.2"), "XEN-GUEST-VERSION")
    assert "web1 (RHEL 5.2 on kvm1)" in f.found and f.origin == web(_xen()).clusters[0].origin
    none_of(web(_xen(), os="RHEL 5.3"), "XEN-GUEST-VERSION")


@pytest.mark.parametrize("os", ["RHEL 5.5", "RHEL 6.0", "CentOS 7.9"])
def test_kvm_guest_version_breaks(os: str) -> None:
    f = one(web(os=os), "KVM-GUEST-VERSION")
    assert f"web2 ({os} on kvm2)" in f.found and f.guests == ("web1", "web2", "web3")


@pytest.mark.parametrize("os", ["RHEL 5.6", "RHEL 6.1", "RHEL 8.4"])
def test_kvm_guest_version_passes(os: str) -> None:
    none_of(web(os=os), "KVM-GUEST-VERSION")


def test_guest_os_unknown_is_one_info_per_cluster() -> None:
    f = one(web(os=None), "KVM-GUEST-VERSION", "info")
    assert "web1, web2 and web3" in f.found and "cluster web" in f.fix


def test_rhev_guest_version() -> None:
    f = one(web(_rhev(), os="RHEL 6.0", **SCSI), "RHEV-GUEST-VERSION")
    assert "web1 (RHEL 6.0 on kvm1)" in f.found
    none_of(web(_rhev(), os="RHEL 6.1", **SCSI), "RHEV-GUEST-VERSION")


def test_vmware_guest_version() -> None:
    f = one(web(_vmware("ESXi 4.1"), os="RHEL 6.1", **SOAP), "VMWARE-GUEST-VERSION")
    assert "RHEL 5.7+ or 6.2+" in f.found and "web3 (RHEL 6.1 on kvm3)" in f.found
    for os in ("RHEL 6.2", "RHEL 5.7"):
        none_of(web(_vmware("ESXi 4.1"), os=os, **SOAP), "VMWARE-GUEST-VERSION")


def test_homogeneous_guests_on_vmware() -> None:
    members = [*spread()[:2], member("web3", "kvm3", os="RHEL 5.7")]
    f = one(web(_vmware("ESXi 4.1"), members, **SOAP), "HOMOGENEOUS-GUESTS")
    assert "RHEL 5 (web3)" in f.found and "RHEL 6 (web1 and web2)" in f.found
    none_of(web(_vmware("ESXi 4.1"), members, **SOAP), "HOMOGENEOUS-GUESTS-ADVISED")
    none_of(web(_vmware("ESXi 4.1"), **SOAP), "HOMOGENEOUS-GUESTS")


def test_homogeneous_guests_advised_elsewhere() -> None:
    members = [*spread()[:2], member("web3", "kvm3", os="RHEL 5.8")]
    f = one(web(members=members), "HOMOGENEOUS-GUESTS-ADVISED")
    assert "RHEL 5 (web3)" in f.found
    none_of(web(members=members), "HOMOGENEOUS-GUESTS")
    none_of(topo(), "HOMOGENEOUS-GUESTS-ADVISED")


def test_upgrade_packages_once() -> None:
    t = web([host("kvm1", version="RHEL 6.4"), *hosts3()[1:]],
            [member("web1", "kvm1", os="RHEL 6.1"), *spread()[1:]])
    f = one(t, "UPGRADE-PACKAGES")
    assert "host kvm2 (RHEL 6.2 < RHEL 6.4)" in f.found and "web1 (RHEL 6.1" in f.found
    assert f.cluster is None
    none_of(topo(), "UPGRADE-PACKAGES")


# ------------------------------------------------------------------ fencing


def test_no_fencing() -> None:
    f = one(web(fence_agents=[]), "NO-FENCING")
    assert "cluster web lists no fence agent" in f.found
    none_of(topo(), "NO-FENCING")


def test_xen_fence_agent() -> None:
    f = one(web(_xen(), fence_agents=["fence_virt"]), "XEN-FENCE-AGENT")
    assert "fence_virt" in f.found and "fence_xvm or fence_scsi" in f.fix
    none_of(web(_xen()), "XEN-FENCE-AGENT")


def test_kvm_fence_agent() -> None:
    f = one(web(fence_agents=["fence_vmware_soap"]), "KVM-FENCE-AGENT")
    assert "cluster web runs on KVM hosts (kvm1, kvm2 and kvm3)" in f.found
    none_of(web(fence_agents=["fence_virt"]), "KVM-FENCE-AGENT")


def test_rhev_fence_agent() -> None:
    f = one(web(_rhev("RHEV-M 2.2"), fence_agents=["fence_rhevm"]), "RHEV-FENCE-AGENT")
    assert "kvm1 is managed by RHEV-M 2.2" in f.found
    f = one(web(_rhev(), fence_agents=["fence_xvm"]), "RHEV-FENCE-AGENT")
    assert "fence_xvm" in f.found
    none_of(web(_rhev(), fence_agents=["fence_rhevm"]), "RHEV-FENCE-AGENT")


def test_vmware_fence_agent() -> None:
    f = one(web(_vmware(), fence_agents=["fence_xvm"]), "VMWARE-FENCE-AGENT")
    assert "VMware hosts" in f.found and "fence_xvm" in f.found
    none_of(web(_vmware(), **SOAP), "VMWARE-FENCE-AGENT")


def test_xen_host_cluster() -> None:
    f = one(web(_xen(host_cluster=None)), "XEN-HOST-CLUSTER")
    assert "kvm1, kvm2 and kvm3 in no host cluster" in f.found
    none_of(web(_xen()), "XEN-HOST-CLUSTER")
    none_of(web(_xen(host_cluster=None), **SCSI), "XEN-HOST-CLUSTER")  # fence_scsi: no need


def test_xen_fence_xvm_on_all_clustered_guests() -> None:
    t = topo(_xen(), [cluster("web", spread()),
                      cluster("db", spread("db"), **SCSI)])
    f = one(t, "XEN-FENCE-XVM-ALL")
    assert f.cluster == "db" and "runs on Xen host cluster hc next to web" in f.found
    none_of(topo(_xen(), [cluster("web", spread())]), "XEN-FENCE-XVM-ALL")


def test_fence_virtd_missing() -> None:
    t = topo([*hosts3()[:2], host("kvm3", fence_virtd=False)])
    f = one(t, "FENCE-VIRTD-MISSING")
    assert "kvm3 does not run fence_virtd" in f.found and f.hosts == ("kvm3",)
    none_of(web(hosts3(fence_virtd=False), **SCSI), "FENCE-VIRTD-MISSING")
    f = one(topo([*hosts3()[:2], host("kvm3", fence_virtd=None)]), "FENCE-VIRTD-MISSING", "info")
    assert "kvm3" in f.found and "`fence_virtd: true`" in f.fix


def test_fence_virtd_host_cluster() -> None:
    f = one(topo([*hosts3()[:2], host("kvm3", host_cluster=None)]), "FENCE-VIRTD-HOST-CLUSTER")
    assert "kvm3 in no host cluster" in f.found
    f = one(topo([*hosts3()[:2], host("kvm3", host_cluster="other")]),
            "FENCE-VIRTD-HOST-CLUSTER")
    assert "split over host clusters hc (kvm1 and kvm2) and other (kvm3)" in f.found
    none_of(web(hosts3(host_cluster=None), fence_virtd_mode="no-host-cluster"),
            "FENCE-VIRTD-HOST-CLUSTER")
    none_of(topo(), "FENCE-VIRTD-HOST-CLUSTER")
    f = one(web(hosts3(host_cluster=None), fence_virtd_mode=None), "FENCE-VIRTD-HOST-CLUSTER",
            "info")
    assert "fence_virtd_mode" in f.fix


def test_fence_virtd_static() -> None:
    f = one(web(fence_virtd_mode="static"), "FENCE-VIRTD-STATIC")
    assert "cluster web" in f.found and "live-migrate" in f.fix
    none_of(topo(), "FENCE-VIRTD-STATIC")


def test_vmware_50_soap() -> None:
    f = one(web(_vmware("vSphere 5.0"), **SOAP), "VMWARE-50-SOAP")
    assert "VMware 5.0 (kvm1, kvm2 and kvm3)" in f.found
    none_of(web(_vmware("ESXi 4.1"), **SOAP), "VMWARE-50-SOAP")


def test_vmware_perl_api() -> None:
    f = one(web(_vmware("ESXi 4.1"), **SOAP), "VMWARE-PERL-API")
    assert "web1, web2 and web3" in f.fix
    none_of(web(_vmware("ESXi 4.1"), **SCSI), "VMWARE-PERL-API")


# ------------------------------------------------------------------ fence_scsi and storage


def test_scsi_no_storage() -> None:
    f = one(web(fence_agents=["fence_scsi"]), "SCSI-NO-STORAGE")
    assert "cluster web uses fence_scsi" in f.found
    none_of(web(**SCSI), "SCSI-NO-STORAGE")


def test_scsi_iscsi_only() -> None:
    storage = [PR_STORAGE, {"native": "/dev/xvdb"}]
    f = one(web(fence_agents=["fence_scsi"], storage=storage), "SCSI-ISCSI-ONLY")
    assert "/dev/xvdb" in f.found
    none_of(web(storage=storage), "SCSI-ISCSI-ONLY")  # fence_xvm: native storage is fine


@pytest.mark.parametrize("software", ["tgt", "scsi-target-utils", "IETD"])
def test_scsi_rhel_target(software: str) -> None:
    storage = [{**PR_STORAGE, "software": software}]
    f = one(web(fence_agents=["fence_scsi"], storage=storage), "SCSI-RHEL-TARGET")
    assert software in f.found and f.origin is not None
    none_of(web(fence_agents=["fence_scsi"], storage=storage), "SCSI-PR")
    none_of(web(storage=storage), "SCSI-RHEL-TARGET")  # not used with fence_scsi
    none_of(web(**SCSI), "SCSI-RHEL-TARGET")


def test_scsi_pr() -> None:
    storage = [{**PR_STORAGE, "software": "Acme", "preempt_and_abort": False}]
    f = one(web(fence_agents=["fence_scsi"], storage=storage), "SCSI-PR")
    assert "lacks PREEMPT AND ABORT" in f.found and PR_STORAGE["iscsi"] in f.found
    none_of(web(**SCSI), "SCSI-PR")


def test_scsi_pr_unknown() -> None:
    storage = [{"iscsi": "iscsi://san/iqn.x/1", "software": "Acme"}]
    f = one(web(fence_agents=["fence_scsi"], storage=storage), "SCSI-PR-UNKNOWN")
    assert "iscsi://san/iqn.x/1 (Acme)" in f.found and "storage vendor" in f.fix
    ours = [{"iscsi": "iscsi://san/iqn.x/1", "software": "guestfence"}]
    none_of(web(fence_agents=["fence_scsi"], storage=ours), "SCSI-PR-UNKNOWN")


# ------------------------------------------------------------------ placement


def test_single_host() -> None:
    f = one(web(members=spread(placement=("kvm1",) * 3)), "SINGLE-HOST")
    assert "all 3 members of cluster web run on host kvm1" in f.found
    assert "prototype/development" in f.found
    none_of(web(members=spread(placement=("kvm1",) * 3)), "HOST-LOSS-QUORUM")
    none_of(topo(), "SINGLE-HOST")
    # a bare-metal member: not all members on the host (quorum is another rule's matter)
    none_of(web(members=[*spread(placement=("kvm1", "kvm1")), member("m", None)]),
            "SINGLE-HOST")


def test_host_loss_quorum() -> None:
    t = web(members=spread(placement=("kvm1", "kvm1", "kvm2")))
    f = one(t, "HOST-LOSS-QUORUM")
    assert "kvm1 (2 of 3 members)" in f.found and f.hosts == ("kvm1",)
    assert f.guests == ("web1", "web2")
    none_of(t, "ONE-TO-ONE")  # said once, more strongly
    none_of(topo(), "HOST-LOSS-QUORUM")


def test_two_node_quorum() -> None:
    f = one(web(members=spread(placement=("kvm1", "kvm2"))), "TWO-NODE-QUORUM")
    assert "two members" in f.found and "two_node" in f.fix
    none_of(web(members=spread(placement=("kvm1", "kvm2"))), "HOST-LOSS-QUORUM")
    none_of(topo(), "TWO-NODE-QUORUM")


def test_one_to_one() -> None:
    t = web(members=spread(placement=("kvm1", "kvm1", "kvm2", "kvm3", "kvm3")))
    f = one(t, "ONE-TO-ONE")
    assert "host kvm1 runs 2 of its 5 members (web1 and web2)" in f.found
    assert "takes 2 members" in f.found and f.hosts == ("kvm1", "kvm3")
    none_of(t, "HOST-LOSS-QUORUM")
    none_of(topo(), "ONE-TO-ONE")


def test_shared_hosts_xvm() -> None:
    t = topo(clusters=[cluster("web", spread(), key_file="/etc/k"),
                       cluster("db", spread("db", ("kvm2", "kvm3")), key_file="/etc/k")])
    fs = found(t, "SHARED-HOSTS-XVM")
    assert [(f.cluster, f.severity) for f in fs] == [("web", "error"), ("db", "error")]
    assert "shares hosts with db (on kvm2 and kvm3)" in fs[0].found
    assert "/etc/k is used by both sides" in fs[0].found
    assert "own key_file" in fs[0].fix and "fence_scsi" in fs[0].fix
    none_of(topo(clusters=[cluster("web", spread()),
                           cluster("db", spread("db", ("kvm2", "kvm3")), **SCSI)]),
            "SHARED-HOSTS-XVM")
    none_of(topo(), "SHARED-HOSTS-XVM")


def test_nonclustered_guests_fenced() -> None:
    guests = [{"name": "build", "host": "kvm1"}]
    f = one(topo(guests=guests), "NONCLUSTERED-GUESTS-FENCED")
    assert "host kvm1 is in host cluster hc" in f.found and "build" in f.found
    assert f.guests == ("build",)
    none_of(topo(hosts3(host_cluster=None), [cluster("web", spread(),
                                                     fence_virtd_mode="no-host-cluster")],
                 guests), "NONCLUSTERED-GUESTS-FENCED")


def test_overcommit_memory() -> None:
    guests = [{"name": "big", "host": "kvm1", "memory": "62GiB"}, {"name": "x", "host": "kvm1"}]
    f = one(topo(guests=guests), "OVERCOMMIT-MEMORY")
    assert "host kvm1 has 65536 MiB and runs guests with 67584 MiB" in f.found
    assert "1 guest of unknown size" in f.found
    none_of(topo(), "OVERCOMMIT-MEMORY")
    none_of(topo([*hosts3()[1:], host("kvm1", memory=None)], guests=guests), "OVERCOMMIT-MEMORY")


def test_overcommit_vcpu() -> None:
    f = one(topo(guests=[{"name": "big", "host": "kvm2", "vcpus": 15}]), "OVERCOMMIT-VCPU")
    assert "host kvm2 has 16 vCPUs and runs guests with 17 vCPUs" in f.found
    none_of(topo(guests=[{"name": "big", "host": "kvm2", "vcpus": 14}]), "OVERCOMMIT-VCPU")
