"""Fencing confirmation: Pacemaker's history counts only a fence after the departure."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from guestfence.errors import ConfigError
from guestfence.tracking.fenceconfirm import (
    ConfirmCommand,
    StonithHistory,
    fenced_since,
    parse_pacemaker_time,
)
from guestfence.tracking.hostcluster import make_confirmer

LEFT = datetime(2026, 11, 26, 18, 30, 0, tzinfo=UTC).timestamp()


def history(*events: str) -> str:
    return ('<pacemaker-result api-version="2.30" request="stonith_admin --history host1 '
            '--output-as xml"><fence_history>' + "".join(events)
            + '</fence_history><status code="0" message="OK"/></pacemaker-result>')


def event(completed: str, status: str = "success", action: str = "reboot",
          target: str = "host1") -> str:
    return (f'<fence_event action="{action}" target="{target}" client="stonith_admin.1" '
            f'origin="host2" status="{status}" delegate="host3" completed="{completed}"/>')


def test_pacemaker_times() -> None:
    assert parse_pacemaker_time("2026-11-26 18:30:00 +00:00") == LEFT
    assert parse_pacemaker_time("2026-11-26 19:30:00 +01:00") == LEFT
    assert parse_pacemaker_time("2026-11-26 18:30:00.250000 +00:00") == LEFT + 0.25
    assert parse_pacemaker_time("2026-11-26 18:30:00Z") == LEFT  # pacemaker 2.1.5 prints this
    assert parse_pacemaker_time("yesterday") is None
    assert parse_pacemaker_time("2026-13-40 18:30:00 +00:00") is None


@pytest.mark.parametrize(("xml", "fenced"), [
    (history(event("2026-11-26 18:30:05 +00:00")), True),
    (history(event("2026-11-26 18:30:05 +00:00", action="off")), True),
    (history(event("2026-11-26 18:30:00 +00:00")), True),  # same second: one-second stamps
    (history(event("2026-11-26 18:20:00 +00:00")), False),  # an old fence does not count
    (history(event("2026-11-26 18:30:05 +00:00", status="failed")), False),
    (history(event("2026-11-26 18:30:05 +00:00", status="pending")), False),
    (history(event("2026-11-26 18:30:05 +00:00", action="on")), False),  # unfencing
    (history(event("2026-11-26 18:30:05 +00:00", target="host10")), False),
    (history(event("garbage")), False),
    (history(), False),
    ("not xml <", False),
    ("", False),
])
def test_fenced_since(xml: str, fenced: bool) -> None:
    assert fenced_since(xml, "host1", LEFT + 0.4) is fenced


def test_a_host_powered_on_after_its_fence_is_not_fenced() -> None:
    off = event("2026-11-26 18:30:05 +00:00", action="off")
    on = event("2026-11-26 18:31:00 +00:00", action="on")
    assert fenced_since(history(off, on), "host1", LEFT) is False
    again = event("2026-11-26 18:32:00 +00:00", action="reboot")
    assert fenced_since(history(off, on, again), "host1", LEFT) is True
    failed_on = event("2026-11-26 18:33:00 +00:00", action="on", status="failed")
    assert fenced_since(history(off, failed_on), "host1", LEFT) is True
    # an unfencing of another node, or an "on" before the fence, changes nothing
    assert fenced_since(history(off, event("2026-11-26 18:31:00 +00:00", action="on",
                                           target="host10")), "host1", LEFT) is True
    assert fenced_since(history(event("2026-11-26 18:29:00 +00:00", action="on"), off),
                        "host1", LEFT) is True


def test_a_stamp_without_zone_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")  # UTC+1 in November
    time.tzset()
    try:
        assert parse_pacemaker_time("2026-11-26 19:30:00") == LEFT
        # read as UTC it would be an hour later: an old fence would count as recent
        assert fenced_since(history(event("2026-11-26 19:25:00")), "host1", LEFT) is False
    finally:
        monkeypatch.undo()
        time.tzset()


def test_stonith_history_runs_stonith_admin(tmp_path: object) -> None:
    fake = f"{tmp_path}/stonith_admin"
    with open(fake, "w") as f:
        f.write("#!/bin/sh\n[ \"$*\" = \"--history host1 --verbose --output-as xml\" ] || exit 9\n"
                f"cat <<'EOF'\n{history(event('2026-11-26 18:30:05 +00:00'))}\nEOF\n")
    import os
    os.chmod(fake, 0o755)
    assert StonithHistory(fake)("host1", LEFT) is True
    assert StonithHistory(fake)("host1", LEFT + 60) is False
    assert StonithHistory("/nonexistent/stonith_admin")("host1", LEFT) is False


def test_confirm_command() -> None:
    check = ConfirmCommand(f"{sys.executable} -c 'import os,sys; "
                           "sys.exit(0 if sys.argv[1] == \"host1\" and "
                           "float(os.environ[\"GUESTFENCE_LEFT_AT\"]) > 0 else 1)' {host}")
    assert check("host1", LEFT) is True
    assert check("host2", LEFT) is False
    slow = ConfirmCommand("sleep 5 {host}", timeout=0.2)
    assert slow("host1", LEFT) is False
    with pytest.raises(ConfigError, match="host"):
        ConfirmCommand("true")
    with pytest.raises(ConfigError):
        ConfirmCommand("'unbalanced {host}")


def test_confirmer_from_config() -> None:
    assert isinstance(make_confirmer(SimpleNamespace(fenced_confirm="stonith-history",
                                                     confirm_command=None)), StonithHistory)
    cmd = make_confirmer(SimpleNamespace(fenced_confirm="command",
                                         confirm_command="/bin/check {host}"))
    assert isinstance(cmd, ConfirmCommand) and cmd.command("h") == ["/bin/check", "h"]
    with pytest.raises(ConfigError, match="confirm_command"):
        make_confirmer(SimpleNamespace(fenced_confirm="command", confirm_command=None))


def test_a_timed_out_confirm_command_leaves_no_process_behind(tmp_path: object) -> None:
    import time

    pidfile = f"{tmp_path}/child.pid"
    command = ConfirmCommand(f"sh -c 'sleep 60 & echo $! > {pidfile}; wait' {{host}}",
                             timeout=0.5)
    started = time.monotonic()
    assert command("host1", 0.0) is False  # no answer in time: not fenced
    assert time.monotonic() - started < 5
    child = int(Path(pidfile).read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # dead, not reaped yet
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 5
    while not gone():
        assert time.monotonic() < deadline, "the command's child outlived its timeout"
        time.sleep(0.02)
