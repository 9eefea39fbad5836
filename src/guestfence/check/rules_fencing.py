"""Rules on fencing: which agents each platform allows and what the hosts must run for them.

fence_scsi and its storage are in rules_storage.py. Host-level findings
(fence_virtd on a host) carry no cluster: they are about the host, and name
the clusters they affect.
"""

from __future__ import annotations

from collections.abc import Iterator

from guestfence.check.model import Finding, HypervisorKind, Topology
from guestfence.check.rules_common import (
    PLATFORM_NAMES,
    ClusterView,
    Layout,
    Rule,
    host_clusters_of,
    layout,
    names,
)

XEN_AGENTS = ("fence_xvm", "fence_scsi")
KVM_AGENTS = ("fence_xvm", "fence_virt", "fence_scsi")
RHEV_AGENTS = ("fence_scsi", "fence_rhevm")  # fence_rhevm from RHEV-M 3.0
VMWARE_AGENTS = ("fence_vmware_soap", "fence_scsi")


def no_fencing(topology: Topology) -> Iterator[Finding]:
    """Every guest cluster has a fence agent."""
    for v in layout(topology).clusters:
        if not v.cluster.fence_agents:
            yield NO_FENCING.finding(
                f"cluster {v.name} lists no fence agent: a failed member cannot be fenced",
                f"add `fence_agents:` to cluster {v.name}, e.g. [fence_xvm] on KVM or Xen, "
                "[fence_vmware_soap] on VMware, or [fence_scsi] with iSCSI storage",
                cluster=v.name, origin=v.cluster.origin)


NO_FENCING = Rule(
    "NO-FENCING", "error", no_fencing,
    "In all of the above virtualization environments, fence_scsi and iSCSI storage can be "
    "used in place of native shared storage and the native fence devices.")


# ----------------------------------------------------------------- agents per platform


def _wrong_agents(lay: Layout, rule: Rule, kind: HypervisorKind,
                  allowed: tuple[str, ...]) -> Iterator[Finding]:
    """Clusters with members on ``kind`` hosts that list an agent outside ``allowed``."""
    platform = PLATFORM_NAMES[kind]
    for v in lay.clusters:
        if kind not in v.kinds:
            continue
        bad = [a for a in v.cluster.fence_agents if a not in allowed]
        if bad:
            hosts = [h.name for h in lay.hosts_of(v, kind)]
            yield rule.finding(
                f"cluster {v.name} runs on {platform} hosts ({names(hosts)}) and is fenced "
                f"with {names(bad)}",
                f"fence {v.name} with {names(allowed, last='or')} instead of {names(bad)}",
                cluster=v.name, hosts=hosts, origin=v.cluster.origin)


def xen_fence_agent(topology: Topology) -> Iterator[Finding]:
    """Xen guest clusters use fence_xvm or fence_scsi."""
    return _wrong_agents(layout(topology), XEN_FENCE_AGENT, "xen", XEN_AGENTS)


XEN_FENCE_AGENT = Rule(
    "XEN-FENCE-AGENT", "error", xen_fence_agent,
    "Xen guest clusters can use either fence_xvm or fence_scsi for guest fencing.")


def kvm_fence_agent(topology: Topology) -> Iterator[Finding]:
    """KVM guest clusters use fence_xvm, fence_virt or fence_scsi."""
    return _wrong_agents(layout(topology), KVM_FENCE_AGENT, "kvm", KVM_AGENTS)


KVM_FENCE_AGENT = Rule(
    "KVM-FENCE-AGENT", "error", kvm_fence_agent,
    "Red Hat Enterprise Linux 6.1+ guest clusters can use either fence_xvm (in the fence-virt "
    "package) or fence_scsi for guest fencing.")


def rhev_fence_agent(topology: Topology) -> Iterator[Finding]:
    """RHEV clusters use fence_scsi, or fence_rhevm from RHEV-M 3.0 on."""
    lay = layout(topology)
    yield from _wrong_agents(lay, RHEV_FENCE_AGENT, "rhev", RHEV_AGENTS)
    for v in lay.clusters:
        if "rhev" not in v.kinds or "fence_rhevm" not in v.cluster.fence_agents:
            continue
        old = [h for h in lay.hosts_of(v, "rhev") if h.version is not None
               and h.version.product == "RHEV-M" and not h.version.at_least(3, 0)]
        if old:
            yield RHEV_FENCE_AGENT.finding(
                f"cluster {v.name} uses fence_rhevm, but "
                + names(f"{h.name} is managed by {h.version}" for h in old),
                f"upgrade to RHEV-M 3.0, or fence {v.name} with fence_scsi",
                cluster=v.name, hosts=(h.name for h in old), origin=v.cluster.origin)


RHEV_FENCE_AGENT = Rule(
    "RHEV-FENCE-AGENT", "error", rhev_fence_agent,
    "Fencing is provided by fence_scsi in RHEV-M 2.2+ and by both fence_scsi and fence_rhevm "
    "in RHEV-M 3.0.")


