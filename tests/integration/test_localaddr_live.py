"""fence_xvm's view of the local addresses equals iproute2's."""

from __future__ import annotations

import ipaddress
import socket
import subprocess

from guestfence.agents.localaddr import local_addresses


def test_same_addresses_as_iproute2() -> None:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    expected = {ipaddress.ip_address(line.split()[3].split("/")[0]) for line in out.splitlines()}
    assert set(local_addresses(socket.AF_INET)) == expected
