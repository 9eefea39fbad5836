"""Rules on the guest OS of cluster members: release per platform, homogeneity, upgrades.

Decisions where the seed leaves a choice:

- "+" means "and later", including later majors: RHEL 7+ guests count as
  "RHEL 6.1+ guests" (see rules_versions.py).
- Guest OSes other than RHEL are not supported: the seed lists RHEL only.
- RHEL 4 members are reported once, by RHEL4-GUEST, not again by the
  per-platform rules.
- Only members that are guests are checked against a platform (bare-metal
  members are permitted and have no hypervisor); homogeneity counts every
  member, bare metal included.
- Homogeneity is an error where the seed says so (RHEV, VMware) and a warning
  elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from guestfence.check.model import Finding, Guest, HypervisorKind, Origin, Topology, Version
from guestfence.check.rules_common import (
    PLATFORM_NAMES,
    ClusterView,
    Rule,
    floors_text,
    layout,
    names,
    rhel_at_least,
)
from guestfence.check.rules_versions import KVM_HOST_VERSION, RHEV_VERSION, XEN_HOST_VERSION

XEN_GUESTS = ((5, 3),)
KVM_GUESTS = ((5, 6), (6, 1))
RHEV_GUESTS = ((5, 6), (6, 1))
VMWARE_GUESTS = ((5, 7), (6, 2))


def _is_rhel4(os: Version | None) -> bool:
    """RHEL 4 or older."""
    return os is not None and os.product == "RHEL" and os.major < 5


def _with_os(v: ClusterView, members: Sequence[Guest]) -> str:
    return names(f"{m.name} ({v.cluster.member_os(m)} on {m.host})" for m in members)


def _origin(v: ClusterView, members: Sequence[Guest]) -> Origin:
    """The line to change: the member's `os:` if it has one, else the cluster's."""
    first = members[0]
    return first.origin if first.os is not None else v.cluster.origin


# ----------------------------------------------------------------- guest OS


def rhel4_guest(topology: Topology) -> Iterator[Finding]:
    """No cluster member is a RHEL 4 (or older) guest, on any platform."""
    lay = layout(topology)
    for v in lay.clusters:
        old = [m for ms in v.by_host.values() for m in ms if _is_rhel4(v.cluster.member_os(m))]
        if old:
            yield RHEL4_GUEST.finding(
                f"cluster {v.name} has RHEL 4 guests: {_with_os(v, old)}",
                f"upgrade {names(m.name for m in old)} to RHEL 6.1 or later (or 5.6+)",
                cluster=v.name, guests=(m.name for m in old), origin=_origin(v, old))


RHEL4_GUEST = Rule(
    "RHEL4-GUEST", "error", rhel4_guest,
    "Red Hat Enterprise Linux 4 guests are not supported.")


def _guest_os(topology: Topology, rule: Rule, kind: HypervisorKind,
              floors: tuple[tuple[int, int], ...]) -> Iterator[Finding]:
    """Members on ``kind`` hosts run a RHEL release at or above ``floors``."""
    lay = layout(topology)
    platform = PLATFORM_NAMES[kind]
    for v in lay.clusters:
        members = lay.members_of(v, kind)
        unknown = [m for m in members if v.cluster.member_os(m) is None]
        bad = [m for m in members if (os := v.cluster.member_os(m)) is not None
               and not _is_rhel4(os) and not rhel_at_least(os, floors)]
        if bad:
            yield rule.finding(
                f"cluster {v.name} has {platform} guests not on {floors_text(floors)}: "
                f"{_with_os(v, bad)}",
                f"upgrade {names(m.name for m in bad)} to {floors_text(floors)}",
                cluster=v.name, hosts=dict.fromkeys(m.host or "" for m in bad),
                guests=(m.name for m in bad), origin=_origin(v, bad))
        if unknown:
            yield rule.unknown(
                f"the OS of {names(m.name for m in unknown)} in cluster {v.name}",
                f"add `os: RHEL 6.2` (say) to cluster {v.name} or to each member",
                cluster=v.name, guests=(m.name for m in unknown), origin=v.cluster.origin)


def xen_guest_version(topology: Topology) -> Iterator[Finding]:
    """Xen guests run RHEL 5.3 or later."""
    return _guest_os(topology, XEN_GUEST_VERSION, "xen", XEN_GUESTS)


XEN_GUEST_VERSION = Rule("XEN-GUEST-VERSION", "error", xen_guest_version, XEN_HOST_VERSION.seed)


def kvm_guest_version(topology: Topology) -> Iterator[Finding]:
    """KVM guests run RHEL 5.6+ or 6.1+."""
    return _guest_os(topology, KVM_GUEST_VERSION, "kvm", KVM_GUESTS)


KVM_GUEST_VERSION = Rule("KVM-GUEST-VERSION", "error", kvm_guest_version, KVM_HOST_VERSION.seed)


def rhev_guest_version(topology: Topology) -> Iterator[Finding]:
    """RHEV guests run RHEL 5.6+ or 6.1+."""
    return _guest_os(topology, RHEV_GUEST_VERSION, "rhev", RHEV_GUESTS)


RHEV_GUEST_VERSION = Rule("RHEV-GUEST-VERSION", "error", rhev_guest_version, RHEV_VERSION.seed)


def vmware_guest_version(topology: Topology) -> Iterator[Finding]:
    """VMware guests run RHEL 5.7+ or 6.2+.

    The seed is inconsistent: the platform sentence says "RHEL 5.7+ or RHEL
    6.2+", the homogeneity sentence under it "all RHEL 6.1+ guests". We follow
    the platform sentence (6.2+): it is the one that states the requirement,
    the other one is about not mixing majors.
    """
    return _guest_os(topology, VMWARE_GUEST_VERSION, "vmware", VMWARE_GUESTS)


VMWARE_GUEST_VERSION = Rule(
    "VMWARE-GUEST-VERSION", "error", vmware_guest_version,
    "VMware vSphere 4.1, VMware vCenter 4.1, VMware ESX and ESXi 4.1 support running guest "
    "clusters where the guest operating systems are Red Hat Enterprise Linux 5.7+ or Red Hat "
    "Enterprise Linux 6.2+.")


# ----------------------------------------------------------------- homogeneity


def _majors(v: ClusterView) -> dict[int, list[str]]:
    """RHEL major -> members running it (unknown and non-RHEL OSes left out)."""
    out: dict[int, list[str]] = {}
    for m in v.cluster.members:
        os = v.cluster.member_os(m)
        if os is not None and os.product == "RHEL":
            out.setdefault(os.major, []).append(m.name)
    return out


def _mixed(v: ClusterView, rule: Rule) -> Iterator[Finding]:
    majors = _majors(v)
    if len(majors) > 1:
        parts = [f"RHEL {major} ({names(ms, 4)})" for major, ms in sorted(majors.items())]
        yield rule.finding(
            f"cluster {v.name} mixes {names(parts)}",
            f"run every member of {v.name} on the same RHEL major release "
            f"(e.g. all RHEL {max(majors)})",
            cluster=v.name, guests=(m for ms in majors.values() for m in ms),
            origin=v.cluster.origin)


def homogeneous_guests(topology: Topology) -> Iterator[Finding]:
    """On RHEV and VMware, all members of a cluster run the same RHEL major."""
    for v in layout(topology).clusters:
        if "rhev" in v.kinds or "vmware" in v.kinds:
            yield from _mixed(v, HOMOGENEOUS_GUESTS)


HOMOGENEOUS_GUESTS = Rule(
    "HOMOGENEOUS-GUESTS", "error", homogeneous_guests,
    "Guest clusters must be homogeneous (either all Red Hat Enterprise Linux 5.6+ guests or "
    "all Red Hat Enterprise Linux 6.1+ guests).")


def homogeneous_guests_advised(topology: Topology) -> Iterator[Finding]:
    """Elsewhere (KVM, Xen, bare metal) mixed RHEL majors are advised against."""
    for v in layout(topology).clusters:
        if "rhev" not in v.kinds and "vmware" not in v.kinds:
            yield from _mixed(v, HOMOGENEOUS_GUESTS_ADVISED)


HOMOGENEOUS_GUESTS_ADVISED = Rule(
    "HOMOGENEOUS-GUESTS-ADVISED", "warning", homogeneous_guests_advised,
    HOMOGENEOUS_GUESTS.seed)


def upgrade_packages(topology: Topology) -> Iterator[Finding]:
    """Once per report: hosts and guests behind the newest minor of their major seen here.

    The seed recommends the latest packages; we cannot know what is latest, but
    a machine older than another one of the same major in this topology is
    certainly behind.
    """
    lay = layout(topology)
    seen: list[tuple[str, Version]] = [(f"host {h.name}", h.version)
                                       for h in lay.member_hosts() if h.version is not None]
    for v in lay.clusters:
        seen += [(f"guest {m.name}", os) for m in v.cluster.members
                 if (os := v.cluster.member_os(m)) is not None]
    newest: dict[tuple[str, int], Version] = {}
    for _, ver in seen:
        key = (ver.product, ver.major)
        newest[key] = max(newest.get(key, ver), ver)
    behind = [(who, ver, newest[(ver.product, ver.major)]) for who, ver in seen
              if ver < newest[(ver.product, ver.major)]]
    if behind:
        yield UPGRADE_PACKAGES.finding(
            "these run an older release than others of the same major in this topology: "
            + names(f"{who} ({ver} < {top})" for who, ver, top in behind),
            "upgrade these hosts and guests to the latest packages of their release")


UPGRADE_PACKAGES = Rule(
    "UPGRADE-PACKAGES", "info", upgrade_packages,
    "As stated above it is recommended to upgrade both the hosts and guests to the latest "
    "Red Hat Enterprise Linux packages before using virtualization capabilities, as there "
    "have been many enhancements and bug fixes.")
