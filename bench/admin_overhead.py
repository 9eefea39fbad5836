"""What the day-2 interfaces cost a fencing request: metrics + admin socket + JSON logs on vs off.

Two of our daemons on the same test-driver node, each in its own namespace:

* ``off``: ``--admin-socket off``, no metrics endpoint, text logs;
* ``on``: admin socket, Prometheus endpoint and ``--log-format json``, while a
  poller in its namespace scrapes ``/metrics`` and asks the admin socket for
  the full status every POLL_INTERVAL seconds (far more often than any
  Prometheus or operator would: a stress, not a typical load).

A client process in each namespace runs our fence_xvm code in a loop
(``guestfence.agents.virtclient.run``, no process start per request) and times
every ``status`` request. Rounds alternate off/on (ABBA), so drift of the
shared machine hits both alike; the medians of all requests are compared.

In-process, the bookkeeping each request adds (ring buffer + counter +
histogram) and the cost of one JSON log line are timed as well.

    .venv/bin/python bench/admin_overhead.py
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import Check, Lab, Stats, Summary, run_benchmark, table

from guestfence.host.acl import AccessMap
from guestfence.host.logformat import JsonFormatter, log_fields
from guestfence.host.recent import RequestRecord
from guestfence.host.server import FenceService
from guestfence.lab.netns import Namespace
from guestfence.virt.wire import HashType

NAME = "admin_overhead"
ROUNDS = 10
PER_ROUND = 100
POLL_INTERVAL = 0.02
METRICS_PORT = 9229
ADDED_LIMIT_MS = 1.0

CLIENT = """
import contextlib, io, json, sys, time
from guestfence.agents.virtclient import run
key, count = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(count):
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = run("fence_xvm", ["-k", key, "-o", "status", "-H", "guest1", "-t", "10"])
    times.append(time.perf_counter() - t0)
    if rc != 0 or out.getvalue().strip() != "Status: ON":
        sys.exit(f"unexpected answer rc={rc} {out.getvalue()!r}")
print(json.dumps(times))
"""

POLLER = """
import json, sys, time, urllib.request
from guestfence.host.admin import query
sock, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
scrape, status = [], []
try:
    while True:
        t0 = time.perf_counter()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        t1 = time.perf_counter()
        reply = query(sock, {"command": "status", "requests": 20})
        assert reply["ok"], reply
        t2 = time.perf_counter()
        scrape.append(t1 - t0)
        status.append(t2 - t1)
        time.sleep(interval)
except KeyboardInterrupt:
    pass
print(json.dumps({"scrape": scrape, "status": status}))
"""


def client_round(lab: Lab, ns: Namespace) -> list[float]:
    r = ns.run([sys.executable, "-c", CLIENT, str(lab.key), str(PER_ROUND)],
               capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"client failed: {r.stderr}")
    times: list[float] = json.loads(r.stdout)
    return times


def bookkeeping_us(samples: int = 20000) -> dict[str, float]:
    """Per-request cost of the ring buffer + metrics, and of one JSON log line, in us."""

    class Idle:
        name = "idle"

    svc = FenceService(Idle(), AccessMap([]), b"", HashType.NONE, HashType.NONE)  # type: ignore
    t0 = time.perf_counter()
    for i in range(samples):
        svc.recent.add(RequestRecord(time.time(), "multicast", "10.0.0.1", "guest1", "status",
                                     i, None, "success", 1.0))
        svc.telemetry.observe_request("status", "success", None, 0.001)
    bookkeeping = (time.perf_counter() - t0) / samples * 1e6
    record = logging.LogRecord("guestfenced", logging.INFO, __file__, 1,
                               "request listener=%s requester=%s", ("multicast", "10.0.0.1"),
                               None)
    record.__dict__.update(log_fields(event="request", listener="multicast", target="guest1",
                                      requester="10.0.0.1", action="status", seqno=1,
                                      cluster=None, outcome="success", duration_ms=1.0))
    formats = {"text": logging.Formatter("%(asctime)s %(levelname)s: %(message)s"),
               "json": JsonFormatter()}
    per_line = {}
    for name, formatter in formats.items():
        t0 = time.perf_counter()
        for _ in range(samples):
            formatter.format(record)
        per_line[name] = (time.perf_counter() - t0) / samples * 1e6
    return {"ring_and_metrics": bookkeeping, "text_line": per_line["text"],
            "json_line": per_line["json"]}


def body(lab: Lab, summary: Summary) -> None:
    ns = {"off": lab.namespace("off"), "on": lab.namespace("on")}
    admin_socket = lab.tmp / "run" / "admin.sock"
    lab.start_ours(ns["off"], extra_args=["--admin-socket", "off"])
    lab.start_ours(ns["on"], extra_args=["--admin-socket", str(admin_socket), "--metrics-port",
                                         str(METRICS_PORT), "--log-format", "json"])
    poller = ns["on"].popen([sys.executable, "-c", POLLER, str(admin_socket),
                             str(METRICS_PORT), str(POLL_INTERVAL)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for n in range(ROUNDS):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            for mode in order:
                times[mode] += client_round(lab, ns[mode])
            print(f"round {n + 1}/{ROUNDS}: median off "
                  f"{statistics.median(times['off']) * 1000:.2f} ms, on "
                  f"{statistics.median(times['on']) * 1000:.2f} ms", flush=True)
    finally:
        poller.send_signal(2)
        out, err = poller.communicate(timeout=30)
    if not out.strip():
        raise RuntimeError(f"the poller failed: {err}")
    polled = json.loads(out)
    stats = {mode: Stats.of(values) for mode, values in times.items()}
    added = stats["on"].median - stats["off"].median
    scrape, status = Stats.of(polled["scrape"]), Stats.of(polled["status"])
    micro = bookkeeping_us()

    print()
    print(table(["daemon", "requests", "median ms", "p90 ms", "mean ms"],
                [[mode, s.n, s.median, s.p90, s.mean] for mode, s in stats.items()]))
    summary.add(f"status request, day-2 off: median {stats['off'].median:.2f} ms, p90 "
                f"{stats['off'].p90:.2f} ms ({stats['off'].n} requests)")
    summary.add(f"status request, day-2 on (+{len(polled['scrape'])} scrapes and "
                f"{len(polled['status'])} admin status calls meanwhile): median "
                f"{stats['on'].median:.2f} ms, p90 {stats['on'].p90:.2f} ms")
    summary.add(f"added median latency: {added:+.3f} ms")
    summary.add(f"one scrape of /metrics: median {scrape.median:.2f} ms; one admin status: "
                f"median {status.median:.2f} ms")
    summary.add(f"in-process per request: ring buffer + metrics {micro['ring_and_metrics']:.1f} "
                f"us; log line text {micro['text_line']:.1f} us, json {micro['json_line']:.1f} us")
    summary.checks.append(Check("added median request latency with metrics, admin polling and "
                                "JSON logs", added, ADDED_LIMIT_MS, " ms"))
    summary.data = {"off": stats["off"], "on": stats["on"], "added_median_ms": added,
                    "scrape": scrape, "admin_status": status, "in_process_us": micro,
                    "rounds": ROUNDS, "per_round": PER_ROUND, "poll_interval_s": POLL_INTERVAL}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(run_benchmark(NAME, body))
