"""What every rule shares: the ``Rule`` record, an index of the topology, small helpers.

The index (``Layout``) is built once per topology, in one pass over hosts and
guests, so that no rule loops over hosts × guests. ``layout(topology)`` keeps
the last one it built and returns it again for the same topology object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from guestfence.check.model import (
    Finding,
    Guest,
    GuestCluster,
    Host,
    HypervisorKind,
    Origin,
    Severity,
    Topology,
    Version,
)

XVM_AGENTS: Final = frozenset({"fence_xvm", "fence_virt"})

PLATFORM_NAMES: Final[dict[HypervisorKind, str]] = {
    "kvm": "KVM", "xen": "Xen", "vmware": "VMware", "rhev": "RHEV", "hyperv": "Hyper-V",
}


@dataclass(frozen=True)
class Rule:
    """One support statement of the seed, checked by ``check``."""

    id: str  # stable, UPPER-KEBAB
    severity: Severity  # of a violation; "could not check" findings are always info
    check: Callable[[Topology], Iterable[Finding]]
    seed: str  # the sentence of the seed document the rule comes from

    def finding(self, found: str, fix: str, *, cluster: str | None = None,
                hosts: Iterable[str] = (), guests: Iterable[str] = (),
                origin: Origin | None = None) -> Finding:
        return Finding(self.id, self.severity, self.seed, found, fix, cluster,
                       tuple(hosts), tuple(guests), origin)

    def unknown(self, what: str, fix: str, *, cluster: str | None = None,
                hosts: Iterable[str] = (), guests: Iterable[str] = (),
                origin: Origin | None = None) -> Finding:
        """An info finding: the rule needs ``what`` and the topology does not say."""
        return Finding(self.id, "info", self.seed, f"could not check {what}", fix, cluster,
                       tuple(hosts), tuple(guests), origin)


@dataclass(frozen=True)
class ClusterView:
    """A guest cluster with its placement worked out."""

    cluster: GuestCluster
    index: int  # position in topology.clusters
    by_host: dict[str, tuple[Guest, ...]]  # members per host, hosts in first-seen order
    bare_metal: tuple[Guest, ...]
    kinds: tuple[HypervisorKind, ...]  # known hypervisors under the members, first-seen

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self.by_host)

    def uses(self, agents: Iterable[str]) -> bool:
        return any(a in self.cluster.fence_agents for a in agents)

    @property
    def xvm(self) -> bool:
        """Fenced through a host daemon: fence_xvm or fence_virt."""
        return self.uses(XVM_AGENTS)

    @property
    def scsi(self) -> bool:
        return "fence_scsi" in self.cluster.fence_agents

    def single_host(self) -> bool:
        """Every member is a guest of one and the same host."""
        return len(self.by_host) == 1 and not self.bare_metal


@dataclass(frozen=True)
class Layout:
    topology: Topology
    hosts: dict[str, Host]
    clusters: tuple[ClusterView, ...]
    clusters_on: dict[str, tuple[ClusterView, ...]]  # host -> clusters with a member there
    others_on: dict[str, tuple[Guest, ...]]  # host -> non-clustered guests
    guests_on: dict[str, tuple[Guest, ...]]  # host -> every guest (members first)

    def kind(self, host: str | None) -> HypervisorKind | None:
        h = self.hosts.get(host) if host is not None else None
        return h.hypervisor if h is not None else None

    def member_hosts(self) -> list[Host]:
        """Hosts that run at least one cluster member, in topology order."""
        return [h for h in self.topology.hosts if h.name in self.clusters_on]

    def hosts_of(self, view: ClusterView, kind: HypervisorKind) -> list[Host]:
        """The hosts of ``kind`` under a cluster, in first-seen order."""
        found = (self.hosts.get(name) for name in view.by_host)
        return [h for h in found if h is not None and h.hypervisor == kind]

    def members_of(self, view: ClusterView, kind: HypervisorKind) -> list[Guest]:
        return [m for h in self.hosts_of(view, kind) for m in view.by_host[h.name]]


def _build(topology: Topology) -> Layout:
    hosts: dict[str, Host] = {}
    for h in topology.hosts:
        hosts.setdefault(h.name, h)
    views: list[ClusterView] = []
    clusters_on: dict[str, list[ClusterView]] = {}
    members_on: dict[str, list[Guest]] = {}
    for i, c in enumerate(topology.clusters):
        by_host: dict[str, list[Guest]] = {}
        for m in c.members:
            if m.host is not None:
                by_host.setdefault(m.host, []).append(m)
                members_on.setdefault(m.host, []).append(m)
        kinds: dict[HypervisorKind, None] = {}
        for name in by_host:
            kind = hosts[name].hypervisor if name in hosts else None
            if kind is not None:
                kinds.setdefault(kind)
        view = ClusterView(c, i, {k: tuple(v) for k, v in by_host.items()},
                           tuple(m for m in c.members if m.host is None), tuple(kinds))
        views.append(view)
        for name in by_host:
            clusters_on.setdefault(name, []).append(view)
    others_on: dict[str, list[Guest]] = {}
    for g in topology.other_guests:
        if g.host is not None:
            others_on.setdefault(g.host, []).append(g)
    guests_on = {name: tuple(members_on.get(name, ())) + tuple(others_on.get(name, ()))
                 for name in members_on.keys() | others_on.keys()}
    return Layout(topology, hosts, tuple(views),
                  {k: tuple(v) for k, v in clusters_on.items()},
                  {k: tuple(v) for k, v in others_on.items()}, guests_on)


_cache: list[tuple[Topology, Layout]] = []
_cache_lock = threading.Lock()


def layout(topology: Topology) -> Layout:
    """The index of ``topology``; built once, reused by every rule of one run."""
    with _cache_lock:
        if _cache and _cache[0][0] is topology:
            return _cache[0][1]
    built = _build(topology)
    with _cache_lock:
        _cache[:] = [(topology, built)]
    return built


# ------------------------------------------------------------------ helpers


def names(items: Iterable[str], limit: int = 8, last: str = "and") -> str:
    """'a, b and c' (or 'a, b or c'); long lists are cut: 'a, b, ... and 12 more'."""
    xs = list(items)
    if len(xs) > limit:
        return ", ".join(xs[:limit]) + f" and {len(xs) - limit} more"
    if len(xs) <= 1:
        return "".join(xs)
    return ", ".join(xs[:-1]) + f" {last} " + xs[-1]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def rhel_at_least(version: Version, floors: Sequence[tuple[int, int]]) -> bool:
    """RHEL at or above the floor of its major; majors newer than every floor count.

    ``floors`` such as ((5, 6), (6, 1)) read "RHEL 5.6+ or 6.1+". A major below
    every floor (RHEL 4) or between floors without one of its own fails.
    """
    if version.product != "RHEL":
        return False
    if version.major > max(major for major, _ in floors):
        return True
    return any(version.major == major and version.at_least(major, minor)
               for major, minor in floors)


def floors_text(floors: Sequence[tuple[int, int]]) -> str:
    return "RHEL " + " or ".join(f"{a}.{b}+" for a, b in floors)


def host_clusters_of(hosts: Iterable[Host]) -> tuple[list[str], dict[str, list[str]]]:
    """(hosts in no host cluster, {host cluster: its hosts}) for the given hosts."""
    missing: list[str] = []
    groups: dict[str, list[str]] = {}
    for h in hosts:
        if h.host_cluster is None:
            missing.append(h.name)
        else:
            groups.setdefault(h.host_cluster, []).append(h.name)
    return missing, groups
