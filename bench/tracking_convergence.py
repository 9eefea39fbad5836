"""Host-cluster mode on a real 3-node corosync: how fast does every member learn an event?

Three corosync nodes (lab.cluster, corosync only, token 1000 ms), each a network
namespace with a private mount namespace; in each node an *agent* (this script,
``agent`` mode) runs the real :class:`~guestfence.tracking.hostcluster.CpgTracker`
over the real ctypes CPG binding, with a scripted domain source instead of libvirt
(host1 lists 50 guests). host1's agent then reports 200 lifecycle events, 25 ms
apart (g000 paused / resumed in turn); every agent timestamps (CLOCK_MONOTONIC,
shared by all namespaces of the machine) when it sent a message and when the
message was applied to its location table. From that:

* event -> applied on host2/host3 (what "every member knows the owner" costs);
* event -> applied on host1 itself (the agreed-order round trip through the ring);
* the full announcement (50 guests) that follows each event, sent -> applied.

Reference in the same run: bare CPG, 200 raw 64-byte multicasts from host1 in
another group, mcast -> delivered on the other nodes (no JSON, no table).

    .venv/bin/python bench/tracking_convergence.py        (root; needs corosync, libcpg4)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import selectors
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Check, Stats, Summary, table

from guestfence.tracking import cpgwire
from guestfence.tracking.cpg import CpgMember
from guestfence.tracking.hostcluster import CpgTracker, cpg_transport
from guestfence.tracking.locations import PAUSED, RUNNING, DomainState, Kind

HOSTS = ("host1", "host2", "host3")
GUESTS = 50
EVENTS = 200
SPACING = 0.025
NS_PREFIX = "gfb-"


def emit(**kw: Any) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


# -- agent (runs inside one cluster node) --------------------------------------------


class ScriptedSource:
    def __init__(self, count: int) -> None:
        self.domains = {str(uuidlib.UUID(int=i + 1)): DomainState(f"g{i:03d}",
                                                                   str(uuidlib.UUID(int=i + 1)),
                                                                   RUNNING)
                        for i in range(count)}
        self.generation = 0
        self.on_event: Callable[[str, str, Kind, str], None] | None = None

    async def start(self, on_event: Callable[[str, str, Kind, str], None],
                    on_lost: Callable[[], None]) -> None:
        self.on_event = on_event

    def listing(self) -> tuple[int, list[DomainState]]:
        return self.generation, list(self.domains.values())

    def close(self) -> None:
        pass

    def toggle(self, uuid: str) -> None:
        d = self.domains[uuid]
        paused = d.state == RUNNING
        self.domains[uuid] = DomainState(d.name, d.uuid, PAUSED if paused else RUNNING)
        self.generation += 1
        assert self.on_event is not None
        if paused:
            self.on_event(uuid, d.name, Kind.SUSPENDED, "PAUSED")
        else:
            self.on_event(uuid, d.name, Kind.RESUMED, "UNPAUSED")


class TimedTracker(CpgTracker):
    def _send(self, message: cpgwire.Message) -> None:
        emit(ev="sent", kind=type(message).__name__, host=message.host, seq=message.seq,
             t=time.monotonic())
        super()._send(message)

    def _deliver(self, nodeid: int, pid: int, payload: bytes) -> None:
        super()._deliver(nodeid, pid, payload)
        t = time.monotonic()
        try:
            message = cpgwire.decode(payload)
        except Exception:
            return
        emit(ev="applied", kind=type(message).__name__, host=message.host, seq=message.seq,
             at=self.me, t=t)


async def agent(host: str, group: str) -> None:
    logging.basicConfig(level=logging.ERROR)  # the tracker's membership lines are not data
    source = ScriptedSource(GUESTS if host == "host1" else 0)
    tracker = TimedTracker(host, cpg_transport(group), source, lambda h, t: False)
    raw_seen: list[float] = []

    def raw_deliver(_nodeid: int, _pid: int, payload: bytes) -> None:
        emit(ev="raw", seq=int.from_bytes(payload[:4], "big"), at=host, t=time.monotonic())
        raw_seen.append(0)

    raw = CpgMember(group + "-raw", raw_deliver, lambda _m, _left, _j: None)
    await raw.start()
    await tracker.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit(ev="ready", host=host)
    while line := (await reader.readline()).decode().strip():
        if line == "members":
            emit(ev="members", host=host, members=tracker.members(),
                 raw=len(raw.membership()))
        elif line == "raw":
            for i in range(EVENTS):
                emit(ev="raw_sent", seq=i, t=time.monotonic())
                raw.send(i.to_bytes(4, "big") + b"x" * 60)
                await asyncio.sleep(SPACING)
            emit(ev="done", what="raw")
        elif line == "events":
            first = next(iter(source.domains))
            for _ in range(EVENTS):
                source.toggle(first)
                await asyncio.sleep(SPACING)
            await asyncio.sleep(0.5)
            emit(ev="done", what="events")
        elif line == "quit":
            break
    await tracker.stop()
    await raw.stop()


# -- coordinator ---------------------------------------------------------------------


class Agents:
    def __init__(self, procs: dict[str, subprocess.Popen[str]]) -> None:
        self.procs = procs
        self.records: list[dict[str, Any]] = []
        self.sel = selectors.DefaultSelector()
        for host, p in procs.items():
            assert p.stdout is not None
            self.sel.register(p.stdout, selectors.EVENT_READ, host)

    def send(self, host: str, line: str) -> None:
        p = self.procs[host]
        assert p.stdin is not None
        p.stdin.write(line + "\n")
        p.stdin.flush()

    def drain(self, seconds: float) -> None:
        """Read whatever the agents print for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in self.sel.select(left):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line:
                    self.records.append(json.loads(line))

    def wait(self, pred: Callable[[dict[str, Any]], bool], count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"agents: waited {timeout} s; last {self.records[-3:]}")
            for key, _ in self.sel.select(left):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError(f"agent {key.data} exited: rc "
                                       f"{self.procs[key.data].wait()}")
                rec = json.loads(line)
                self.records.append(rec)
                seen += pred(rec)


