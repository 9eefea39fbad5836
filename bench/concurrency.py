"""N simultaneous ``fence_xvm -o status -H guest1`` processes against one daemon.

A spawner runs *inside* the daemon's namespace (this script re-executed with
``--spawn``), starts all N clients at once with ``subprocess.Popen``, reaps
them with ``os.wait4`` and reports, per client, the completion time since
the first launch, its CPU time, the exit code and whether it printed
``Status: ON``.  The "burst" scenarios take process start-up out of the
picture: one process (``--burst``) sends N requests at once, each with its own
call-back port, and times each result (the daemon alone, as in the C lab's
"daemon only" figures).  Every scenario runs ``REPEATS`` times, interleaved.

Scenarios (each daemon in its own namespace, multicast on ``lo``):
  ours client / ours daemon   N = 20 and 100  (target: 100/100 in under 2 s)
  C client / C daemon         N = 20  (every C client listens on TCP 1229; the
                              losers get EADDRINUSE and retry every 2 s: 2-8 s)
  C client / ours daemon      N = 20  (the same collision, now on our daemon)
  ours client / C daemon      N = 100 (ephemeral ports, serial C daemon; no target)
  burst / C daemon, ours      N = 20 and 100 (no target)

    .venv/bin/python bench/concurrency.py
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from common import (
    IMPLS,
    LABEL,
    Check,
    Impl,
    Lab,
    Stats,
    Summary,
    pairing,
    run_benchmark,
    table,
    vm_hwm_kib,
)

from guestfence.errors import GuestfenceError
from guestfence.virt.handshake import ClientSession
from guestfence.virt.wire import DEFAULT_PORT, FenceRequest, HashType, Op, read_key

NAME = "concurrency"
STATUS_ARGS = ("-o", "status", "-H", "guest1")
WALL_LIMIT_S = 2.0
REPEATS = 3
SPAWN_TIMEOUT_S = 90.0
BURST_TIMEOUT_S = 20.0
MCAST_GROUP = "225.0.0.12"


# -- inside the namespace: launch N clients at once and reap them ---------------


def spawn(argv: list[str], n: int) -> dict[str, object]:
    """Start ``n`` copies of ``argv`` back to back; time each until it exits.

    ``os.wait4`` also yields each client's CPU time (user + system), which
    bounds the wall time from below on a machine with few cores.  A client
    prints a few lines, far below a pipe's buffer, so reaping before reading
    cannot deadlock.
    """
    t0 = time.monotonic()
    procs = {}
    for _ in range(n):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        procs[p.pid] = p
    launched = time.monotonic() - t0
    finished: dict[int, tuple[float, float]] = {}
    while len(finished) < n:
        pid, status, usage = os.wait4(-1, 0)
        if pid in procs:
            finished[pid] = (time.monotonic() - t0, usage.ru_utime + usage.ru_stime)
            procs[pid].returncode = os.waitstatus_to_exitcode(status)
    clients = []
    for pid, p in procs.items():
        out, _ = p.communicate()
        lines = out.strip().splitlines()
        clients.append({"seconds": finished[pid][0], "cpu": finished[pid][1], "rc": p.returncode,
                        "ok": p.returncode == 0 and lines[-1:] == ["Status: ON"],
                        "eaddrinuse": out.count("Address already in use")})
    return {"launch_seconds": launched, "clients": clients}


def spawn_main(argv: list[str]) -> int:
    """``--spawn N -- COMMAND...``: print :func:`spawn`'s result as JSON."""
    if len(argv) < 4 or argv[0] != "--spawn" or argv[2] != "--" or not argv[1].isdigit():
        raise SystemExit("usage: concurrency.py --spawn N -- COMMAND [ARG...]")
    print(json.dumps(spawn(argv[3:], int(argv[1]))))
    return 0


