"""The seam between a location tracker and the daemon's tracked backend.

A tracker keeps a :class:`~guestfence.tracking.locations.LocationTable` (or a
static map) current from one source of truth and answers, for the tracked
backend, three questions: who decides for a guest (:meth:`Tracker.decide`),
which hosts can answer now (:meth:`Tracker.members`), and whether a departed
host was really fenced (:meth:`Tracker.confirm_fenced`).

The three trackers of the seed's three host modes:

``static``
    this host's own libvirt, checked against a host -> guests map from the config.
``cpg``
    a corosync host cluster: every guestfenced joins a CPG group and announces
    its guests; a departed host's guests are answered for only once the host
    cluster confirms the host was fenced.
``multi-libvirt``
    no host cluster: libvirt connections to every host, followed by lifecycle
    events; a guest is acted on through the connection of the host it runs on.

Lifecycle calls (:meth:`Tracker.start`, :meth:`Tracker.stop`) run on the
daemon's event loop; the queries are called from worker threads and must be
thread-safe and must not block on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from guestfence.tracking.locations import Decision

if TYPE_CHECKING:
    from guestfence.host.backends.libvirt import LibvirtBackend

Mode = Literal["static", "cpg", "multi-libvirt"]


@dataclass(frozen=True)
class GuestLocation:
    """One guest as the tracker sees it, for the admin view and the metrics."""

    name: str
    uuid: str
    host: str | None
    """The acting host, or None when nobody may act (gone, unknown, ambiguous)."""
    state: int
    """libvirt ``virDomainState`` as last announced (-1 when not known)."""
    decision: str
    """The decision's kind: ``owner``, ``migrating``, ``owner-gone``, ``ambiguous``."""


def decision_kind(decision: Decision) -> str:
    """The snapshot's word for a decision."""
    return {"Owner": "owner", "Migrating": "migrating", "OwnerGone": "owner-gone",
            "Ambiguous": "ambiguous", "Unknown": "unknown"}[type(decision).__name__]


@dataclass(frozen=True)
class TrackingSnapshot:
    mode: Mode
    me: str
    members: tuple[str, ...]
    """Hosts that can answer now (CPG members, reachable libvirt hosts, or just ``me``)."""
    guests: tuple[GuestLocation, ...]
    violations: int
    """Static mode: guests found where the map does not put them (cumulative count)."""
    departed_unfenced: tuple[str, ...] = ()
    """Hosts that left the membership and are not confirmed fenced yet."""


class Tracker(Protocol):
    mode: Mode
    me: str
    """This daemon's host name in the tracker's terms (member name, map key, hosts key)."""

    async def start(self) -> None:
        """Connect, join, take the first full inventory; raise BackendError on failure."""

    async def stop(self) -> None:
        """Leave and disconnect; idempotent."""

    def decide(self, target: str) -> Decision:
        """Where ``target`` (a name or UUID) runs, from the freshest knowledge."""

    def members(self) -> list[str]:
        """Hosts that can answer now."""

    def confirm_fenced(self, host: str) -> bool:
        """Whether ``host``, which left the membership, has been fenced since (blocking)."""

    def executor(self, host: str) -> LibvirtBackend | None:
        """The backend that carries out operations on ``host``, None if not from here."""

    def snapshot(self) -> TrackingSnapshot:
        """What the tracker knows now, for the admin view and the metrics."""