def vmware_fence_agent(topology: Topology) -> Iterator[Finding]:
    """VMware guest clusters use fence_vmware_soap or fence_scsi."""
    return _wrong_agents(layout(topology), VMWARE_FENCE_AGENT, "vmware", VMWARE_AGENTS)


VMWARE_FENCE_AGENT = Rule(
    "VMWARE-FENCE-AGENT", "error", vmware_fence_agent,
    "Use of VMware ESX guest clusters is supported using either fence_vmware_soap or "
    "fence_scsi.")


# ----------------------------------------------------------------- fence_xvm on Xen


def _split(missing: list[str], groups: dict[str, list[str]]) -> str:
    """What keeps a set of hosts from being one host cluster, or "" if nothing does."""
    parts = []
    if missing:
        parts.append(f"{names(missing)} in no host cluster")
    if len(groups) > 1:
        parts.append("split over host clusters "
                     + names(f"{g} ({names(hs)})" for g, hs in groups.items()))
    return "; ".join(parts)


def xen_host_cluster(topology: Topology) -> Iterator[Finding]:
    """fence_xvm on Xen: every host of the cluster is in one host cluster (for fence_xvmd)."""
    lay = layout(topology)
    for v in lay.clusters:
        if "xen" not in v.kinds or "fence_xvm" not in v.cluster.fence_agents:
            continue
        hosts = lay.hosts_of(v, "xen")
        gap = _split(*host_clusters_of(hosts))
        if gap:
            yield XEN_HOST_CLUSTER.finding(
                f"cluster {v.name} uses fence_xvm on Xen hosts, but they are not one host "
                f"cluster: {gap}",
                f"put {names(h.name for h in hosts)} into one host cluster running fence_xvmd "
                "(`host_cluster:` on each), or fence with fence_scsi and iSCSI storage",
                cluster=v.name, hosts=(h.name for h in hosts), origin=v.cluster.origin)


XEN_HOST_CLUSTER = Rule(
    "XEN-HOST-CLUSTER", "error", xen_host_cluster,
    "Usage of fence_xvm/fence_xvmd requires a host cluster to be running to support "
    "fence_xvmd and fence_xvm must be used as the guest fencing agent on all clustered "
    "guests.")


def xen_fence_xvm_all(topology: Topology) -> Iterator[Finding]:
    """Where fence_xvmd serves a Xen host cluster, every guest cluster on it uses fence_xvm."""
    lay = layout(topology)
    groups: dict[str, list[str]] = {}  # host cluster (or lone host) -> its Xen hosts
    for h in lay.member_hosts():
        if h.hypervisor == "xen":
            group = f"host cluster {h.host_cluster}" if h.host_cluster else f"host {h.name}"
            groups.setdefault(group, []).append(h.name)
    for group, hosts in groups.items():
        views = list({v.index: v for h in hosts for v in lay.clusters_on[h]}.values())
        xvm = [v.name for v in views if "fence_xvm" in v.cluster.fence_agents]
        if not xvm:
            continue
        for v in views:
            if "fence_xvm" not in v.cluster.fence_agents:
                yield XEN_FENCE_XVM_ALL.finding(
                    f"cluster {v.name} runs on Xen {group} next to {names(xvm)}, which use "
                    f"fence_xvm, but is fenced with {names(v.cluster.fence_agents) or 'nothing'}",
                    f"add fence_xvm to the fence agents of {v.name}, or move it off "
                    f"{names(hosts)}", cluster=v.name, hosts=hosts, origin=v.cluster.origin)


XEN_FENCE_XVM_ALL = Rule("XEN-FENCE-XVM-ALL", "error", xen_fence_xvm_all, XEN_HOST_CLUSTER.seed)


# ----------------------------------------------------------------- fence_virtd on KVM


def _xvm_on_kvm(v: ClusterView) -> bool:
    return "kvm" in v.kinds and v.xvm


def fence_virtd_missing(topology: Topology) -> Iterator[Finding]:
    """KVM hosts under a cluster fenced with fence_xvm/fence_virt run fence_virtd."""
    lay = layout(topology)
    for h in lay.member_hosts():
        if h.hypervisor != "kvm" or h.fence_virtd is True:
            continue
        users = [v.name for v in lay.clusters_on[h.name] if v.xvm]
        if not users:
            continue
        if h.fence_virtd is None:
            yield FENCE_VIRTD_MISSING.unknown(
                f"whether KVM host {h.name} runs fence_virtd, needed there by the fence_xvm/"
                f"fence_virt of {names(users)}",
                f"add `fence_virtd: true` (or false) to host {h.name}",
                hosts=(h.name,), origin=h.origin)
        else:
            yield FENCE_VIRTD_MISSING.finding(
                f"KVM host {h.name} does not run fence_virtd, but it hosts members of "
                f"{names(users)}, fenced with fence_xvm/fence_virt",
                f"run fence_virtd (or guestfenced) on {h.name}",
                hosts=(h.name,), origin=h.origin)


