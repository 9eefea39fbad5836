"""Rules on placement: which guests share a host, and what a host's loss does.

"The same set of physical hosts" (independent clusters, non-clustered
guests) is read as "sharing at least one host": one shared host is enough for
one cluster's fencing to reach the other's guests.

Capacity rules (overcommit) are best practice, not support statements: when
a host's capacity is unknown they stay silent (the host-loss analysis then
shows None). They look at hosts that run at least one cluster member.
"""

from __future__ import annotations

from collections.abc import Iterator

from guestfence.check.impact import cluster_impact
from guestfence.check.model import Finding, Topology
from guestfence.check.rules_common import ClusterView, Layout, Rule, layout, names, plural
from guestfence.check.rules_keys import isolation_problems

QUORUM_FIX = ("configure two_node (cman `two_node=\"1\"`, corosync votequorum `two_node: 1`) "
              "or a quorum device (qdevice / qdiskd)")


def single_host(topology: Topology) -> Iterator[Finding]:
    """A guest cluster does not run all its members on one host."""
    for v in layout(topology).clusters:
        if v.single_host():
            (host,) = v.hosts
            yield SINGLE_HOST.finding(
                f"all {plural(len(v.cluster.members), 'member')} of cluster {v.name} run on "
                f"host {host}: losing it loses the cluster (prototype/development only)",
                f"move members of {v.name} to other hosts, one member per host",
                cluster=v.name, hosts=(host,),
                guests=tuple(m.name for m in v.cluster.members if m.host == host),
                origin=v.cluster.origin)


SINGLE_HOST = Rule(
    "SINGLE-HOST", "error", single_host,
    "It is not supported to run all guests in a guest cluster on a single physical host as "
    "this provides no high availability in the event of a single host failure. This "
    "configuration can be used for prototype or development purposes, however.")


def _lost(v: ClusterView) -> list[tuple[str, int]]:
    """Hosts whose loss leaves no majority: (host, members it takes)."""
    out = []
    for host in v.by_host:
        impact = cluster_impact(v, host)
        if not impact.quorum_kept:
            out.append((host, len(impact.members_lost)))
    return out


def host_loss_quorum(topology: Topology) -> Iterator[Finding]:
    """Losing any one host leaves a majority of every cluster of three or more members."""
    for v in layout(topology).clusters:
        total = len(v.cluster.members)
        if total < 3 or v.single_host():
            continue
        lost = _lost(v)
        if lost:
            yield HOST_LOSS_QUORUM.finding(
                f"cluster {v.name} loses quorum if it loses "
                + names((f"{h} ({n} of {total} members)" for h, n in lost), last="or"),
                f"spread the members of {v.name} so that no host runs half of them or more "
                "(one member per host is best), or add a quorum device",
                cluster=v.name, hosts=(h for h, _ in lost),
                guests=(m.name for h, _ in lost for m in v.by_host[h]), origin=v.cluster.origin)


HOST_LOSS_QUORUM = Rule(
    "HOST-LOSS-QUORUM", "error", host_loss_quorum,
    "If you have a 2-to-1 mapping (two guests in a single cluster per physical host) this "
    "means a single host failure results in two guest failures.")


def two_node_quorum(topology: Topology) -> Iterator[Finding]:
    """A two-node cluster survives a host loss only with two_node or a quorum device."""
    for v in layout(topology).clusters:
        if len(v.cluster.members) == 2 and not v.single_host() and _lost(v):
            yield TWO_NODE_QUORUM.finding(
                f"cluster {v.name} has two members: after a host loss 1 of 2 votes is left, "
                "which is no majority",
                f"make sure {v.name} is set up for two nodes: {QUORUM_FIX}",
                cluster=v.name, origin=v.cluster.origin)


TWO_NODE_QUORUM = Rule(
    "TWO-NODE-QUORUM", "info", two_node_quorum,
    "It is not necessary to have a single host per guest, but this configuration does provide "
    "the highest level of availability since a host failure only affects a single node in the "
    "cluster.")


def one_to_one(topology: Topology) -> Iterator[Finding]:
    """Hosts run one member of a cluster each (more, with quorum kept: a warning)."""
    for v in layout(topology).clusters:
        total = len(v.cluster.members)
        crowded = [(h, ms) for h, ms in v.by_host.items() if len(ms) > 1]
        if v.single_host() or not crowded or _lost(v):
            continue  # SINGLE-HOST or HOST-LOSS-QUORUM say it more strongly
        yield ONE_TO_ONE.finding(
            f"cluster {v.name}: "
            + names(f"host {h} runs {len(ms)} of its {total} members ({names(m.name for m in ms)})"
                    for h, ms in crowded)
            + f"; one host failure takes {max(len(ms) for _, ms in crowded)} members at once",
            f"move members of {v.name} so that each host runs one of them",
            cluster=v.name, hosts=(h for h, _ in crowded),
            guests=(m.name for _, ms in crowded for m in ms), origin=v.cluster.origin)


ONE_TO_ONE = Rule(
    "ONE-TO-ONE", "warning", one_to_one,
    "If you have a 2-to-1 mapping (two guests in a single cluster per physical host) this "
    "means a single host failure results in two guest failures. Therefore it is advisable to "
    "get as close to a 1-to-1 mapping as possible.")


def _keys(a: ClusterView, others: list[ClusterView]) -> str:
    ka, kb = a.cluster.key_file, {b.cluster.key_file for b in others}
    if ka is not None and ka in kb:
        return f"{ka} is used by both sides: each can fence the other's guests"
    if ka is not None and None not in kb:
        return "they use separate keys"
    return "key files are not all stated: with one shared key each can fence the other's guests"


