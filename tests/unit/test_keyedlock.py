"""Operations on one domain never overlap, even when a lock changes hands."""

from __future__ import annotations

import asyncio

from guestfence.host.keyedlock import KeyedLocks


def test_no_overlap_when_a_third_task_arrives_during_hand_over() -> None:
    async def scenario() -> list[str]:
        locks = KeyedLocks()
        events: list[str] = []
        active = 0

        async def op(name: str) -> None:
            nonlocal active
            async with locks.hold("vm1"):
                active += 1
                events.append(f"{name}:{active}")
                await asyncio.sleep(0)
                active -= 1

        first = asyncio.create_task(op("a"))
        await asyncio.sleep(0)  # a holds the lock
        second = asyncio.create_task(op("b"))  # b waits
        await asyncio.sleep(0)
        await first  # a releases; b is woken but has not run yet
        third = asyncio.create_task(op("c"))  # arrives during the hand-over
        await asyncio.gather(second, third)
        assert len(locks) == 0
        return events

    events = asyncio.run(scenario())
    assert all(e.endswith(":1") for e in events), events


def test_different_keys_run_side_by_side() -> None:
    async def scenario() -> int:
        locks = KeyedLocks()
        both = asyncio.Event()
        inside = 0

        async def op(key: str) -> None:
            nonlocal inside
            async with locks.hold(key):
                inside += 1
                if inside == 2:
                    both.set()
                await asyncio.wait_for(both.wait(), 1)

        await asyncio.gather(op("vm1"), op("vm2"))
        return inside

    assert asyncio.run(scenario()) == 2
