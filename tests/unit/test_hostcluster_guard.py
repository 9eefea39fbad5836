"""An off that races a live migration out of this host waits for the other copy to go."""

from __future__ import annotations

import time

from guestfence.tracking.migration_guard import GuardedLibvirtBackend
from guestfence.virt.wire import Op, Result

URI = "test:///default"  # libvirt's test driver: one running domain "test", private per connection


def backend(copies: list[list[str]], migrating: bool, power_timeout: float = 5.0) \
        -> tuple[GuardedLibvirtBackend, list[float]]:
    polled: list[float] = []

    def elsewhere(_uuid: str) -> list[str]:
        polled.append(time.monotonic())
        return copies.pop(0) if len(copies) > 1 else copies[0]

    b = GuardedLibvirtBackend([URI], settle=0.05, power_timeout=power_timeout)
    b.guard(lambda _uuid: migrating, elsewhere)
    return b, polled


def test_off_waits_until_the_destination_copy_is_gone() -> None:
    b, polled = backend([["host3"], ["host3"], ["host3"], []], migrating=True)
    t0 = time.monotonic()
    assert b.execute(Op.OFF, "test") == Result.SUCCESS
    assert len(polled) >= 4 and time.monotonic() - t0 >= 0.05


def test_off_fails_while_the_destination_keeps_its_copy() -> None:
    b, _ = backend([["host3"]], migrating=True, power_timeout=0.2)
    assert b.execute(Op.OFF, "test") == Result.FAIL
    assert b.execute(Op.STATUS, "test") == Result.OFF  # it is off here; just not everywhere


def test_plain_off_is_not_delayed() -> None:
    b, polled = backend([[]], migrating=False)
    assert b.execute(Op.OFF, "test") == Result.SUCCESS
    assert len(polled) == 2  # asked before and after the off whether a copy exists elsewhere
    assert b.execute(Op.STATUS, "test") == Result.OFF


def test_a_migration_that_started_during_the_off_is_waited_for() -> None:
    # nothing elsewhere at the first look; the destination's copy shows up by the second
    b, polled = backend([[], ["host3"], ["host3"], []], migrating=False)
    assert b.execute(Op.OFF, "test") == Result.SUCCESS
    assert len(polled) >= 4  # waited until the destination's copy was gone
    b, _ = backend([[], ["host3"]], migrating=False, power_timeout=0.2)
    assert b.execute(Op.OFF, "test") == Result.FAIL  # it stays: no success


def test_make_tracker_from_the_backend_config() -> None:
    import socket
    from types import SimpleNamespace

    import pytest

    from guestfence.errors import ConfigError
    from guestfence.tracking.fenceconfirm import StonithHistory
    from guestfence.tracking.hostcluster import make_tracker

    config = SimpleNamespace(name="cpg", uris=(URI,), name_mode="name", host_name=None,
                             group="guestfence", fenced_confirm="stonith-history",
                             confirm_command=None, claim_shut_off=True)
    tracker = make_tracker(config)
    assert tracker.mode == "cpg"
    assert tracker.me == socket.gethostname().split(".")[0]
    assert isinstance(tracker.executor(tracker.me), GuardedLibvirtBackend)
    assert tracker.executor("elsewhere") is None
    assert isinstance(tracker._confirm, StonithHistory)
    with pytest.raises(ConfigError, match="uri"):
        make_tracker(SimpleNamespace(**{**vars(config), "uris": ()}))
