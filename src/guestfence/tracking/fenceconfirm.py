"""Did the host cluster fence a host that left our CPG group? Asked, never assumed.

The C cpg backend answers "fenced" as soon as a host leaves the group, which
is false during a partition. guestfence answers success for a departed host's
guests only when one of these confirms a fence that completed *after* the host
left (an old fence, from before the host came back, must not count):

``stonith-history``
    Pacemaker's fencing history: ``stonith_admin --history HOST --verbose --output-as xml``;
    a ``fence_event`` of that target with action off or reboot, status success,
    completed no earlier than the departure, and no successful "on" (power on,
    unfencing) of that target after it.
``confirm_command``
    an operator command (``{host}`` is replaced; the departure time is in the
    environment as ``GUESTFENCE_LEFT_AT``, Unix seconds); exit status 0 means fenced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from guestfence.errors import ConfigError

log = logging.getLogger("guestfenced")

CONFIRM_TIMEOUT = 10.0
# Pacemaker prints "completed" with one-second precision: a fence that finished in
# the same second as the departure still counts (a host cannot rejoin and leave
# again within one second: corosync needs several token rounds to admit it).
CLOCK_GRACE = 1.0
FENCING_ACTIONS = frozenset({"off", "reboot"})

Confirmer = Callable[[str, float], bool]
"""``confirmer(host, left_at)``: True only if ``host`` was fenced at or after ``left_at``."""


def parse_pacemaker_time(text: str) -> float | None:
    """Unix seconds of Pacemaker's ``2026-11-26 18:00:01 +00:00`` (fractions allowed)."""
    match = re.fullmatch(r"\s*(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(\.\d+)?\s*([+-]\d\d:?\d\d|Z)?\s*",
                         text)
    if match is None:
        return None
    stamp, fraction, zone = match.groups()
    try:
        when = datetime.fromisoformat(stamp.replace(" ", "T") + _zone(zone))
    except ValueError:
        return None
    return when.timestamp() + (float(fraction) if fraction else 0.0)


def _zone(zone: str | None) -> str:
    # Pacemaker always prints the zone. A bare stamp is its local time (crm_time without
    # the zone flag): read as UTC, an old fence east of Greenwich would look recent.
    if zone is None:
        return ""
    if zone == "Z":
        return "+00:00"
    return zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"


def fenced_since(history_xml: str, host: str, left_at: float) -> bool:
    """Whether ``stonith_admin --history`` XML shows ``host`` fenced after ``left_at``."""
    try:
        root = ET.fromstring(history_xml)
    except ET.ParseError as e:
        log.warning("fencing history of %s is not XML: %s", host, e)
        return False
    fenced_at: float | None = None
    powered_on_at: float | None = None
    for event in root.iter("fence_event"):
        if event.get("target") != host or event.get("status") != "success":
            continue
        completed = parse_pacemaker_time(event.get("completed", ""))
        if completed is None:
            continue
        if event.get("action") in FENCING_ACTIONS and completed >= left_at - CLOCK_GRACE:
            fenced_at = max(fenced_at or completed, completed)
        elif event.get("action") == "on":
            powered_on_at = max(powered_on_at or completed, completed)
    # an "on" (power on, unfencing) after the last fence: the host may run guests again
    return fenced_at is not None and (powered_on_at is None or powered_on_at < fenced_at)


def run_bounded(argv: Sequence[str], timeout: float,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a session of its own: on timeout the whole process group
    is killed (subprocess.run kills only the child, and a shell's children, an ssh
    say, would outlive every timed-out question). TimeoutExpired is raised then."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:  # a descendant left the group with the pipes
            proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


class StonithHistory:
    """Confirms from Pacemaker's fencing history (run where Pacemaker's IPC is reachable)."""

    def __init__(self, stonith_admin: str = "stonith_admin",
                 timeout: float = CONFIRM_TIMEOUT) -> None:
        self.argv0 = stonith_admin
        self.timeout = timeout

    def __call__(self, host: str, left_at: float) -> bool:
        # --verbose: without it Pacemaker 2.1.5 shows one success per target, and after a
        # second fence of the same host it kept showing the first (lab-verified)
        argv = [self.argv0, "--history", host, "--verbose", "--output-as", "xml"]
        try:
            done = run_bounded(argv, self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("fencing confirmation for %s: %s failed: %s", host, argv[0], e)
            return False
        # stonith_admin exits non-zero (e.g. 105 "No such object") with no history at all
        fenced = fenced_since(done.stdout, host, left_at)
        log.info("fencing confirmation for %s from pacemaker's history: %s", host,
                 "fenced" if fenced else f"not fenced since it left (rc {done.returncode})")
        return fenced


class ConfirmCommand:
    """Confirms with an operator's command; exit status 0 means "fenced since it left"."""

    def __init__(self, template: str, timeout: float = CONFIRM_TIMEOUT) -> None:
        try:
            self.argv = shlex.split(template)
        except ValueError as e:
            raise ConfigError(f"confirm_command {template!r}: {e}") from e
        if not self.argv:
            raise ConfigError("confirm_command is empty")
        if not any("{host}" in arg for arg in self.argv):
            raise ConfigError(f"confirm_command {template!r} does not name {{host}}")
        self.timeout = timeout

    def command(self, host: str) -> Sequence[str]:
        return [arg.replace("{host}", host) for arg in self.argv]

    def __call__(self, host: str, left_at: float) -> bool:
        argv = self.command(host)
        env = {**os.environ, "GUESTFENCE_LEFT_AT": f"{left_at:.3f}"}
        try:
            done = run_bounded(argv, self.timeout, env)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("fencing confirmation for %s: %s failed: %s", host, argv[0], e)
            return False
        log.info("fencing confirmation for %s by %s: rc %d (%s)", host, argv[0],
                 done.returncode, "fenced" if done.returncode == 0 else "not fenced")
        return done.returncode == 0


def make_confirmer(config: Any) -> Confirmer:
    """``fenced_confirm = "stonith-history"`` (default) or ``"command"`` + ``confirm_command``."""
    mode = getattr(config, "fenced_confirm", None) or "stonith-history"
    command = getattr(config, "confirm_command", None) or ""
    if mode == "command":
        if not command:
            raise ConfigError('fenced_confirm = "command" needs confirm_command = "CMD {host}"')
        return ConfirmCommand(str(command))
    if mode != "stonith-history":
        raise ConfigError(f'fenced_confirm = {mode!r}: expected "stonith-history" or "command"')
    return StonithHistory()