def latencies(records: list[dict[str, Any]], kind: str) -> dict[str, list[float]]:
    sent = {r["seq"]: r["t"] for r in records
            if r["ev"] == "sent" and r["kind"] == kind and r["host"] == "host1"}
    out: dict[str, list[float]] = {h: [] for h in HOSTS}
    for r in records:
        if r["ev"] == "applied" and r["kind"] == kind and r["host"] == "host1" \
                and r["seq"] in sent:
            out[r["at"]].append(r["t"] - sent[r["seq"]])
    return out


def coordinate() -> int:
    from guestfence.lab.cluster import Cluster, missing_tools
    from guestfence.lab.netns import build_lan, run_prefix

    problems = missing_tools(pacemaker=False)
    if problems:
        print("needs: " + "; ".join(problems), file=sys.stderr)
        return 2
    summary = Summary("tracking_convergence")
    prefix = run_prefix(NS_PREFIX)
    group = f"{prefix}bench"
    lan = build_lan(prefix, HOSTS, subnet="10.231.64", subnet6=None)
    scratch = Path(tempfile.mkdtemp(prefix="gf-bench-conv-"))
    cluster = Cluster(scratch / "cluster", lan.hosts, pacemaker=False, token_ms=1000)
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        cluster.start()
        for host in HOSTS:
            procs[host] = cluster.node(host).popen(
                [sys.executable, __file__, "agent", "--host", host, "--group", group],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        agents = Agents(procs)
        agents.wait(lambda r: r["ev"] == "ready", len(HOSTS), 60)
        while True:
            for host in HOSTS:
                agents.send(host, "members")
            agents.records.clear()
            agents.wait(lambda r: r["ev"] == "members", len(HOSTS), 30)
            views = [r for r in agents.records if r["ev"] == "members"]
            if all(v["members"] == list(HOSTS) and v["raw"] == len(HOSTS) for v in views):
                break
            time.sleep(0.2)
        agents.records.clear()
        agents.send("host1", "raw")
        agents.wait(lambda r: r["ev"] == "done", 1, 60)
        agents.drain(1.0)
        raw_sent = {r["seq"]: r["t"] for r in agents.records if r["ev"] == "raw_sent"}
        raw: dict[str, list[float]] = {h: [] for h in HOSTS}
        for r in agents.records:
            if r["ev"] == "raw" and r["seq"] in raw_sent:
                raw[r["at"]].append(r["t"] - raw_sent[r["seq"]])
        agents.records.clear()
        agents.send("host1", "events")
        agents.wait(lambda r: r["ev"] == "done", 1, 120)
        agents.drain(1.0)
        events = latencies(agents.records, "LifecycleEvent")
        anns = latencies(agents.records, "Announcement")
        for host in HOSTS:
            agents.send(host, "quit")
    finally:
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        cluster.stop()
        lan.destroy()

    rows = []
    data: dict[str, Any] = {}
    for label, series in (("raw CPG 64 B (reference)", raw), ("lifecycle event", events),
                          (f"announcement, {GUESTS} guests", anns)):
        for host in HOSTS:
            st = Stats.of(series[host])
            who = "host1 (self, round trip)" if host == "host1" else host
            rows.append([label, who, st.n, f"{st.median:.2f}", f"{st.p90:.2f}",
                         f"{st.max:.2f}"])
            data[f"{label} -> {host}"] = st
    summary.add(f"3-node corosync 3 (token 1000 ms), one CPG member per node; host1 sends "
                f"{EVENTS} events {SPACING * 1000:.0f} ms apart")
    for line in table(["message", "applied on", "n", "median ms", "p90 ms", "max ms"],
                      rows).splitlines():
        summary.add(line)
    others = sorted(events["host2"] + events["host3"])
    raw_others = sorted(raw["host2"] + raw["host3"])
    ev_med = Stats.of(others).median
    raw_med = Stats.of(raw_others).median
    summary.add(f"event known on the other hosts: median {ev_med:.2f} ms vs raw CPG "
                f"{raw_med:.2f} ms ({ev_med / raw_med:.2f}x)")
    summary.data.update({k: vars(v) for k, v in data.items()})
    summary.checks += [
        Check("every event applied on every other host", 2 * EVENTS - len(others), 1, " lost"),
        Check("event -> other hosts, max", Stats.of(others).max, 1000.0, " ms"),
    ]
    return summary.finish()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    a = sub.add_parser("agent")
    a.add_argument("--host", required=True)
    a.add_argument("--group", required=True)
    args = ap.parse_args()
    if args.cmd == "agent":
        asyncio.run(agent(args.host, args.group))
        return 0
    return coordinate()


if __name__ == "__main__":
    sys.exit(main())
