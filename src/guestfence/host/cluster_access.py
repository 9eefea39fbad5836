"""May this guest cluster fence (or see) that guest? The clusters block's answer.

The key that verified a request names the cluster (host/keyring.py). On the
serial path there is no key: the requester is the guest whose socket the
request came on, identified by the hypervisor, so its cluster is the one
whose binding matches that guest (exactly one; none or several: refused).

The checks call the backend (lookups, the domain metadata for tags) and so
block: FenceService runs them in a worker thread. With no clusters block
everything here allows everything, and the ``groups`` map alone decides, as
in fence_virtd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from guestfence.errors import GuestfenceError
from guestfence.host.clusters import ClusterConfig, GuestBinding, clusters_of
from guestfence.virt.wire import HostRecord

log = logging.getLogger("guestfenced")


@dataclass(frozen=True)
class GuestIdentity:
    name: str
    uuid: str
    tag: str | None


class ClusterAccess:
    def __init__(self, clusters: Sequence[ClusterConfig] = ()) -> None:
        self.clusters = tuple(clusters)
        self._bindings: dict[str, GuestBinding] = {c.name: c.binding for c in clusters}
        self.uses_tags = any(c.binding.uses_tags for c in clusters)
        self._said_no_tags = False

    @property
    def enabled(self) -> bool:
        return bool(self.clusters)

    def identity(self, backend: Any, target: str) -> GuestIdentity | None:
        """Name, UUID and cluster tag of a domain named by name or UUID (None: unknown)."""
        try:
            info = backend.lookup(target)
        except GuestfenceError as e:
            log.error("lookup of %r for the cluster check failed: %s", target, e)
            return None
        if info is None:
            return None
        tag = self._tag(backend, info.uuid) if self.uses_tags else None
        return GuestIdentity(info.name, info.uuid, tag)

    def _no_tags(self, backend: Any) -> None:
        """Tag bindings on a backend that reads no domain metadata match nothing: say so once
        (fail closed, but not silently)."""
        if not self._said_no_tags:
            self._said_no_tags = True
            log.warning("the %s backend cannot read the guestfence cluster tag of domains: "
                        "tag bindings in the clusters block match no guest (bind those guests "
                        "by name, UUID or pattern)", getattr(backend, "name", "?"))

    def _tag(self, backend: Any, uuid: str) -> str | None:
        read = getattr(backend, "cluster_tag", None)
        if read is None:
            self._no_tags(backend)
            return None
        try:
            tag = read(uuid)
        except GuestfenceError as e:
            log.error("reading the cluster tag of %s failed: %s", uuid, e)
            return None
        return tag if isinstance(tag, str) else None

    def permitted(self, backend: Any, cluster: str | None, target: str) -> GuestIdentity | None:
        """The guest ``target`` names if ``cluster`` may act on it, else None. The caller
        acts on this guest's UUID, not on ``target`` again: a name looked up twice may
        name another domain the second time (renamed, or one of two same-named guests
        on different hosts changing state in between). Blocking (backend calls)."""
        binding = self._bindings.get(cluster) if cluster is not None else None
        if binding is None:
            return None
        guest = self.identity(backend, target)
        if guest is None or not binding.matches(guest.name, guest.uuid, guest.tag):
            return None
        return guest

    def visible(self, backend: Any, cluster: str | None,
                records: Iterable[HostRecord]) -> list[HostRecord]:
        """The part of a host list ``cluster`` may see: its own guests only. Blocking."""
        records = list(records)
        if not self.enabled:
            return records
        binding = self._bindings.get(cluster) if cluster is not None else None
        if binding is None:
            return []
        tags: dict[str, str] = {}
        if binding.uses_tags:
            read_all = getattr(backend, "cluster_tags", None)
            if read_all is None:
                self._no_tags(backend)
            try:
                tags = dict(read_all()) if read_all is not None else {}
            except GuestfenceError as e:
                log.error("reading cluster tags failed: %s", e)
        return [r for r in records
                if binding.matches(r.name, r.uuid, tags.get(r.uuid.lower()))]

    def requester_cluster(self, backend: Any, requester_uuid: str) -> str | None:
        """Serial path: the one cluster the requesting guest belongs to. Blocking."""
        if not self.enabled:
            return None
        guest = self.identity(backend, requester_uuid)
        if guest is None:
            return None
        found = clusters_of(self.clusters, guest.name, guest.uuid, guest.tag)
        if len(found) > 1:
            log.error("guest %s is bound to several clusters (%s): its requests are refused",
                      guest.name, ", ".join(found))
            return None
        return found[0] if found else None
