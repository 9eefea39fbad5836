"""Parsing rtnetlink address dumps (the live comparison with iproute2 is an integration test)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from guestfence.agents.localaddr import (
    IFA_ADDRESS,
    IFA_LOCAL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWADDR,
    parse_addr_messages,
)


def rtattr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def newaddr(family: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, 2) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR, 2, 1, 0) + body


def test_parses_local_before_address_and_filters_family() -> None:
    ptp = newaddr(socket.AF_INET, rtattr(IFA_ADDRESS, bytes([10, 0, 0, 2])),
                  rtattr(IFA_LOCAL, bytes([10, 0, 0, 1])))
    v6 = newaddr(socket.AF_INET6, rtattr(IFA_ADDRESS, ipaddress.IPv6Address("fd00::1").packed))
    done = struct.pack("=IHHII", 20, NLMSG_DONE, 2, 1, 0) + bytes(4)
    found, complete = parse_addr_messages(ptp + v6 + done, socket.AF_INET)
    assert found == [bytes([10, 0, 0, 1])]
    assert complete


def test_netlink_error_is_raised() -> None:
    err = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13) + bytes(16)
    with pytest.raises(OSError, match="Permission denied"):
        parse_addr_messages(err, socket.AF_INET)


def test_truncated_message_is_rejected() -> None:
    with pytest.raises(OSError, match="malformed"):
        parse_addr_messages(struct.pack("=IHHII", 400, RTM_NEWADDR, 0, 1, 0), socket.AF_INET)