FENCE_VIRTD_MISSING = Rule(
    "FENCE-VIRTD-MISSING", "error", fence_virtd_missing,
    "The Red Hat Enterprise Linux 6.1+ KVM Hosts must use fence_virtd if the guest cluster is "
    "using fence_virt or fence_xvm as the fence agent. If the guest cluster is using fence_scsi "
    "then fence_virtd on the hosts is not required.")


def fence_virtd_host_cluster(topology: Topology) -> Iterator[Finding]:
    """fence_virtd in host-cluster (checkpoint) mode: the KVM hosts form one host cluster."""
    lay = layout(topology)
    for v in lay.clusters:
        mode = v.cluster.fence_virtd_mode
        if not _xvm_on_kvm(v) or mode in ("static", "no-host-cluster"):
            continue
        hosts = lay.hosts_of(v, "kvm")
        gap = _split(*host_clusters_of(hosts))
        if not gap:
            continue
        if mode is None:
            yield FENCE_VIRTD_HOST_CLUSTER.unknown(
                f"how fence_virtd tracks the guests of {v.name}: its hosts are not one host "
                f"cluster ({gap}), which host-cluster mode needs",
                f"add `fence_virtd_mode:` (static, host-cluster or no-host-cluster) to cluster "
                f"{v.name}", cluster=v.name, origin=v.cluster.origin)
        else:
            yield FENCE_VIRTD_HOST_CLUSTER.finding(
                f"cluster {v.name} uses fence_virtd in host-cluster mode, but its hosts are not "
                f"one host cluster: {gap}",
                f"put {names(h.name for h in hosts)} into one host cluster, or use "
                "fence_virtd_mode no-host-cluster (QMF) or static",
                cluster=v.name, hosts=(h.name for h in hosts), origin=v.cluster.origin)


FENCE_VIRTD_HOST_CLUSTER = Rule(
    "FENCE-VIRTD-HOST-CLUSTER", "error", fence_virtd_host_cluster,
    "Using the Openais Checkpoint service to track live-migrations of clustered guests. This "
    "requires a host cluster to be running.")


def fence_virtd_static(topology: Topology) -> Iterator[Finding]:
    """fence_virtd in static mode: a reminder that the guests must not be live-migrated."""
    for v in layout(topology).clusters:
        if _xvm_on_kvm(v) and v.cluster.fence_virtd_mode == "static":
            yield FENCE_VIRTD_STATIC.finding(
                f"cluster {v.name} uses fence_virtd in static mode: the host of each member "
                "is fixed in fence_virtd's configuration",
                f"never live-migrate {names(m.name for m in v.cluster.members)}; if you need "
                "migration, use fence_virtd_mode host-cluster or no-host-cluster",
                cluster=v.name, origin=v.cluster.origin)


FENCE_VIRTD_STATIC = Rule(
    "FENCE-VIRTD-STATIC", "info", fence_virtd_static,
    "Standalone mode where the host to guest mapping is hard coded and live migration of "
    "guests is not allowed")


# ----------------------------------------------------------------- fence_vmware_soap


def _soap_on_vmware(v: ClusterView) -> bool:
    return "vmware" in v.kinds and "fence_vmware_soap" in v.cluster.fence_agents


def vmware_50_soap(topology: Topology) -> Iterator[Finding]:
    """fence_vmware_soap does not work on a default vSphere 5.0 install."""
    lay = layout(topology)
    for v in lay.clusters:
        if not _soap_on_vmware(v):
            continue
        hosts = [h for h in lay.hosts_of(v, "vmware")
                 if h.version is not None and (h.version.major, h.version.minor) == (5, 0)]
        if hosts:
            yield VMWARE_50_SOAP.finding(
                f"cluster {v.name} uses fence_vmware_soap on VMware 5.0 "
                f"({names(h.name for h in hosts)})",
                "apply the Red Hat Knowledgebase fix for the vSphere 5.0 WSDL schema and test "
                f"fence_vmware_soap from each member of {v.name}, or fence with fence_scsi",
                cluster=v.name, hosts=(h.name for h in hosts), origin=v.cluster.origin)


VMWARE_50_SOAP = Rule(
    "VMWARE-50-SOAP", "warning", vmware_50_soap,
    "due to an incomplete WDSL schema provided in the initial release of VMware vSphere 5.0, "
    "the fence_vmware_soap utility does not work on the default install.")


def vmware_perl_api(topology: Topology) -> Iterator[Finding]:
    """A reminder: fence_vmware_soap needs VMware's perl APIs on every member."""
    for v in layout(topology).clusters:
        if _soap_on_vmware(v):
            yield VMWARE_PERL_API.finding(
                f"cluster {v.name} uses fence_vmware_soap",
                f"install VMware's perl APIs (from VMware's web site) on "
                f"{names(m.name for m in v.cluster.members)}",
                cluster=v.name, origin=v.cluster.origin)


VMWARE_PERL_API = Rule(
    "VMWARE-PERL-API", "info", vmware_perl_api,
    "The fence_vmware_soap agent requires the 3rd party VMware perl APIs. This software "
    "package must be downloaded from VMware's web site and installed onto the Red Hat "
    "Enterprise Linux clustered guests.")
