"""Rules on platforms and versions: which hypervisor, which host release, which guest OS.

Decisions where the seed leaves a choice:

- "+" means "and later", including later majors: RHEL 7, 8 and 9 KVM hosts
  count as "RHEL 6.1+ KVM hosts", RHEL 7+ guests as "RHEL 6.1+ guests", and
  RHV 4.x as "RHEV-M 2.2+". A Xen host declaring RHEL 6 or later is accepted as
  "5.3+" too (RHEL 6 ships no Xen host; the seed does not say so).
- VMware is listed by release, not with "+": 4.1 and 5.0 are supported,
  anything older is an error, anything newer a warning (not covered by the
  seed; Red Hat's current policy decides).
- A KVM or Xen host OS other than RHEL is not supported (the seed lists RHEL
  hosts only).
- A version of the wrong product (a RHEV host declaring "RHEL 6.2" where the
  rule compares the RHEV-M release) counts as unknown: an info, not a guess.
- Host rules report hosts that run at least one cluster member, once per
  host (no cluster: the finding names the clusters it affects).

Guest OS rules are in rules_guests.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from guestfence.check.model import (
    Finding,
    Host,
    HypervisorKind,
    Topology,
    Version,
)
from guestfence.check.rules_common import (
    PLATFORM_NAMES,
    Layout,
    Rule,
    layout,
    names,
    rhel_at_least,
)

VMWARE_PRODUCTS = ("vSphere", "vCenter", "ESX", "ESXi")
VMWARE_RELEASES = ((4, 1), (5, 0))


def _hosts_of_kind(lay: Layout, kind: HypervisorKind) -> list[Host]:
    return [h for h in lay.member_hosts() if h.hypervisor == kind]


def _runs(lay: Layout, host: Host) -> str:
    """"cluster web" or "clusters web and db": the clusters with members on ``host``."""
    views = lay.clusters_on[host.name]
    return ("cluster " if len(views) == 1 else "clusters ") + names(v.name for v in views)


def _no_version(rule: Rule, host: Host, example: str) -> Finding:
    return rule.unknown(
        f"the release of {PLATFORM_NAMES[host.hypervisor or 'kvm']} host {host.name}",
        f"add `version: {example}` to host {host.name}",
        hosts=(host.name,), origin=host.origin)


# ----------------------------------------------------------------- platforms


def hyperv_unsupported(topology: Topology) -> Iterator[Finding]:
    """No guest cluster member may run on Hyper-V."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "hyperv"):
        yield HYPERV_UNSUPPORTED.finding(
            f"host {h.name} is a Hyper-V host and runs members of {_runs(lay, h)}",
            f"move the members on {h.name} to RHEL KVM, Xen, RHEV or VMware hosts",
            hosts=(h.name,), origin=h.origin)


HYPERV_UNSUPPORTED = Rule(
    "HYPERV-UNSUPPORTED", "error", hyperv_unsupported,
    "Use of Hyper-V guest clusters is unsupported at this time.")


def hypervisor_mixed(topology: Topology) -> Iterator[Finding]:
    """All hosts under one guest cluster use one hypervisor; says which hosts do not say."""
    lay = layout(topology)
    for v in lay.clusters:
        if len(v.kinds) > 1:
            per_kind = [f"{PLATFORM_NAMES[k]} ({names(h.name for h in lay.hosts_of(v, k))})"
                        for k in v.kinds]
            yield HYPERVISOR_MIXED.finding(
                f"cluster {v.name} runs on {names(per_kind)}",
                f"run every member of {v.name} on hosts of one hypervisor "
                f"(e.g. all {PLATFORM_NAMES[v.kinds[0]]}), or as bare-metal nodes",
                cluster=v.name, hosts=v.hosts, origin=v.cluster.origin)
    for h in lay.member_hosts():
        if h.hypervisor is None:
            yield HYPERVISOR_MIXED.unknown(
                f"the platform of host {h.name} (no `hypervisor:`), which runs members of "
                f"{_runs(lay, h)}",
                f"add `hypervisor: kvm` (or xen, vmware, rhev, hyperv) to host {h.name}",
                hosts=(h.name,), origin=h.origin)


HYPERVISOR_MIXED = Rule(
    "HYPERVISOR-MIXED", "error", hypervisor_mixed,
    "Mixing virtualization platforms (hypervisors) underneath guest clusters is not "
    "supported. All underlying hosts must use the same virtualization technology.")


# ----------------------------------------------------------------- host releases


def xen_host_version(topology: Topology) -> Iterator[Finding]:
    """Xen hosts run RHEL 5.3 or later."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "xen"):
        if h.version is None:
            yield _no_version(XEN_HOST_VERSION, h, "RHEL 5.3")
        elif not rhel_at_least(h.version, ((5, 3),)):
            yield XEN_HOST_VERSION.finding(
                f"Xen host {h.name} runs {h.version} (members of {_runs(lay, h)})",
                f"upgrade {h.name} to RHEL 5.3 or later",
                hosts=(h.name,), origin=h.origin)


XEN_HOST_VERSION = Rule(
    "XEN-HOST-VERSION", "error", xen_host_version,
    "Red Hat Enterprise Linux 5.3+ Xen hosts fully support running guest clusters where "
    "the guest operating systems are also Red Hat Enterprise Linux 5.3 or above")


def kvm_rhel5_host(topology: Topology) -> Iterator[Finding]:
    """No guest cluster on a RHEL 5 (or older) KVM host."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "kvm"):
        if h.version is not None and h.version.product == "RHEL" and h.version.major <= 5:
            yield KVM_RHEL5_HOST.finding(
                f"host {h.name} runs {h.version} with KVM (members of {_runs(lay, h)})",
                f"upgrade {h.name} to RHEL 6.1 or later, or move its members to a RHEL 6.1+ "
                "KVM host", hosts=(h.name,), origin=h.origin)


