"""CpgMember's asyncio glue over a fake libcpg handle: ordering, TRY_AGAIN, reconnection."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, ClassVar

import pytest

from guestfence.tracking import cpg


class FakeHandle:
    """Stands in for CpgHandle: a socketpair end as the fd, scripted return codes."""

    reachable = True
    opened: ClassVar[list[FakeHandle]] = []
    try_again = 0  # how many mcast calls answer CS_ERR_TRY_AGAIN first

    def __init__(self, group: str, on_deliver: Any, on_confchg: Any) -> None:
        self.group, self.on_deliver, self.on_confchg = group, on_deliver, on_confchg
        self.ours, self.theirs = socket.socketpair()
        self.fd = self.ours.fileno()
        self.nodeid = 7
        self.sent: list[bytes] = []
        self.dispatch_rc = cpg.CS_OK
        self.finalized = self.left = False

    def open(self) -> None:
        if not FakeHandle.reachable:
            raise cpg.CorosyncUnreachable(cpg.CS_ERR_LIBRARY)
        FakeHandle.opened.append(self)

    def join(self) -> None:
        pass

    def leave(self) -> None:
        self.left = True

    def mcast(self, payload: bytes) -> int:
        if FakeHandle.try_again > 0:
            FakeHandle.try_again -= 1
            return cpg.CS_ERR_TRY_AGAIN
        self.sent.append(payload)
        return cpg.CS_OK

    def dispatch(self) -> int:
        self.ours.recv(100)
        return self.dispatch_rc

    def membership(self) -> list[cpg.Address]:
        return [cpg.Address(7, 1)]

    def finalize(self) -> None:
        self.finalized = True
        self.ours.close()
        self.theirs.close()


@pytest.fixture(autouse=True)
def fake_libcpg(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHandle.reachable, FakeHandle.opened, FakeHandle.try_again = True, [], 0
    monkeypatch.setattr(cpg, "CpgHandle", FakeHandle)
    monkeypatch.setattr(cpg.CpgMember, "RECONNECT_MIN", 0.01)
    monkeypatch.setattr(cpg.CpgMember, "RECONNECT_MAX", 0.04)


async def until(cond: Any, timeout: float = 2.0) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(wait(), timeout)


def test_messages_keep_their_order_through_try_again() -> None:
    async def body() -> None:
        member = cpg.CpgMember("g", lambda *a: None, lambda *a: None)
        await member.start()
        FakeHandle.try_again = 3
        for i in range(5):
            member.send(bytes([i]))
        handle = FakeHandle.opened[0]
        await until(lambda: len(handle.sent) == 5)
        assert handle.sent == [bytes([i]) for i in range(5)]
        assert member.membership() == [cpg.Address(7, 1)]
        await member.stop()
        assert handle.left and handle.finalized
    asyncio.run(body())


def test_lost_corosync_reconnects_with_backoff() -> None:
    async def body() -> None:
        events: list[str] = []
        member = cpg.CpgMember("g", lambda *a: None, lambda *a: None,
                               on_connected=lambda: events.append("up"),
                               on_disconnected=lambda: events.append("down"))
        await member.start()
        first = FakeHandle.opened[0]
        FakeHandle.reachable = False  # corosync is down for a while
        first.dispatch_rc = cpg.CS_ERR_LIBRARY
        first.theirs.send(b"x")  # the fd becomes readable, dispatch fails
        await until(lambda: events == ["up", "down"])
        assert first.finalized and not member.connected
        member.send(b"dropped while down")  # nobody to send to: dropped, not queued
        await asyncio.sleep(0.1)
        FakeHandle.reachable = True
        await until(lambda: events == ["up", "down", "up"])
        second = FakeHandle.opened[1]
        member.send(b"after")
        await until(lambda: second.sent == [b"after"])
        await member.stop()
    asyncio.run(body())


def test_start_without_corosync_raises_the_clear_error() -> None:
    async def body() -> None:
        FakeHandle.reachable = False
        member = cpg.CpgMember("g", lambda *a: None, lambda *a: None)
        with pytest.raises(cpg.CorosyncUnreachable, match="mount namespace"):
            await member.start()
        await member.stop()
    asyncio.run(body())
