"""Fakes shared by unit tests (admin socket, metrics, JSON logs, fence service, keys)."""

from __future__ import annotations

from dataclasses import dataclass

from guestfence.host.acl import AccessMap
from guestfence.host.server import FenceService
from guestfence.tracking.tracker import GuestLocation, TrackingSnapshot
from guestfence.virt.wire import HashType, HostRecord, Result

KEY = bytes(range(256)) * 16  # 4096 bytes: recognisable if it ever leaked into a log


@dataclass
class Info:
    name: str
    uuid: str
    state: int = 1


class FakeBackend:
    """Two running guests; every operation succeeds at once."""

    name = "fake"
    uris = ("test:///fake",)

    def __init__(self, healthy: bool = True) -> None:
        self._healthy = healthy

    def lookup(self, target: str) -> Info | None:
        return Info(target, "11111111-1111-1111-1111-000000000001")

    def owns(self, target: str) -> bool:
        return True

    def execute(self, op: int, target: str) -> int:
        return Result.SUCCESS

    def host_list(self) -> list[HostRecord]:
        return [HostRecord("vm1", "11111111-1111-1111-1111-000000000001", 1),
                HostRecord("vm2", "11111111-1111-1111-1111-000000000002", 5)]

    def healthy(self) -> bool:
        return self._healthy

    def close(self) -> None:
        pass


class TrackingBackend(FakeBackend):
    """A backend that tracks guest locations (the TrackedBackend's snapshot())."""

    name = "tracked"

    def snapshot(self) -> TrackingSnapshot:
        return TrackingSnapshot(
            mode="cpg", me="hostA", members=("hostA", "hostB"),
            guests=(GuestLocation("vm1", "u1", "hostA", 1, "owner"),
                    GuestLocation("vm2", "u2", "hostB", 1, "owner"),
                    GuestLocation("vm3", "u3", None, 1, "owner-gone")),
            violations=2, departed_unfenced=("hostC",))


class Sink:
    """The requester's connection as FenceService sees it: what it was sent."""

    def __init__(self) -> None:
        self.sent = b""

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        raise AssertionError("no authentication in these tests")

    async def write(self, data: bytes) -> None:
        self.sent += data

    def peer_gone(self) -> bool:
        return False


def make_service(backend: FakeBackend | None = None, key: bytes = b"") -> FenceService:
    return FenceService(backend or FakeBackend(), AccessMap([]), key, HashType.NONE,
                        HashType.NONE)