KVM_RHEL5_HOST = Rule(
    "KVM-RHEL5-HOST", "error", kvm_rhel5_host,
    "Red Hat Enterprise Linux 5.5+ KVM hosts do not support running guest clusters.")


def kvm_host_version(topology: Topology) -> Iterator[Finding]:
    """KVM hosts run RHEL 6.1 or later (RHEL 5 hosts: KVM-RHEL5-HOST)."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "kvm"):
        v = h.version
        if v is None:
            yield _no_version(KVM_HOST_VERSION, h, "RHEL 6.2")
        elif (v.product == "RHEL" and v.major <= 5) or rhel_at_least(v, ((6, 1),)):
            continue
        else:
            yield KVM_HOST_VERSION.finding(
                f"host {h.name} runs {v} with KVM (members of {_runs(lay, h)})",
                f"run {h.name} on RHEL 6.1 or later", hosts=(h.name,), origin=h.origin)


KVM_HOST_VERSION = Rule(
    "KVM-HOST-VERSION", "error", kvm_host_version,
    "Red Hat Enterprise Linux 6.1+ KVM hosts support running guest clusters where the guest "
    "operating systems are either Red Hat Enterprise Linux 6.1+ or Red Hat Enterprise "
    "Linux 5.6+.")


def rhev_version(topology: Topology) -> Iterator[Finding]:
    """RHEV hosts are managed by RHEV-M 2.2 or later."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "rhev"):
        v = h.version
        if v is None or v.product != "RHEV-M":
            given = f" (it says {v})" if v is not None else ""
            yield RHEV_VERSION.unknown(
                f"the RHEV-M release managing host {h.name}{given}",
                f"set `version: RHEV-M 3.0` (the RHEV-M release) on host {h.name}",
                hosts=(h.name,), origin=h.origin)
        elif not v.at_least(2, 2):
            yield RHEV_VERSION.finding(
                f"host {h.name} is managed by {v} (members of {_runs(lay, h)})",
                f"upgrade the RHEV manager of {h.name} to RHEV-M 2.2 or 3.0",
                hosts=(h.name,), origin=h.origin)


RHEV_VERSION = Rule(
    "RHEV-VERSION", "error", rhev_version,
    "Red Hat Enterprise Virtualization Management (RHEV-M) versions 2.2+ and 3.0 currently "
    "support Red Hat Enterprise Linux 5.6+ and Red Hat Enterprise Linux 6.1+ clustered "
    "guests.")


def _vmware_release(h: Host) -> Version | None:
    v = h.version
    return v if v is not None and v.product in VMWARE_PRODUCTS else None


def vmware_version(topology: Topology) -> Iterator[Finding]:
    """VMware hosts run release 4.1 or 5.0 (newer ones: VMWARE-VERSION-NEWER)."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "vmware"):
        v = _vmware_release(h)
        if v is None:
            given = f" (it says {h.version})" if h.version is not None else ""
            yield VMWARE_VERSION.unknown(
                f"the VMware release of host {h.name}{given}",
                f"set `version: ESXi 5.0` (vSphere, vCenter, ESX or ESXi and the release) on "
                f"host {h.name}", hosts=(h.name,), origin=h.origin)
        elif (v.major, v.minor) < VMWARE_RELEASES[0]:
            yield VMWARE_VERSION.finding(
                f"host {h.name} runs {v} (members of {_runs(lay, h)})",
                f"upgrade {h.name} to VMware 4.1 or 5.0", hosts=(h.name,), origin=h.origin)


VMWARE_VERSION = Rule(
    "VMWARE-VERSION", "error", vmware_version,
    "VMware vSphere 4.1, VMware vCenter 4.1, VMware ESX and ESXi 4.1 support running guest "
    "clusters where the guest operating systems are Red Hat Enterprise Linux 5.7+ or Red Hat "
    "Enterprise Linux 6.2+. Version 5.0 of VMware vSphere, vCenter, ESX and ESXi are also "
    "supported")


def vmware_version_newer(topology: Topology) -> Iterator[Finding]:
    """VMware releases after 5.0 are outside the seed's list."""
    lay = layout(topology)
    for h in _hosts_of_kind(lay, "vmware"):
        v = _vmware_release(h)
        if v is not None and (v.major, v.minor) > VMWARE_RELEASES[-1]:
            yield VMWARE_VERSION_NEWER.finding(
                f"host {h.name} runs {v}, newer than the releases the seed lists (4.1, 5.0)",
                "check Red Hat's current support policy for RHEL High Availability on this "
                "VMware release", hosts=(h.name,), origin=h.origin)


VMWARE_VERSION_NEWER = Rule(
    "VMWARE-VERSION-NEWER", "warning", vmware_version_newer, VMWARE_VERSION.seed)