def shared_hosts_xvm(topology: Topology) -> Iterator[Finding]:
    """Independent clusters fenced through fence_virtd/fence_xvmd do not share hosts.

    One finding per cluster involved (so each cluster's report shows it), naming
    the clusters it shares hosts with and on which hosts.
    """
    lay = layout(topology)
    shared: dict[int, dict[int, list[str]]] = {}  # cluster -> other cluster -> hosts
    for host, views in lay.clusters_on.items():
        xvm = [v for v in views if v.xvm]
        for a in xvm if len(xvm) > 1 else ():
            for b in xvm:
                if b is not a:
                    shared.setdefault(a.index, {}).setdefault(b.index, []).append(host)
    for i, all_peers in sorted(shared.items()):
        a = lay.clusters[i]
        # guestfence's per-cluster keys lift the limit (rules_keys.py: SHARED-HOSTS-KEYS)
        problems = {j: isolation_problems(lay, a, lay.clusters[j], hosts)
                    for j, hosts in all_peers.items()}
        peers = {j: hosts for j, hosts in all_peers.items() if problems[j]}
        if not peers:
            continue
        others = [lay.clusters[j] for j in sorted(peers)]
        stated = any(h.key_bindings for h in lay.hosts.values())
        why = names(p for j in sorted(peers) for p in problems[j]) if stated else \
            _keys(a, others)
        yield SHARED_HOSTS_XVM.finding(
            f"cluster {a.name} shares hosts with "
            + names(f"{b.name} (on {names(peers[b.index], 4)})" for b in others)
            + f", and all of them fence with fence_xvm/fence_virt; {why}",
            f"run {a.name} on hosts of its own, or fence it and its neighbours with fence_scsi "
            "on iSCSI storage. If they must share hosts, give each cluster its own key bound "
            "to its own guests in guestfenced's clusters block (state it with key: and "
            "key_bindings:, docs/topology.md), or run one fence_virtd instance per cluster, "
            "each with its own key_file and port, and a groups map: with one shared key, one "
            "cluster can fence the other's guests",
            cluster=a.name, hosts=dict.fromkeys(h for hs in peers.values() for h in hs),
            origin=a.cluster.origin)


SHARED_HOSTS_XVM = Rule(
    "SHARED-HOSTS-XVM", "error", shared_hosts_xvm,
    "Mixing multiple independent guest clusters on the same set of physical hosts is not "
    "supported at this time when using the fence_xvm/fence_xvmd or fence_virt/fence_virtd "
    "fence agents.")


def nonclustered_guests_fenced(topology: Topology) -> Iterator[Finding]:
    """Other guests on a host-cluster host die with it when it is fenced."""
    lay = layout(topology)
    for h in lay.member_hosts():
        others = lay.others_on.get(h.name, ())
        if h.host_cluster is not None and others:
            yield NONCLUSTERED_GUESTS_FENCED.finding(
                f"host {h.name} is in host cluster {h.host_cluster} and also runs "
                f"non-clustered {names(g.name for g in others)}, which would be terminated "
                f"when {h.name} is fenced",
                f"accept that, or move {names(g.name for g in others)} to a host outside host "
                f"cluster {h.host_cluster}",
                hosts=(h.name,), guests=(g.name for g in others), origin=others[0].origin)


NONCLUSTERED_GUESTS_FENCED = Rule(
    "NONCLUSTERED-GUESTS-FENCED", "warning", nonclustered_guests_fenced,
    "Running non-clustered guests on the same set of physical hosts as a guest cluster is "
    "supported, but since hosts will physically fence each other if a host cluster is "
    "configured, these other guests will also be terminated during a host fencing operation.")


OVERCOMMIT_SEED = (
    "Host hardware should be provisioned such that memory or virtual CPU overcommit is "
    "avoided. Overcommitting memory or virtual CPU will result in performance degradation. If "
    "the performance degradation becomes critical the cluster heartbeat could be affected, "
    "which may result in cluster failure.")


def _overcommit(lay: Layout, rule: Rule, memory: bool) -> Iterator[Finding]:
    unit, what = ("MiB", "memory") if memory else ("vCPUs", "vCPUs")
    for h in lay.member_hosts():
        capacity = h.memory_mib if memory else h.cpus
        if capacity is None:
            continue
        guests = lay.guests_on.get(h.name, ())
        needs = [g.memory_mib if memory else g.vcpus for g in guests]
        demand = sum(n for n in needs if n is not None)
        if demand > capacity:
            unknown = needs.count(None)
            more = f" (and {plural(unknown, 'guest')} of unknown size)" if unknown else ""
            yield rule.finding(
                f"host {h.name} has {capacity} {unit} and runs guests with {demand} {unit}"
                f"{more}: {what} overcommitted {demand / capacity:.2f}:1",
                f"move guests off {h.name} or give it more {what}", hosts=(h.name,),
                guests=(g.name for g in guests), origin=h.origin)


def overcommit_memory(topology: Topology) -> Iterator[Finding]:
    """The guests of a host fit in its memory."""
    return _overcommit(layout(topology), OVERCOMMIT_MEMORY, memory=True)


OVERCOMMIT_MEMORY = Rule("OVERCOMMIT-MEMORY", "warning", overcommit_memory, OVERCOMMIT_SEED)


def overcommit_vcpu(topology: Topology) -> Iterator[Finding]:
    """The guests of a host have no more vCPUs than it has CPUs."""
    return _overcommit(layout(topology), OVERCOMMIT_VCPU, memory=False)


OVERCOMMIT_VCPU = Rule("OVERCOMMIT-VCPU", "warning", overcommit_vcpu, OVERCOMMIT_SEED)

