"""The topology `guestfence check` reasons about: hosts, guest clusters, other guests.

A topology comes from a YAML file (check/loader.py), from live discovery
(libvirt, a Pacemaker CIB), or both merged. Every object remembers where it
came from (``Origin``) so that a finding can point at the line to change.

Quantities are normalised: memory in MiB, versions parsed into
(product, major, minor). Unknown values are ``None``: a rule that needs an
unknown value does not guess; it says what it could not check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

HypervisorKind = Literal["kvm", "xen", "vmware", "rhev", "hyperv"]
HYPERVISOR_KINDS: tuple[HypervisorKind, ...] = ("kvm", "xen", "vmware", "rhev", "hyperv")

FenceVirtdMode = Literal["static", "host-cluster", "no-host-cluster"]
FENCE_VIRTD_MODES: tuple[FenceVirtdMode, ...] = ("static", "host-cluster", "no-host-cluster")

KNOWN_AGENTS = ("fence_xvm", "fence_virt", "fence_scsi", "fence_rhevm", "fence_vmware_soap")

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Origin:
    """Where a value was read: a file and line, or a live source such as libvirt:URI."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass(frozen=True, order=True)
class Version:
    """A product version such as "RHEL 6.2" or "ESXi 5.0"."""

    product: str
    major: int
    minor: int = 0

    def __str__(self) -> str:
        return f"{self.product} {self.major}.{self.minor}"

    def at_least(self, major: int, minor: int = 0) -> bool:
        return (self.major, self.minor) >= (major, minor)


_VERSION = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ._-]*?)\s*[- ]?\s*(\d+)(?:\.(\d+))?\s*$")

# Spellings people use, mapped to one product name per family.
PRODUCT_ALIASES = {
    "rhel": "RHEL",
    "red hat enterprise linux": "RHEL",
    "esxi": "ESXi",
    "esx": "ESX",
    "vsphere": "vSphere",
    "vcenter": "vCenter",
    "rhev-m": "RHEV-M",
    "rhevm": "RHEV-M",
    "rhev": "RHEV-M",
    "rhv": "RHEV-M",
    "hyper-v": "Hyper-V",
    "hyperv": "Hyper-V",
    "windows server": "Windows Server",
}


def parse_version(text: str) -> Version:
    """'RHEL 6.2' -> Version('RHEL', 6, 2); raises ValueError with the accepted form."""
    m = _VERSION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a version; expected e.g. 'RHEL 6.2' or 'ESXi 5.0'")
    product = PRODUCT_ALIASES.get(m.group(1).strip().lower(), m.group(1).strip())
    return Version(product, int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True)
class KeyBinding:
    """One key of a host's guestfenced (its clusters block): whose it is, which guests it
    may fence (names or fnmatch patterns). The key is named by fingerprint or file."""

    cluster: str
    guests: tuple[str, ...]
    fingerprint: str | None = None
    key_file: str | None = None
    origin: Origin = field(default=Origin("?"), compare=False)


@dataclass(frozen=True)
class Host:
    name: str
    hypervisor: HypervisorKind | None = None
    version: Version | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    host_cluster: str | None = None  # name of the host cluster this host belongs to
    fence_virtd: bool | None = None  # runs fence_virtd / guestfenced
    origin: Origin = field(default=Origin("?"), compare=False)
    # guestfenced's per-cluster keys on this host; empty: not stated (or one shared key)
    key_bindings: tuple[KeyBinding, ...] = ()


@dataclass(frozen=True)
class Guest:
    """A virtual machine; a member of a guest cluster or another guest on the hosts."""

    name: str
    host: str | None  # None: a bare-metal cluster node (permitted by the seed)
    vcpus: int | None = None
    memory_mib: int | None = None
    os: Version | None = None
    origin: Origin = field(default=Origin("?"), compare=False)

    @property
    def bare_metal(self) -> bool:
        return self.host is None


StorageKind = Literal["iscsi", "native"]


@dataclass(frozen=True)
class Storage:
    """Shared storage of a guest cluster: an iSCSI target or a native shared block device."""

    kind: StorageKind
    target: str  # iscsi://host[:port]/iqn/lun, or a device path / datastore name
    persistent_reservations: bool | None = None  # SCSI-3 PR supported by the target
    preempt_and_abort: bool | None = None  # PREEMPT AND ABORT supported
    software: str | None = None  # e.g. "tgt", "guestfence", "LIO", a vendor name
    origin: Origin = field(default=Origin("?"), compare=False)


@dataclass(frozen=True)
class GuestCluster:
    name: str
    members: tuple[Guest, ...]
    os: Version | None = None  # the declared guest OS, if the members do not say
    fence_agents: tuple[str, ...] = ()
    storage: tuple[Storage, ...] = ()
    fence_virtd_mode: FenceVirtdMode | None = None
    key_file: str | None = None  # the fence_xvm key this cluster uses, if known
    origin: Origin = field(default=Origin("?"), compare=False)
    key_fingerprint: str | None = None  # the same key by fingerprint (guestfence keys)

    def member_os(self, member: Guest) -> Version | None:
        return member.os or self.os

    def hosts(self) -> tuple[str, ...]:
        """Hosts running at least one member, in first-seen order."""
        seen: dict[str, None] = {}
        for m in self.members:
            if m.host is not None:
                seen.setdefault(m.host)
        return tuple(seen)


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...] = ()
    clusters: tuple[GuestCluster, ...] = ()
    other_guests: tuple[Guest, ...] = ()
    sources: tuple[str, ...] = ()  # what was read, for the report header

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def guests_on(self, host: str) -> list[Guest]:
        """Every guest on ``host``: cluster members first, then the others."""
        members = [m for c in self.clusters for m in c.members if m.host == host]
        return members + [g for g in self.other_guests if g.host == host]


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one place of the topology."""

    rule: str  # stable id, e.g. "KVM-HOST-VERSION"
    severity: Severity
    seed: str  # the sentence of the seed document the rule comes from
    found: str  # what was found, with names
    fix: str  # what to change
    cluster: str | None = None
    hosts: tuple[str, ...] = ()
    guests: tuple[str, ...] = ()
    origin: Origin | None = None


@dataclass(frozen=True)
class ClusterImpact:
    """What losing one host does to one guest cluster."""

    cluster: str
    members_lost: tuple[str, ...]
    members_left: int
    members_total: int
    quorum_kept: bool  # a strict majority of the members (one vote each) survives


@dataclass(frozen=True)
class HostLossImpact:
    """What losing one host does: per cluster, to other guests, to the remaining hosts."""

    host: str
    clusters: tuple[ClusterImpact, ...]
    other_guests_lost: tuple[str, ...]
    # demand / capacity over the remaining hosts if every guest of the lost host is
    # restarted on them; None when a capacity or a demand is unknown
    memory_commit_after: float | None
    vcpu_commit_after: float | None


@dataclass(frozen=True)
class Report:
    topology: Topology
    findings: tuple[Finding, ...]
    impacts: tuple[HostLossImpact, ...]

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def supportable(self) -> bool:
        return self.errors == 0

    @property
    def exit_code(self) -> int:
        """0 supportable, 1 findings of severity error (2 is for unreadable input)."""
        return 0 if self.supportable else 1
