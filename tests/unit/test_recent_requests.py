"""The ring buffer of the last requests and the in-flight tally behind ``guestfence status``."""

from __future__ import annotations

import asyncio

import pytest

from guestfence.host.recent import ActiveRequests, RecentRequests, RequestRecord


def record(seqno: int) -> RequestRecord:
    return RequestRecord(1000.0 + seqno, "tcp", "10.0.0.1", "vm1", "off", seqno, None,
                         "success", 1.5)


def test_the_buffer_keeps_only_the_newest_requests_oldest_first() -> None:
    recent = RecentRequests(size=3)
    for seqno in range(5):
        recent.add(record(seqno))
    assert [r.seqno for r in recent.last(10)] == [2, 3, 4]
    assert [r.seqno for r in recent.last(2)] == [3, 4]
    assert recent.last(0) == []
    assert len(recent) == 3
    assert recent.total == 5


def test_a_buffer_without_room_is_refused() -> None:
    with pytest.raises(ValueError):
        RecentRequests(size=0)


def test_record_json_has_every_field() -> None:
    assert record(7).to_json() == {
        "finished": 1007.0, "listener": "tcp", "requester": "10.0.0.1", "target": "vm1",
        "action": "off", "seqno": 7, "cluster": None, "outcome": "success",
        "duration_ms": 1.5, "detail": ""}


def test_active_requests_count_by_listener_and_forget_finished_ones() -> None:
    active = ActiveRequests()

    async def main() -> None:
        async with active.serving("tcp"), active.serving("tcp"), active.serving("serial"):
            assert active.by_listener() == {"tcp": 2, "serial": 1}
        with pytest.raises(RuntimeError):
            async with active.serving("tcp"):
                raise RuntimeError("a request that fails still leaves the tally")

    asyncio.run(main())
    assert active.by_listener() == {}
    assert active.total() == 0
