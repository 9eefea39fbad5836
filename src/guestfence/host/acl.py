"""The ``groups`` access map of fence_virt.conf.

No group means everything is allowed (a groups block without any usable
group is refused by the config loader). Otherwise a requester may act on a
target only if one group lists the requester (its IP address, vsock CID, or
for serial requests the VM's UUID) and the target (by the exact name or UUID
the request used). UUIDs and addresses are compared without regard to case;
domain names exactly, because libvirt names are case-sensitive (the C daemon
folds case, so a group naming "web1" also let a requester fence "WEB1").
"""

from __future__ import annotations

import uuid as uuidlib
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
                frozenset(_key(x) for x in (*g.ips, *g.uuids)),
                frozenset(_key(u) for u in g.uuids),
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
        who, what = _key(requester), _key(target)
        return any(who in g.requesters and what in g.targets for g in self._groups)

    def shows(self, requester: str, name: str, uuid: str) -> bool:
        """Host lists show a VM if the requester may fence it by name or by UUID."""
        return self.allows(requester, name) or self.allows(requester, uuid)


def _key(text: str) -> str:
    """UUIDs and addresses fold case; anything else (a domain name) is kept exact."""
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        pass
    if ":" in text or text.replace(".", "").isdigit():  # an IP address or a vsock CID
        return text.lower()
    return text
