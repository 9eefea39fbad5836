"""This host's domains from libvirt (test driver): events with details, roles, generations."""

from __future__ import annotations

import asyncio
import time

from guestfence.tracking.localdomains import LocalDomains, next_role
from guestfence.tracking.locations import PAUSED, RUNNING, Kind, Migration

URI = "test:///default"  # one running domain "test"; state private to the connection


def test_roles_follow_the_migration_events() -> None:
    # destination: STARTED/MIGRATED -> IN, RESUMED -> none
    assert next_role(None, Kind.STARTED, "MIGRATED") is Migration.IN
    assert next_role(Migration.IN, Kind.SUSPENDED, "MIGRATED") is Migration.IN
    assert next_role(Migration.IN, Kind.RESUMED, "MIGRATED") is None
    # source: SUSPENDED/MIGRATED -> OUT, STOPPED/MIGRATED -> none
    assert next_role(None, Kind.SUSPENDED, "MIGRATED") is Migration.OUT
    assert next_role(Migration.OUT, Kind.STOPPED, "MIGRATED") is None
    assert next_role(None, Kind.SUSPENDED, "PAUSED") is None
    assert next_role(Migration.OUT, Kind.DEFINED, "UPDATED") is Migration.OUT
    assert next_role(None, Kind.STARTED, "BOOTED") is None


def test_events_reach_the_loop_and_bump_the_generation() -> None:
    async def body() -> None:
        seen: list[tuple[str, Kind, str]] = []
        local = LocalDomains([URI])
        await local.start(lambda _u, name, kind, detail: seen.append((name, kind, detail)),
                          lambda: None)
        try:
            generation, domains = await asyncio.to_thread(local.listing)
            assert [(d.name, d.state, d.migrating) for d in domains] == [("test", RUNNING, None)]
            assert not await asyncio.to_thread(local.migrating_out, domains[0].uuid)
            conn = local._conns[URI]  # the test driver keeps its state per connection
            await asyncio.to_thread(lambda: conn.lookupByName("test").suspend())
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert seen == [("test", Kind.SUSPENDED, "PAUSED")]
            assert local.generation == generation + 1
            _, domains = await asyncio.to_thread(local.listing)
            assert domains[0].state == PAUSED and domains[0].migrating is None
        finally:
            local.close()
    asyncio.run(body())
