"""fence_scsi_check: a test for the watchdog daemon that reboots a node fenced by fence_scsi.

Copy (or link) it into /etc/watchdog.d/. The watchdog daemon runs it as
``fence_scsi_check test``: it exits 0 while this node's key is registered on
at least one of the devices it unfenced, and 2 once the key is gone from all
of them (the node was fenced). The daemon then runs ``fence_scsi_check repair
2``, which returns the code again, and reboots the machine.

Tunables, as for fence-agents, are ``key=value`` lines in /etc/sysconfig/stonith:
``retry`` (extra attempts per device, default 0), ``retry-sleep`` (seconds,
default 1), ``verbose=yes``; and ours: ``state-dir`` (default /run/guestfence).
A node that was never unfenced (no key or device list) passes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence

from guestfence.errors import GuestfenceError
from guestfence.scsi.transport import ScsiTransport

CONFIG = "/etc/sysconfig/stonith"
FENCED = 2


def read_tunables(path: str = CONFIG) -> dict[str, str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, eq, value = line.strip().partition("=")
        if eq and not name.startswith("#"):
            out[name.strip().lower()] = value.strip()
    return out


def key_present(devices: Sequence[str], key: int, opener: Callable[[str], ScsiTransport],
                retries: int, retry_sleep: float, say: Callable[[str], None],
                sleep: Callable[[float], object] = time.sleep) -> bool:
    from guestfence.scsi.prclient import PrClient

    for device in devices:
        for attempt in range(1 + retries):
            if attempt:
                sleep(retry_sleep)
            try:
                transport = opener(device)
                try:
                    if key in PrClient(transport).read_keys().keys:
                        say(f"{device}: key {key:x} registered")
                        return True
                finally:
                    transport.close()
                say(f"{device}: key {key:x} not registered")
                break
            except GuestfenceError as e:
                say(f"{device}: {e}")
    return False


def check(argv: Sequence[str], tunables: Mapping[str, str],
          opener: Callable[[str], ScsiTransport] | None = None,
          sleep: Callable[[float], object] = time.sleep) -> int:
    if len(argv) >= 2 and argv[0] == "repair":
        try:
            return int(argv[1])  # a failed test stays failed: the watchdog reboots
        except ValueError:
            return FENCED
    from guestfence.agent.standard import Options
    from guestfence.agents.scsi import DEFAULT_STATE_DIR, StateFiles, open_device

    verbose = tunables.get("verbose", "").lower() in ("1", "yes", "on", "true")

    def say(text: str) -> None:
        if verbose:
            print(f"fence_scsi_check: {text}", file=sys.stderr)

    state = StateFiles(tunables.get("state-dir", DEFAULT_STATE_DIR))
    key, devices = state.own_key(), state.devices()
    if key is None or not devices:
        say("this node was never unfenced: nothing to watch")
        return 0
    if opener is None:
        options = Options("status", {"login_timeout": "5"})
        opener = lambda device: open_device(device, options)  # noqa: E731
    retries = int(tunables.get("retry", "0") or 0)
    retry_sleep = float(tunables.get("retry-sleep", "1") or 1)
    if key_present(devices, key, opener, retries, retry_sleep, say, sleep):
        return 0
    print(f"fence_scsi_check: key {key:x} is on none of {', '.join(devices)}: this node "
          "has been fenced", file=sys.stderr)
    return FENCED


def main() -> None:
    sys.exit(check(sys.argv[1:], read_tunables()))
