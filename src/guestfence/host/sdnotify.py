"""systemd's readiness protocol (sd_notify), for guestfenced.service's Type=notify.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket
named by $NOTIFY_SOCKET (a leading '@' names an abstract socket). The PyPI
choices were systemd-python (a C extension that needs libsystemd's headers to
build) and sdnotify (unmaintained since 2017); a dozen lines do the job.

Without $NOTIFY_SOCKET (not started by systemd) every call does nothing, and a
failure to send is logged, never raised: readiness reporting must not stop
the daemon from fencing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("guestfenced")


def notify(*fields: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``fields`` (e.g. "READY=1", "STATUS=...") to systemd; True if sent."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    payload = "\n".join(field.replace("\n", " ") for field in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as e:
        log.warning("cannot tell systemd %s: %s", fields[0] if fields else "", e)
        return False
    return True