async def _burst_one(key: bytes, seqno: int, sender: socket.socket,
                     t0: float) -> tuple[float, int | None]:
    """One request on its own call-back port: send, accept, authenticate, read the result."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[int | None] = loop.create_future()

    async def on_callback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ClientSession(key, HashType.SHA256)
        try:
            writer.write(session.initial_bytes())
            while not session.done:
                data = await reader.read(4096)
                if not data:
                    session.eof()
                writer.write(session.receive(data))
            if not result.done():
                result.set_result(session.outcome.result)
        except (OSError, GuestfenceError) as e:
            if not result.done():
                result.set_exception(e)
        finally:
            writer.close()

    server = await asyncio.start_server(on_callback, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        request = FenceRequest(op=Op.STATUS, domain="guest1", address=IPv4Address("127.0.0.1"),
                               port=port, seqno=seqno)
        sender.sendto(request.with_fresh_random().sign(key), (MCAST_GROUP, DEFAULT_PORT))
        try:
            code = await asyncio.wait_for(result, BURST_TIMEOUT_S)
        except (TimeoutError, OSError, GuestfenceError):
            code = None
    return time.monotonic() - t0, code


async def burst(key: bytes, n: int) -> dict[str, object]:
    """``n`` requests from one process on ``n`` call-back ports, all sent at once."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    base = random.getrandbits(31)
    t0 = time.monotonic()
    with sender:
        done = await asyncio.gather(*(_burst_one(key, base + i, sender, t0) for i in range(n)))
    return {"clients": [{"seconds": t, "ok": code == 0} for t, code in done]}


def burst_main(argv: list[str]) -> int:
    """``--burst N KEYFILE``: print :func:`burst`'s result as JSON."""
    if len(argv) != 3 or not argv[1].isdigit():
        raise SystemExit("usage: concurrency.py --burst N KEYFILE")
    print(json.dumps(asyncio.run(burst(read_key(argv[2]), int(argv[1])))))
    return 0


# -- outside: the scenarios ------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """``client`` is a fence_xvm implementation, or ``None`` for the one-process burst."""

    client: Impl | None
    daemon: Impl
    n: int

    @property
    def label(self) -> str:
        if self.client is None:
            return f"burst (1 process) / {LABEL[self.daemon]} daemon, N={self.n}"
        return f"{pairing(self.client, self.daemon)}, N={self.n}"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("ours", "ours", 20),
    Scenario("ours", "ours", 100),
    Scenario("c", "c", 20),
    Scenario("c", "ours", 20),
    Scenario("ours", "c", 100),
    Scenario(None, "c", 20),
    Scenario(None, "ours", 20),
    Scenario(None, "c", 100),
    Scenario(None, "ours", 100),
)
TARGET = Scenario("ours", "ours", 100)


@dataclass
class Outcome:
    scenario: Scenario
    rep: int
    ok: int
    wall: float
    times: Stats
    launch: float = math.nan
    """Seconds the spawner needed to start all N processes."""
    eaddrinuse: int = 0
    cpu: float = math.nan
    """Total CPU seconds (user + system) of all N client processes."""

    @property
    def cpu_floor(self) -> float:
        """The wall time the clients' CPU alone needs on this machine's cores."""
        return self.cpu / (os.cpu_count() or 1)


