"""The machine's own IP addresses, from one rtnetlink dump (RTM_GETADDR).

fence_xvm sends its request once from every local address, so it needs them
all, secondary addresses included. The C client asks the kernel the same way.
We do not use psutil here, although it is the general library for this: its
import alone costs 15-25 ms of CPU, more than the whole protocol exchange, on
every fencing call (docs/benchmarks.md, concurrency).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, ifindex
_RTATTR = struct.Struct("=HH")  # length, type

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_addr_messages(data: bytes, family: int) -> tuple[list[bytes], bool]:
    """Packed addresses found in one netlink read, and whether the dump is complete."""
    found: list[bytes] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise OSError("malformed netlink message")
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
            raise OSError(-errno, os.strerror(-errno))
        if kind == RTM_NEWADDR:
            body = offset + _NLMSGHDR.size
            ifa_family = data[body]
            attrs: dict[int, bytes] = {}
            at = body + _IFADDRMSG.size
            end = offset + length
            while at + _RTATTR.size <= end:
                rta_len, rta_type = _RTATTR.unpack_from(data, at)
                if rta_len < _RTATTR.size:
                    break
                attrs[rta_type] = data[at + _RTATTR.size : at + rta_len]
                at += _align(rta_len)
            # IFA_LOCAL is the interface's own address (differs on point-to-point links)
            packed = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if ifa_family == family and packed:
                found.append(packed)
        offset += _align(length)
    return found, False


def local_addresses(family: int) -> list[IPAddress]:
    """Every address of ``family``, skipping ``::1`` and IPv6 link-local as the C client does."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        request = _NLMSGHDR.pack(_NLMSGHDR.size + _IFADDRMSG.size, RTM_GETADDR,
                                 NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        nl.send(request + _IFADDRMSG.pack(family, 0, 0, 0, 0))
        packed: list[bytes] = []
        done = False
        while not done:
            more, done = parse_addr_messages(nl.recv(65536), family)
            packed += more
    found: list[IPAddress] = []
    for raw in packed:
        addr = ipaddress.ip_address(raw)
        if addr.version == 6 and (addr.is_loopback or addr.is_link_local):
            continue
        if addr not in found:
            found.append(addr)
    return found
