"""Where guests run across hosts and live migrations: a pure core (:mod:`.locations`).

The trackers of the three host modes sit on it behind :mod:`.tracker`'s seam:
:mod:`.static` (a host -> guests map), :mod:`.hostcluster` (corosync CPG) and
:mod:`.multilibvirt` (libvirt connections to every host); :mod:`.factory` makes
the one a config asks for, and ``host/backends/tracked.py`` serves requests with it.
"""

from guestfence.tracking.locations import (
    Ambiguous,
    Decision,
    DomainState,
    Kind,
    LocationTable,
    Migrating,
    Migration,
    Owner,
    OwnerGone,
    StaticMap,
    Unknown,
    Violation,
    acting_host,
    canonical_uuid,
    from_libvirt,
    responder,
    role_of,
)

__all__ = [
    "Ambiguous",
    "Decision",
    "DomainState",
    "Kind",
    "LocationTable",
    "Migrating",
    "Migration",
    "Owner",
    "OwnerGone",
    "StaticMap",
    "Unknown",
    "Violation",
    "acting_host",
    "canonical_uuid",
    "from_libvirt",
    "responder",
    "role_of",
]
