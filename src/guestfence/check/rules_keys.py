"""Guest clusters sharing hosts, kept apart by guestfence's per-cluster keys.

The seed excludes independent guest clusters on the same hosts with
fence_xvm / fence_virt because fence_virtd has one key: every guest holding
it can fence (and list) every VM of the host. guestfenced accepts one key per
cluster, each bound to its own guests (the clusters block of fence_virt.conf),
so on a host where

* each of the clusters has its key stated (``key: {fingerprint: ...}`` or a
  key file) and the keys differ,
* the host's guestfenced binds that key to that cluster (``key_bindings``),
* and the binding's names/patterns match no member of another cluster,

one cluster cannot fence the other's guests, and sharing the host is reported
as supported (an info finding of SHARED-HOSTS-KEYS). Anything short of that
leaves SHARED-HOSTS-XVM's error in place, with the reason. A key known by
fingerprint on one side and only by file on the other cannot be compared and
counts as "not shown to differ".
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

from guestfence.check.model import Finding, Host, KeyBinding, Topology
from guestfence.check.rules_common import ClusterView, Layout, Rule, layout, names

SEED = (
    "Mixing multiple independent guest clusters on the same set of physical hosts is not "
    "supported at this time when using the fence_xvm/fence_xvmd or fence_virt/fence_virtd "
    "fence agents.")


def _same_key(a_fp: str | None, a_file: str | None, b_fp: str | None,
              b_file: str | None) -> bool | None:
    """True / False when the two keys can be compared, None when they cannot."""
    if a_fp is not None and b_fp is not None:
        return a_fp == b_fp
    if a_file is not None and b_file is not None:
        return a_file == b_file
    return None


def _binding_matches(binding: KeyBinding, guest: str) -> bool:
    return any(guest == g or fnmatch.fnmatchcase(guest, g) for g in binding.guests)


def _own_binding(view: ClusterView, host: Host) -> tuple[KeyBinding | None, str]:
    c = view.cluster
    if c.key_fingerprint is None and c.key_file is None:
        return None, f"the key of {c.name} is not stated (key: {{fingerprint: ...}})"
    if not host.key_bindings:
        return None, f"host {host.name}: guestfenced's key bindings are not stated"
    for b in host.key_bindings:
        same = _same_key(c.key_fingerprint, c.key_file, b.fingerprint, b.key_file)
        if b.cluster == c.name and same:
            return b, ""
    return None, f"host {host.name} binds no key of {c.name} matching its stated key"


def isolation_problems(lay: Layout, a: ClusterView, b: ClusterView,
                       hosts: Sequence[str]) -> list[str]:
    """Why A and B are not kept apart by their keys on ``hosts`` (empty: they are)."""
    problems: list[str] = []
    ca, cb = a.cluster, b.cluster
    same = _same_key(ca.key_fingerprint, ca.key_file, cb.key_fingerprint, cb.key_file)
    if same:
        problems.append(f"{ca.name} and {cb.name} use the same key")
    elif same is None and (ca.key_fingerprint or ca.key_file) and \
            (cb.key_fingerprint or cb.key_file):
        problems.append(f"the keys of {ca.name} and {cb.name} cannot be compared (state "
                        "both by fingerprint)")
    for name in hosts:
        host = lay.hosts.get(name)
        if host is None:
            continue
        for mine, other in ((a, b), (b, a)):
            binding, why = _own_binding(mine, host)
            if binding is None:
                problems.append(why)
                continue
            reach = [m.name for m in other.cluster.members if _binding_matches(binding, m.name)]
            if reach:
                problems.append(f"host {name}: the key of {mine.name} may also fence "
                                f"{names(reach, 4)} of {other.name}")
    return list(dict.fromkeys(problems))


def shared_pairs(lay: Layout) -> dict[tuple[int, int], list[str]]:
    """(cluster i, cluster j) with i < j, both fenced through a host daemon -> shared hosts."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for host, views in lay.clusters_on.items():
        xvm = [v for v in views if v.xvm]
        for i, a in enumerate(xvm):
            for b in xvm[i + 1:]:
                key = (min(a.index, b.index), max(a.index, b.index))
                pairs.setdefault(key, []).append(host)
    return pairs


def shared_hosts_keys(topology: Topology) -> Iterator[Finding]:
    """Clusters sharing hosts, each with its own key bound to its own guests: supported."""
    lay = layout(topology)
    for (i, j), hosts in sorted(shared_pairs(lay).items()):
        a, b = lay.clusters[i], lay.clusters[j]
        if isolation_problems(lay, a, b, hosts):
            continue  # SHARED-HOSTS-XVM reports it, with the reasons
        yield SHARED_HOSTS_KEYS.finding(
            f"clusters {a.name} and {b.name} share {names(hosts, 4)} and fence with "
            f"fence_xvm/fence_virt; supported with guestfenced: each has its own key, bound "
            f"to its own guests on every shared host, so neither can fence or list the "
            f"other's guests (fence_virtd, with one key per host, cannot do this)",
            "keep each cluster's key bound to its own guests; rotate keys with 'guestfence "
            "keys rotate' and 'guestfence keys retire'",
            cluster=a.name, hosts=hosts, origin=a.cluster.origin)


SHARED_HOSTS_KEYS = Rule("SHARED-HOSTS-KEYS", "info", shared_hosts_keys, SEED)
