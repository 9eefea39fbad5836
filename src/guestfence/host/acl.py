"""The ``groups`` access map of fence_virt.conf.

No group (or only empty ones) means everything is allowed. Otherwise a
requester may act on a target only if one group lists the requester (its IP
address, vsock CID, or for serial requests the VM's UUID) and the target (by
the exact name or UUID the request used). Comparisons ignore case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from guestfence.host.config import Group


@dataclass(frozen=True)
class _Group:
    name: str
    requesters: frozenset[str]
    targets: frozenset[str]


class AccessMap:
    def __init__(self, groups: Iterable[Group]) -> None:
        self._groups = tuple(
            _Group(
                g.name,
                frozenset(x.lower() for x in (*g.ips, *g.uuids)),
                frozenset(u.lower() for u in g.uuids),
            )
            for g in groups
            if g.ips or g.uuids
        )

    @property
    def enabled(self) -> bool:
        return bool(self._groups)

    def allows(self, requester: str, target: str) -> bool:
        if not self._groups:
            return True
        who, what = requester.lower(), target.lower()
        return any(who in g.requesters and what in g.targets for g in self._groups)

    def shows(self, requester: str, name: str, uuid: str) -> bool:
        """Host lists show a VM if the requester may fence it by name or by UUID."""
        return self.allows(requester, name) or self.allows(requester, uuid)
