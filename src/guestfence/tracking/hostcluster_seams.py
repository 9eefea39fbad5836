"""The seams of the host-cluster tracker: what it needs of CPG, libvirt and quorum.

Each has a real implementation (:class:`~guestfence.tracking.cpg.CpgMember`,
:class:`~guestfence.tracking.localdomains.LocalDomains`,
:class:`~guestfence.tracking.quorum.QuorumWatch`) and a fake in the unit tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from guestfence.tracking.cpg import CpgMember, OnConfchg, OnDeliver, OnRing
from guestfence.tracking.locations import DomainState, Kind
from guestfence.tracking.quorum import QuorumGate


class GroupTransport(Protocol):
    """What the tracker needs of a CPG member (a fake one in the unit tests)."""

    pid: int

    @property
    def nodeid(self) -> int: ...

    async def start(self) -> None: ...

    def send(self, payload: bytes) -> None: ...

    async def stop(self) -> None: ...


TransportFactory = Callable[[OnDeliver, OnConfchg, Callable[[], None], Callable[[], None]],
                            GroupTransport]


class DomainSource(Protocol):
    """This host's domains (LocalDomains, or a fake in the unit tests)."""

    generation: int

    async def start(self, on_event: Callable[[str, str, Kind, str], None],
                    on_lost: Callable[[], None]) -> None: ...

    def listing(self) -> tuple[int, list[DomainState]]: ...

    def close(self) -> None: ...


class QuorumSource(Protocol):
    """corosync's quorum for this host (QuorumWatch, or a fake in the unit tests)."""

    gate: QuorumGate

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def cpg_transport(group: str, on_ring: OnRing = lambda _seq, _nodes: None
                  ) -> TransportFactory:
    def make(on_deliver: OnDeliver, on_confchg: OnConfchg, on_connected: Callable[[], None],
             on_disconnected: Callable[[], None]) -> GroupTransport:
        return CpgMember(group, on_deliver, on_confchg, on_connected, on_disconnected,
                         on_ring)
    return make