def run_inside(lab: Lab, daemon: Impl, args: list[str]) -> dict[str, Any]:
    """Re-run this script with ``args`` inside ``daemon``'s namespace; parse its JSON."""
    inner = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = lab.namespaces[daemon].run(inner, capture_output=True, text=True,
                                      timeout=SPAWN_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed (rc {proc.returncode}): {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_scenario(lab: Lab, sc: Scenario, rep: int) -> Outcome:
    if sc.client is None:
        result = run_inside(lab, sc.daemon, ["--burst", str(sc.n), str(lab.key)])
    else:
        command = lab.client_argv(sc.client, *STATUS_ARGS)
        result = run_inside(lab, sc.daemon, ["--spawn", str(sc.n), "--", *command])
    clients: list[dict[str, Any]] = result["clients"]
    seconds = [c["seconds"] for c in clients]
    outcome = Outcome(sc, rep, ok=sum(1 for c in clients if c["ok"]), wall=max(seconds),
                      times=Stats.of(seconds))
    if sc.client is not None:
        outcome.launch = float(result["launch_seconds"])
        outcome.eaddrinuse = sum(c["eaddrinuse"] for c in clients)
        outcome.cpu = sum(c["cpu"] for c in clients)
    return outcome


def report(outcomes: list[Outcome], summary: Summary) -> None:
    rows = [[o.rep, o.scenario.label, f"{o.ok}/{o.scenario.n}", o.wall, o.times.median / 1000,
             o.times.p90 / 1000, o.launch, o.eaddrinuse, o.cpu * 1000 / o.scenario.n,
             o.cpu_floor] for o in outcomes]
    print("\nsimultaneous fence_xvm -o status -H guest1, every repetition; seconds since the "
          f"first launch/send (CPU floor = the clients' total CPU / {os.cpu_count()} cores)")
    print(table(["rep", "scenario", "ok", "wall", "median", "p90", "launch all", "EADDRINUSE",
                 "CPU ms/client", "CPU floor"], rows))
    for sc in SCENARIOS:
        summary.add(summary_line(sc, [o for o in outcomes if o.scenario == sc]))
    c20 = walls(outcomes, Scenario("c", "c", 20))
    o20 = walls(outcomes, Scenario("ours", "ours", 20))
    summary.add(f"N=20 processes, median wall C/C over ours/ours: "
                f"x{statistics.median(c20) / statistics.median(o20):.1f}")
    floor = statistics.median(o.cpu_floor for o in outcomes if o.scenario == TARGET)
    summary.add(f"ours/ours N={TARGET.n}: the clients' CPU alone needs {floor:.2f} s "
                f"on {os.cpu_count()} cores (median over repetitions)")


def walls(outcomes: list[Outcome], sc: Scenario) -> list[float]:
    return [o.wall for o in outcomes if o.scenario == sc]


def summary_line(sc: Scenario, reps: list[Outcome]) -> str:
    """``label ok/total, wall median [min-max] over the repetitions, CPU per client``."""
    w = [o.wall for o in reps]
    line = (f"{sc.label:38s} {sum(o.ok for o in reps):3d}/{sc.n * len(reps):<3d} wall "
            f"{statistics.median(w):6.3f} s [{min(w):.3f}-{max(w):.3f}]")
    if sc.client is not None:
        cpu = statistics.median(o.cpu * 1000 / sc.n for o in reps)
        line += f"  CPU {cpu:3.0f} ms/client"
    return line


def body(lab: Lab, summary: Summary) -> None:
    pids: dict[Impl, int] = {}
    for daemon in IMPLS:
        lab.namespaces[daemon] = lab.namespace(f"{daemon}d")
        pids[daemon] = lab.start_daemon(daemon, lab.namespaces[daemon])
    outcomes = []
    for rep in range(1, REPEATS + 1):
        for sc in SCENARIOS:
            outcome = run_scenario(lab, sc, rep)
            print(f"[{rep}/{REPEATS}] {sc.label}: {outcome.ok}/{sc.n} ok, "
                  f"wall {outcome.wall:.3f} s", flush=True)
            outcomes.append(outcome)
    report(outcomes, summary)
    rss = {LABEL[d]: vm_hwm_kib(pid) for d, pid in pids.items()}
    summary.add("peak RSS (VmHWM) after all scenarios: " + ", ".join(
        f"{name} daemon {kib / 1024:.1f} MiB" for name, kib in rss.items() if kib is not None))
    target = [o for o in outcomes if o.scenario == TARGET]
    ok = sum(o.ok for o in target)
    wall = statistics.median(o.wall for o in target)
    summary.checks.append(Check(
        f"ours/ours N={TARGET.n} processes: all succeed ({ok}/{TARGET.n * REPEATS}), "
        f"median wall of {REPEATS}", wall, WALL_LIMIT_S, " s",
        ok=ok == TARGET.n * REPEATS and wall < WALL_LIMIT_S))
    summary.data = {"cores": os.cpu_count(), "repeats": REPEATS, "vm_hwm_kib": rss, "scenarios": [
        o.__dict__ | {"label": o.scenario.label, "cpu_floor": o.cpu_floor} for o in outcomes]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--spawn"]:
        sys.exit(spawn_main(sys.argv[1:]))
    if sys.argv[1:2] == ["--burst"]:
        sys.exit(burst_main(sys.argv[1:]))
    sys.exit(run_benchmark(NAME, body))
