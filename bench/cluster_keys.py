"""Per-cluster keys: what 50 keys on one listener cost, and what a flood of forged datagrams does.

A LAN of three namespaces: ``h`` runs guestfenced (multicast on eth0, libvirt
test driver with guests vm1..vm50), ``g`` is a guest of cluster c50, ``x`` an
attacker. The client is our fence_xvm exchange in one process
(bench/_cluster_keys_peer.py), timing each ``status vm50`` from the first
datagram to the result byte, so process start-up does not bury the difference.

(a) Added latency per valid request: the same client and key against the
    daemon configured with 1 cluster key and with 50 cluster keys (c50's key
    last in the ring), and as a reference the old single-key config (no
    clusters block: fence_virtd's model). ``ROUNDS`` rounds alternate the
    configurations so load drift hits all alike. The worst case the ring can
    cost (the matching key last, no requester hint) and a forged datagram's
    cost are also timed in-process.
(b) Flood: ``x`` sends 10,000 forged requests per second (well-formed,
    random signatures: each costs a trial of all 50 keys unless limited) to
    the daemon while ``g`` measures; from one source address, and rotating
    over 200 source addresses (defeats the per-source limiter, so only the
    bounded per-datagram work protects). Delay = flood median - quiet median.

Targets: (a) < 1 ms added median latency with 50 keys; (b) < 50 ms delay.

    .venv/bin/python bench/cluster_keys.py
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import NS_PREFIX, Check, Lab, Stats, Summary, run_benchmark, table

from guestfence.errors import AuthError
from guestfence.host.clusters import GuestBinding
from guestfence.host.keyring import KeyRing, KeySource
from guestfence.lab.cfence import write_key
from guestfence.lab.netns import Lan, build_lan, run_prefix
from guestfence.lab.ourdaemon import OurDaemon
from guestfence.lab.testdriver import default_guests, write_node_xml
from guestfence.virt.wire import FenceRequest, HashType, Op

NAME = "cluster_keys"
KEYS = 50
ROUNDS = 2
REQUESTS = 150
FLOOD_REQUESTS = 100
FLOOD_RATE = 10_000
FLOOD_SOURCES = 200
NEW_REQUESTER_TRIALS = 5
ADDED_LIMIT_MS = 1.0
FLOOD_LIMIT_MS = 50.0
PEER = str(Path(__file__).resolve().parent / "_cluster_keys_peer.py")
CONFIGS = ("single key (no clusters block)", "1 cluster key", f"{KEYS} cluster keys")


def config_text(uri: str, keys: Path, clusters: int | None) -> str:
    head = (f'fence_virtd {{ listener = "multicast"; backend = "libvirt"; }}\n'
            f'backends {{ libvirt {{ uri = "{uri}"; }} }}\n')
    if clusters is None:
        return head + (f'listeners {{ multicast {{ interface = "eth0"; '
                       f'key_file = "{keys}/c{KEYS}.key"; }} }}\n')
    first = KEYS - clusters + 1  # c50 (the client's) is always the last one
    body = "".join(f'  c{i} {{ key_file = "{keys}/c{i}.key"; guests = "vm{i}"; }}\n'
                   for i in range(first, KEYS + 1))
    return head + 'listeners { multicast { interface = "eth0"; } }\n' \
        + "clusters {\n" + body + "}\n"


def ring_costs(keys: Path) -> dict[str, float]:
    """In-process: the ring's worst case for a valid request, and a forged one, in us."""
    sources = [KeySource(f"c{i}", str(keys / f"c{i}.key"), str(keys / f"c{i}.key.next"),
                         GuestBinding(names=frozenset({f"vm{i}"}))) for i in range(1, KEYS + 1)]
    ring = KeyRing.load(sources, strict=True)
    req = FenceRequest(op=Op.STATUS, domain="vm50", hash_type=HashType.SHA256, seqno=1)
    valid = req.sign((keys / f"c{KEYS}.key").read_bytes())
    forged = req.sign(os.urandom(4096))
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        ring.identify(valid, HashType.SHA256)  # no hint: all 50 keys tried, the last matches
    t1 = time.perf_counter()
    for _ in range(n):
        with contextlib.suppress(AuthError):
            ring.identify(forged, HashType.SHA256)
    t2 = time.perf_counter()
    return {"valid_last_key_us": (t1 - t0) / n * 1e6, "forged_us": (t2 - t1) / n * 1e6}


