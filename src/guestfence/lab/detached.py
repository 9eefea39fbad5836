"""Detached lab processes, found again from a state file by pid and start time.

``guestfence lab up`` exits while some of its processes (a host's libvirtd +
QEMU parent, the power link) live on; ``status`` and ``down`` may run much
later, when a recorded pid may belong to someone else.  A pid together with
the process's start time (clock ticks since boot, /proc/PID/stat) names one
process for the machine's whole uptime, so nothing else is ever signalled.

The /proc readings behind that (a process's stat fields, whether it still runs,
its namespaces) are here too, for every lab helper that finds processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state, 1 = ppid,
    19 = start time), or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ns_id(pid: int | str, kind: str) -> tuple[int, int] | None:
    """Identity of ``pid``'s namespace of ``kind`` (``mnt``, ``net``; pid may be
    ``"self"``), None if it cannot be read (the process is gone)."""
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has finished running)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """The running process's start time; None if it is gone (or a zombie)."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields is not None and fields[0] not in ("Z", "X") else None


def spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (so it outlives the command that started
    it), stdin closed, stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)


def record(pid: int) -> dict[str, Any]:
    """What to write to the state file to find process ``pid`` again."""
    return {"pid": pid, "start_time": start_time(pid)}


def is_running(info: Mapping[str, Any]) -> bool:
    """The process recorded as ``{"pid", "start_time"}`` still runs (not a reused pid)."""
    pid, started = info.get("pid"), info.get("start_time")
    return isinstance(pid, int) and started is not None and start_time(pid) == started


def stop(info: Mapping[str, Any], timeout: float = 10.0) -> bool:
    """SIGTERM the recorded process, SIGKILL after ``timeout``; True once it is gone
    (a process that is not the recorded one is left alone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_running(info):
            return True
        try:
            os.kill(int(info["pid"]), sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while is_running(info) and time.monotonic() < deadline:
            time.sleep(0.05)
    return not is_running(info)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the detached process's main loop waits on it."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop
