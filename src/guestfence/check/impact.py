"""What losing one host does: to each guest cluster's quorum, to other guests, to capacity.

Quorum is modelled as one vote per member and a strict majority: a cluster
keeps quorum when more than half of its members survive. That is what
corosync/cman do by default. Two-node clusters are the exception in practice:
they run with special quorum handling (cman ``two_node="1"``, votequorum
``two_node: 1``, or a quorum device / qdiskd). The topology does not say
whether that is configured, so a two-node cluster is reported as losing quorum
(1 of 2 is not a majority); the rules turn that into an info, not an error.

Commitment after a loss: every guest of the lost host is restarted on the
remaining hosts, so the demand is that of every guest placed on a declared
host, and the capacity that of every declared host but the lost one (all of
them: the model does not say which hosts a guest may move to). The ratio is
None when a demand or a remaining host's capacity is unknown, or when no
capacity remains.
"""

from __future__ import annotations

from dataclasses import dataclass

from guestfence.check.model import ClusterImpact, Host, HostLossImpact, Topology
from guestfence.check.rules_common import ClusterView, Layout, layout


def quorum_kept(left: int, total: int) -> bool:
    """A strict majority of one-vote members survives (two-node clusters: see the module)."""
    return 2 * left > total


def cluster_impact(view: ClusterView, host: str) -> ClusterImpact:
    """What losing ``host`` does to one cluster."""
    lost = tuple(m.name for m in view.by_host.get(host, ()))
    total = len(view.cluster.members)
    left = total - len(lost)
    return ClusterImpact(view.name, lost, left, total, quorum_kept(left, total))


@dataclass(frozen=True)
class _Pool:
    """Demand and capacity of one resource (memory or vCPUs) over all hosts."""

    demand: int | None  # None when some guest's demand is unknown
    capacity: int  # of the hosts whose capacity is known
    unknown: int  # hosts whose capacity is unknown

    def after_losing(self, capacity: int | None) -> float | None:
        """demand / capacity of the other hosts, for a lost host of ``capacity``."""
        if self.demand is None or self.unknown - (capacity is None) > 0:
            return None
        remaining = self.capacity - (capacity or 0)
        return self.demand / remaining if remaining > 0 else None


def _pool(lay: Layout, memory: bool) -> _Pool:
    demand: int | None = 0
    for name in lay.hosts:
        for g in lay.guests_on.get(name, ()):
            need = g.memory_mib if memory else g.vcpus
            demand = None if need is None or demand is None else demand + need
    caps = [h.memory_mib if memory else h.cpus for h in lay.hosts.values()]
    known = [c for c in caps if c is not None]
    return _Pool(demand, sum(known), len(caps) - len(known))


def host_loss(lay: Layout, host: Host, memory: _Pool, vcpus: _Pool) -> HostLossImpact:
    return HostLossImpact(
        host=host.name,
        clusters=tuple(cluster_impact(v, host.name) for v in lay.clusters_on.get(host.name, ())),
        other_guests_lost=tuple(g.name for g in lay.others_on.get(host.name, ())),
        memory_commit_after=memory.after_losing(host.memory_mib),
        vcpu_commit_after=vcpus.after_losing(host.cpus),
    )


def host_loss_impacts(topology: Topology) -> tuple[HostLossImpact, ...]:
    """One ``HostLossImpact`` per host, in topology order."""
    lay = layout(topology)
    memory, vcpus = _pool(lay, memory=True), _pool(lay, memory=False)
    return tuple(host_loss(lay, h, memory, vcpus) for h in topology.hosts)
