"""A fence_xvm client that misbehaves on purpose, to show how a daemon copes.

    python -m guestfence.lab.badclient --mode MODE [options]

Modes:
  normal     behave like fence_xvm (own TCP port), print the result
  dead       send the request, but nothing listens on the call-back port
  silent     accept the daemon's call-back, never send the challenge
  halfauth   send the challenge, never answer the daemon's
  giveup     send the challenge and answer, then close before the result
  replay     complete one exchange, then re-send the identical datagram --sends-1
             times, --gap seconds apart, and count any further call-back
  garbage    send --sends random datagrams of random sizes
The call-back address and port inside the request can be forged with
--advertise-addr/--advertise-port (for an unreachable call-back). Prints one
JSON object with what happened; runs for at most --hold + --timeout seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import select
import socket
import sys
import time

from guestfence.virt.handshake import ClientSession, answer_challenge
from guestfence.virt.wire import (
    CHALLENGE_SIZE,
    FenceRequest,
    HashType,
    Op,
    read_key,
)

OPS = {"off": Op.OFF, "on": Op.ON, "reboot": Op.REBOOT, "status": Op.STATUS, "list": Op.HOSTLIST}


def _send(block: bytes, group: str, port: int, iface: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        s.sendto(block, (group, port))


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def run(a: argparse.Namespace) -> dict[str, object]:
    key = read_key(a.key) if a.key else b""
    key_for_signing = read_key(a.sign_key) if a.sign_key else key
    hash_type = HashType.from_name(a.hash)
    out: dict[str, object] = {"mode": a.mode}
    started = time.monotonic()
    if a.mode == "garbage":
        rng = random.Random(a.seed)
        for _ in range(a.sends):
            size = rng.choice([0, 1, 100, 175, 176, 177, 400, rng.randrange(1, 1400)])
            _send(bytes(rng.randrange(256) for _ in range(size)), a.group, a.port, a.iface)
        out["sent"] = a.sends
        return out
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((a.iface if a.iface != "0.0.0.0" else "0.0.0.0", 0))
    listener.listen(4)
    port = a.advertise_port or listener.getsockname()[1]
    if a.mode == "dead":
        listener.close()  # nothing will accept the call-back: the daemon gets RST
    req = FenceRequest(op=OPS[a.op], domain=a.domain, hash_type=hash_type,
                       address=ipaddress.IPv4Address(a.advertise_addr or a.iface), port=port,
                       seqno=a.seqno if a.seqno is not None else random.getrandbits(32))
    block = req.with_fresh_random().sign(key_for_signing)
    sends = a.sends if a.mode == "dead" else 1
    for i in range(sends):
        if i:
            time.sleep(a.gap)
        _send(block, a.group, a.port, a.iface)
    out["sent"] = sends
    if a.mode == "dead" or a.advertise_addr:
        listener.close()
        return out
    ready, _, _ = select.select([listener], [], [], a.timeout)
    if not ready:
        out["result"] = "no-callback"
        return out
    conn, peer = listener.accept()
    if a.mode != "replay":
        listener.close()
    out["callback_from"] = peer[0]
    print("callback", file=sys.stderr, flush=True)
    conn.settimeout(a.timeout + a.hold)
    try:
        auth = HashType.from_name(a.auth)
        if a.mode == "silent":
            out["held"] = _hold(conn, a.hold)
            return out
        challenge = os.urandom(CHALLENGE_SIZE)
        conn.sendall(challenge)
        _recv_exact(conn, 64)
        theirs = _recv_exact(conn, 64)
        if a.mode == "halfauth":
            out["held"] = _hold(conn, a.hold)
            return out
        conn.sendall(answer_challenge(auth, key, theirs))
        if a.mode == "giveup":
            out["result"] = "closed-before-result"
            return out
        session = ClientSession(key, HashType.NONE)  # auth done by hand above
        while not session.done:
            data = conn.recv(4096)
            if not data:
                session.eof()
            session.receive(data)
        out["result"] = session.outcome.result
        if a.mode == "replay":
            # the identical datagram again: a daemon must not act on it a second time
            for _ in range(a.sends - 1):
                time.sleep(a.gap)
                _send(block, a.group, a.port, a.iface)
            out["replays"] = a.sends - 1
            out["extra_callbacks"] = _count_callbacks(listener, a.timeout)
            listener.close()
    except (OSError, EOFError) as e:
        out["error"] = str(e)
    finally:
        conn.close()
        out["ms"] = round((time.monotonic() - started) * 1000, 1)
    return out


def _hold(conn: socket.socket, seconds: float) -> str:
    """Keep the connection open and silent; report whether the daemon hung up first."""
    ready, _, _ = select.select([conn], [], [], seconds)
    if ready:
        try:
            return "daemon-closed" if not conn.recv(1) else "daemon-sent"
        except OSError:
            return "daemon-reset"
    return "held-until-end"


def _count_callbacks(listener: socket.socket, window: float) -> int:
    count = 0
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([listener], [], [], left)
        if ready:
            conn, _ = listener.accept()
            count += 1
            conn.close()
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True,
                   choices=["normal", "dead", "silent", "halfauth", "giveup", "replay", "garbage"])
    p.add_argument("--op", default="status", choices=sorted(OPS))
    p.add_argument("--domain", default="guest1")
    p.add_argument("--key", default="")
    p.add_argument("--sign-key", default="", help="sign with this key instead (wrong key)")
    p.add_argument("--hash", default="sha256")
    p.add_argument("--auth", default="sha256")
    p.add_argument("--group", default="225.0.0.12")
    p.add_argument("--port", type=int, default=1229)
    p.add_argument("--iface", default="127.0.0.1")
    p.add_argument("--advertise-addr", default="")
    p.add_argument("--advertise-port", type=int, default=0)
    p.add_argument("--seqno", type=int, default=None)
    p.add_argument("--sends", type=int, default=1)
    p.add_argument("--gap", type=float, default=0.0)
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    print(json.dumps(run(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
