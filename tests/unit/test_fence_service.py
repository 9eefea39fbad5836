"""FenceService safety rules found in review: one lock per domain, errors always answered."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from guestfence.errors import BackendError
from guestfence.host.acl import AccessMap
from guestfence.host.server import FenceService, Request
from guestfence.virt.wire import HashType, HostRecord, Op, Result
from tests.unit.day2_fakes import Sink

UUID = "11111111-1111-1111-1111-000000000001"


@dataclass
class Info:
    name: str
    uuid: str
    state: int = 1


class SlowBackend:
    """Records whether two operations ever ran at the same time."""

    name = "fake"

    def __init__(self, host_list_error: bool = False) -> None:
        self.active = 0
        self.overlap = False
        self.guard = threading.Lock()
        self.host_list_error = host_list_error

    def lookup(self, target: str) -> Info | None:
        return Info("vm1", UUID) if target.lower() in ("vm1", UUID) else None

    def owns(self, target: str) -> bool:
        return self.lookup(target) is not None

    def execute(self, op: int, target: str) -> int:
        with self.guard:
            self.active += 1
            self.overlap |= self.active > 1
        time.sleep(0.05)
        with self.guard:
            self.active -= 1
        return Result.SUCCESS

    def host_list(self) -> list[HostRecord]:
        if self.host_list_error:
            raise BackendError("libvirtd went away")
        return []

    def close(self) -> None:
        pass


def service(backend: SlowBackend) -> FenceService:
    return FenceService(backend, AccessMap([]), b"", HashType.NONE, HashType.NONE)


def test_name_and_uuid_of_one_domain_share_one_lock() -> None:
    backend = SlowBackend()

    async def main() -> None:
        svc = service(backend)
        by_name = Request("tcp", "g", Op.OFF, "vm1", 1)
        by_uuid = Request("tcp", "g", Op.ON, UUID.upper(), 2)
        await asyncio.gather(svc.serve(by_name, Sink(), None, authenticate=False),
                             svc.serve(by_uuid, Sink(), None, authenticate=False))

    asyncio.run(main())
    assert not backend.overlap


def test_backend_error_during_host_list_is_a_failure_answer() -> None:
    sink = Sink()
    svc = service(SlowBackend(host_list_error=True))
    asyncio.run(svc.serve(Request("tcp", "g", Op.HOSTLIST, "", 1), sink, None,
                          authenticate=False))
    assert sink.sent == bytes([Result.FAIL])
    assert svc.metrics["requests_fail"] == 1
