"""The processes bench/cluster_keys.py runs inside its namespaces (not a benchmark itself).

    python bench/_cluster_keys_peer.py client KEY TARGET COUNT   -> JSON list of seconds
    python bench/_cluster_keys_peer.py flood ADDRESS RATE SECONDS [SOURCES...] -> JSON stats

``client`` times COUNT fence_xvm status requests in one process (our client's
multicast exchange), so interpreter start-up does not bury a sub-millisecond
difference. ``flood`` sends RATE forged 176-byte requests per second to
ADDRESS:1229 for SECONDS: well-formed headers (sha256, IPv4 call-back) with
random signatures, so the daemon must try its keys on every one; with several
SOURCES it rotates its source address over them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

from guestfence.agents.transport import Logger, MulticastTarget, multicast_exchange
from guestfence.virt.wire import (
    DEFAULT_IPV4_GROUP,
    REQUEST_FORMAT,
    FenceRequest,
    HashType,
    Op,
    read_key,
)


def client(key_file: str, target: str, count: int) -> list[float]:
    key = read_key(key_file)
    where = MulticastTarget(DEFAULT_IPV4_GROUP, 1229, socket.AF_INET)
    request = FenceRequest(op=Op.STATUS, domain=target, hash_type=HashType.SHA256)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        outcome = multicast_exchange(where, request, key, HashType.SHA256, retrans=2.0,
                                     timeout=10.0, log=Logger(0))
        times.append(time.perf_counter() - started)
        if outcome.result != 0:
            raise SystemExit(f"status of {target} answered {outcome.result}")
    return times


def forged_block(source: str) -> bytes:
    signature = os.urandom(32) + bytes(32)  # SHA-256-sized, zero padding
    return REQUEST_FORMAT.pack(Op.OFF, HashType.SHA256, 4, 0, b"vm1", socket.inet_aton(source),
                               1229, os.urandom(6), 1, 2, signature)


def flood(address: str, rate: int, seconds: float, sources: list[str]) -> dict[str, float]:
    socks = []
    for source in sources or ["0.0.0.0"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        socks.append((s, forged_block(source if source != "0.0.0.0" else "10.0.0.1")))
    batch = max(1, rate // 200)  # 200 batches a second
    sent = 0
    started = time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate)
        while sent < due:
            for _ in range(min(batch, due - sent)):
                s, block = socks[sent % len(socks)]
                with contextlib.suppress(OSError):  # a full send buffer: skip this one
                    s.sendto(block, (address, 1229))
                sent += 1
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    return {"sent": sent, "seconds": elapsed, "rate": sent / elapsed}


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "client":
        print(json.dumps(client(args[0], args[1], int(args[2]))))
    elif mode == "flood":
        print(json.dumps(flood(args[0], int(args[1]), float(args[2]), args[3:])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