def run_client(net: Lan, keys: Path, count: int) -> list[float]:
    r = net["g"].run([sys.executable, PEER, "client", str(keys / f"c{KEYS}.key"), "vm50",
                      str(count)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"client failed (rc {r.returncode}): {r.stdout}{r.stderr}")
    return list(json.loads(r.stdout))


def start_daemon(net: Lan, tmp: Path, name: str, text: str) -> OurDaemon:
    conf = tmp / f"{name}.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    return OurDaemon(conf, namespace=net["h"]).start(timeout=60)


def flood(net: Lan, sources: list[str], seconds: float) -> subprocess.Popen[str]:
    argv = [sys.executable, PEER, "flood", net.addresses["h"], str(FLOOD_RATE), str(seconds),
            *sources]
    return net["x"].popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def udp_counters(net: Lan) -> dict[str, int]:
    """The host namespace's UDP counters (/proc/net/snmp): received, dropped for a full buffer."""
    lines = [x.split() for x in net["h"].run(["cat", "/proc/net/snmp"], capture_output=True,
                                               text=True, check=True).stdout.splitlines()
             if x.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def measure_flood(net: Lan, keys: Path, sources: list[str]) -> tuple[list[float], dict[str, float]]:
    before = udp_counters(net)
    proc = flood(net, sources, seconds=8.0)
    try:
        time.sleep(0.5)  # let the flood reach its rate before the first request
        times = run_client(net, keys, FLOOD_REQUESTS)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"flood failed: {err}")
    after = udp_counters(net)
    stats = dict(json.loads(out))
    for name in ("InDatagrams", "RcvbufErrors"):
        stats[name] = after[name] - before[name]
    return times, stats


def measure_new_requester(net: Lan, tmp: Path, keys: Path, text: str,
                          sources: list[str]) -> list[float]:
    """The first request of a requester the daemon has not seen yet, during a flood
    (a fresh daemon each time: it knows no requester)."""
    times = []
    for n in range(NEW_REQUESTER_TRIALS):
        daemon = start_daemon(net, tmp, f"new{n}", text)
        try:
            proc = flood(net, sources, seconds=6.0)
            try:
                time.sleep(0.5)
                times += run_client(net, keys, 1)
                proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            daemon.stop()
    return times


def body(lab: Lab, summary: Summary) -> None:
    keys = lab.tmp / "keys"
    keys.mkdir(mode=0o700)
    for i in range(1, KEYS + 1):
        write_key(keys / f"c{i}.key")
    uri = write_node_xml(lab.tmp / "node.xml", default_guests(prefix="vm", count=KEYS))
    texts = dict(zip(CONFIGS, (config_text(uri, keys, None), config_text(uri, keys, 1),
                               config_text(uri, keys, KEYS)), strict=True))
    net = build_lan(run_prefix(NS_PREFIX), ["h", "g", "x"])
    try:
        _measure(lab, net, keys, texts, summary)
    finally:
        net.destroy()


def _measure(lab: Lab, net: Lan, keys: Path, texts: dict[str, str], summary: Summary) -> None:
    samples: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for n in range(ROUNDS):
        for name in CONFIGS if n % 2 == 0 else CONFIGS[::-1]:
            daemon = start_daemon(net, lab.tmp, f"r{n}", texts[name])
            try:
                run_client(net, keys, 5)  # warm-up (and the requester hint)
                samples[name] += run_client(net, keys, REQUESTS)
            finally:
                daemon.stop()
    stats = {c: Stats.of(samples[c]) for c in CONFIGS}
    added = stats[CONFIGS[2]].median - stats[CONFIGS[1]].median
    added_vs_single = stats[CONFIGS[2]].median - stats[CONFIGS[0]].median
    costs = ring_costs(keys)

    extra = [f"10.231.7.{i}" for i in range(10, 10 + FLOOD_SOURCES)]
    for address in extra:
        net["x"].ip("addr", "add", f"{address}/24", "dev", "eth0")
    daemon = start_daemon(net, lab.tmp, "flood", texts[CONFIGS[2]])
    try:
        run_client(net, keys, 5)
        quiet = Stats.of(run_client(net, keys, FLOOD_REQUESTS))
        one_times, one_rate = measure_flood(net, keys, [])
        many_times, many_rate = measure_flood(net, keys, extra)
        after = Stats.of(run_client(net, keys, FLOOD_REQUESTS))
        drops = daemon.log_text().count("dropped request")
    finally:
        daemon.stop()
    one, many = Stats.of(one_times), Stats.of(many_times)
    new_one = measure_new_requester(net, lab.tmp, keys, texts[CONFIGS[2]], [])
    new_many = measure_new_requester(net, lab.tmp, keys, texts[CONFIGS[2]], extra)

    rows = [[c, stats[c].n, stats[c].median, stats[c].p90, stats[c].max] for c in CONFIGS]
    rows += [["flood: none (50 keys)", quiet.n, quiet.median, quiet.p90, quiet.max],
             [f"flood: 1 source, {one_rate['rate']:.0f}/s", one.n, one.median, one.p90,
              one.max],
             [f"flood: {FLOOD_SOURCES} sources, {many_rate['rate']:.0f}/s", many.n,
              many.median, many.p90, many.max],
             ["after the floods", after.n, after.median, after.p90, after.max]]
    print(table(["status vm50 (in-process client)", "n", "median ms", "p90 ms", "max ms"],
                rows))
    summary.add(f"{KEYS} keys vs 1 key: median {stats[CONFIGS[2]].median:.3f} vs "
                f"{stats[CONFIGS[1]].median:.3f} ms (added {added:+.3f} ms); vs the single-key "
                f"config {stats[CONFIGS[0]].median:.3f} ms (added {added_vs_single:+.3f} ms)")
    summary.add(f"ring in-process: valid request, matching key last of {KEYS}, no hint "
                f"{costs['valid_last_key_us']:.1f} us; forged datagram {costs['forged_us']:.1f} us")
    for label, r in (("1 source", one_rate), (f"{FLOOD_SOURCES} sources", many_rate)):
        summary.add(f"flood {label}: host received {r['InDatagrams']:.0f} UDP datagrams, "
                    f"kernel dropped {r['RcvbufErrors']:.0f} for a full socket buffer")
    summary.add(f"flood 1 source ({one_rate['sent']:.0f} datagrams, {one_rate['rate']:.0f}/s): "
                f"median {one.median:.2f} ms, p90 {one.p90:.2f}, max {one.max:.2f} "
                f"(quiet {quiet.median:.2f} / {quiet.p90:.2f} / {quiet.max:.2f})")
    summary.add(f"flood {FLOOD_SOURCES} sources ({many_rate['sent']:.0f} datagrams, "
                f"{many_rate['rate']:.0f}/s): median {many.median:.2f} ms, p90 {many.p90:.2f}, "
                f"max {many.max:.2f}; daemon drop log lines (rate-limited): {drops}")
    for label, times in (("1-source", new_one), (f"{FLOOD_SOURCES}-source", new_many)):
        summary.add(f"first request of a requester not known yet, during the {label} flood: "
                    + ", ".join(f"{t * 1000:.0f}" for t in times) + " ms")
    summary.add("(a datagram of an unknown requester not tried within the scan budget waits "
                "for its client's retransmission, 2 s)")
    summary.checks += [
        Check(f"(a) added median latency, {KEYS} keys vs 1", added, ADDED_LIMIT_MS, " ms"),
        Check("(b) flood from 1 source: median delay", one.median - quiet.median,
              FLOOD_LIMIT_MS, " ms"),
        Check(f"(b) flood from {FLOOD_SOURCES} sources: median delay",
              many.median - quiet.median, FLOOD_LIMIT_MS, " ms"),
        Check(f"(b) flood from {FLOOD_SOURCES} sources: p90 delay", many.p90 - quiet.p90,
              FLOOD_LIMIT_MS, " ms"),
        Check("(b) new requester during the 1-source flood: worst first request",
              max(new_one) * 1000 - quiet.median, FLOOD_LIMIT_MS, " ms"),
        Check(f"(b) new requester during the {FLOOD_SOURCES}-source flood: worst first "
              "request", max(new_many) * 1000 - quiet.median, FLOOD_LIMIT_MS, " ms"),
        Check("(b) worst request under either flood: max - quiet median",
              max(one.max, many.max) - quiet.median, FLOOD_LIMIT_MS, " ms"),
        Check("(b) datagrams the kernel dropped for a full socket buffer (may include genuine "
              "requests)", float(one_rate["RcvbufErrors"] + many_rate["RcvbufErrors"]), 1.0),
        Check("flood rate reached (shortfall below 10,000/s)",
              max(0.0, FLOOD_RATE - min(one_rate["rate"], many_rate["rate"])), 500.0, "/s"),
    ]
    summary.data = {"stats": stats, "ring_costs_us": costs, "quiet": quiet, "flood_one": one,
                    "flood_many": many, "after": after, "flood_rates": [one_rate, many_rate],
                    "new_requester_one_source_s": new_one,
                    "new_requester_many_sources_s": new_many}


if __name__ == "__main__":
    sys.exit(run_benchmark(NAME, body))
