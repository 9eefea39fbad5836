"""guestfenced's static map against the placement ``check`` sees.

In static mode (``backend = "static"`` in fence_virt.conf, tracking/static.py)
a guest is fenced only through the host the map gives it; a guest that runs
elsewhere (started on the wrong host, live-migrated) cannot be fenced at all:
its requests fail. ``guestfence check --fence-virt-conf FILE`` reads that map
and this rule compares it with the topology (file or discovery).

Decisions: guests are matched by name, case-insensitively (a topology has no
UUIDs; UUID entries of the map are not compared); host names match when equal
ignoring case, or when one is the short form of the other (discovery reports
``kvm1.example.com``, the map may say ``kvm1``). A mapped guest the topology
does not show is an info finding: it may simply be stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from guestfence.check.model import Finding, Guest, Origin, Topology
from guestfence.check.rules_common import Rule, names
from guestfence.tracking.locations import canonical_uuid


@dataclasses.dataclass(frozen=True)
class MappedTopology(Topology):
    """A topology together with guestfenced's static map (host -> guests) and its file."""

    static_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    static_map_source: str = ""


def with_static_map(topology: Topology, static_map: tuple[tuple[str, tuple[str, ...]], ...],
                    source: str) -> MappedTopology:
    fields = {f.name: getattr(topology, f.name) for f in dataclasses.fields(Topology)}
    return MappedTopology(**fields, static_map=static_map, static_map_source=source)


def _same_host(a: str, b: str) -> bool:
    a, b = a.casefold(), b.casefold()
    return a == b or a.split(".")[0] == b.split(".")[0]


def static_map_placement(topology: Topology) -> Iterator[Finding]:
    """Guests running on a host the static map does not give them."""
    if not isinstance(topology, MappedTopology) or not topology.static_map:
        return
    origin = Origin(topology.static_map_source)
    mapped: dict[str, str] = {}  # guest name (casefold) -> host
    for mapped_host, guests in topology.static_map:
        for g in guests:
            if canonical_uuid(g) is None:
                mapped[g.casefold()] = mapped_host
    seen: set[str] = set()
    every: list[Guest] = [m for c in topology.clusters for m in c.members]
    every += list(topology.other_guests)
    for guest in every:
        if guest.host is None:
            continue
        key = guest.name.casefold()
        seen.add(key)
        host: str | None = mapped.get(key)
        if host is not None and _same_host(host, guest.host):
            continue
        where = f"gives it to {host}" if host is not None else "does not list it"
        yield STATIC_MAP_PLACEMENT.finding(
            f"guest {guest.name} runs on {guest.host}, but the static map of "
            f"{topology.static_map_source} {where}: guestfenced answers fail for it",
            (f"move {guest.name} back to {host}, or " if host is not None else "")
            + f"map {guest.name} to {guest.host} in {topology.static_map_source} and restart "
            "guestfenced on both hosts (static mode does not follow live migration; use "
            "backend multi-libvirt or cpg if guests migrate)",
            hosts=(guest.host, *((host,) if host else ())), guests=(guest.name,),
            origin=origin)
    absent = sorted(g for g in mapped if g not in seen)
    if absent:
        yield STATIC_MAP_PLACEMENT.unknown(
            f"where {names(absent)} run: in the static map of {topology.static_map_source} "
            "but not in the topology", "start them on their mapped host, or drop them from "
            "the map", guests=absent, origin=origin)


STATIC_MAP_PLACEMENT = Rule(
    "STATIC-MAP-PLACEMENT", "error", static_map_placement,
    "Standalone mode where the host to guest mapping is hard coded and live migration of "
    "guests is not allowed")


def load_static_map(topology: Topology, path: str) -> MappedTopology:
    """The topology with the static map of guestfenced's fence_virt.conf at ``path``.

    ConfigError when the file cannot be read or its backend is not static."""
    from guestfence.errors import ConfigError
    from guestfence.host.config import load_config

    backend = load_config(path).backend
    if backend.name != "static":
        raise ConfigError(f"{path}: backend is {backend.name!r}; --fence-virt-conf needs "
                          'backend = "static" with a map { host = "guests"; } block')
    return with_static_map(topology, backend.static_map, path)
