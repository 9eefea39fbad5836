"""The guest location table at scale: 100 hosts x 50 guests, 500 simultaneous live migrations.

Everything is fed to the pure core (:mod:`guestfence.tracking.locations`) in
process -- no corosync, no libvirt -- so the numbers are the table's own cost:

* lookup time per request (median and p99 over 20,000 requests by name and by
  UUID, measured one by one with ``perf_counter_ns``);
* memory of the filled table (tracemalloc, current size after the build);
* convergence after 500 simultaneous migrations (5 guests from each host to
  the next), in two feeds:
  - *events* (no host cluster): the 2,000 lifecycle events in the lab's order
    (dest STARTED, src SUSPENDED, dest RESUMED, src STOPPED, all MIGRATED),
    interleaved across guests;
  - *announcements* (host cluster): after every one of those events the host
    re-announces its full list (~50 guests), 2,000 announcements in all;
  the time is wall-clock processing from the first input until every moved
  guest has its new owner (checked as each RESUMED arrives and at the end).

Libvirt itself puts the owner change at dest RESUMED, ~0.37 s after
``virsh migrate`` starts (lab notes); the table's time adds to that. The
targets below are our own (the issue asks for "within a second"): there is
no reference implementation to compare with -- the C ``cpg`` backend keeps no
per-event table and re-lists libvirt on every request.

    .venv/bin/python bench/tracking_scale.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import tracemalloc
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Check, Summary

from guestfence.tracking import DomainState, Kind, LocationTable, Migration, acting_host
from guestfence.tracking.locations import PAUSED, RUNNING

HOSTS, GUESTS, MIGRATIONS, LOOKUPS = 100, 50, 500, 20_000
SEED = 1229


def host_name(h: int) -> str:
    return f"h{h:03d}"


def make_guests() -> dict[str, dict[str, DomainState]]:
    """host -> uuid -> state, every guest running."""
    out: dict[str, dict[str, DomainState]] = {}
    for h in range(HOSTS):
        doms: dict[str, DomainState] = {}
        for g in range(GUESTS):
            u = str(uuidlib.UUID(int=(h << 32) | g | (1 << 120)))
            doms[u] = DomainState(f"vm-{h:03d}-{g:02d}", u, RUNNING)
        out[host_name(h)] = doms
    return out


def build(listings: dict[str, dict[str, DomainState]]) -> LocationTable:
    t = LocationTable()
    for host, doms in listings.items():
        t.host_joined(host, 0.0)
        t.announce(host, doms, 0.0, seq=1)
    return t


def measure_lookups(t: LocationTable, targets: list[str]) -> list[float]:
    times: list[float] = []
    clock = time.perf_counter_ns
    for target in targets:
        t0 = clock()
        t.owner(target)
        times.append((clock() - t0) / 1000.0)
    return times


def migrations(listings: dict[str, dict[str, DomainState]]) -> list[tuple[str, str, str, str]]:
    """(uuid, name, src, dst): 5 guests of every host move to the next host."""
    per_host = MIGRATIONS // HOSTS
    moves = []
    for h in range(HOSTS):
        src, dst = host_name(h), host_name((h + 1) % HOSTS)
        for st in list(listings[src].values())[:per_host]:
            moves.append((st.uuid, st.name, src, dst))
    return moves


def event_stream(moves: list[tuple[str, str, str, str]],
                 rng: random.Random) -> list[tuple[float, str, str, str, Kind]]:
    """(sim time, host, uuid, name, kind) in the lab's order per guest, interleaved."""
    offsets = ((0.344, "dst", Kind.STARTED), (0.357, "src", Kind.SUSPENDED),
               (0.368, "dst", Kind.RESUMED), (0.580, "src", Kind.STOPPED))
    out = []
    for u, name, src, dst in moves:
        jitter = rng.uniform(0.0, 0.05)  # "simultaneous": started within 50 ms
        for off, who, kind in offsets:
            out.append((off + jitter, src if who == "src" else dst, u, name, kind))
    out.sort(key=lambda e: e[0])
    return out


def converge_events(t: LocationTable, moves: list[tuple[str, str, str, str]],
                    stream: list[tuple[float, str, str, str, Kind]]) -> float:
    dst_of = {u: dst for u, _, _, dst in moves}
    pending = set(dst_of)
    t0 = time.perf_counter()
    for now, host, u, name, kind in stream:
        t.event(host, u, name, kind, "MIGRATED", now)
        if kind is Kind.RESUMED and acting_host(t.owner(u)) == dst_of[u]:
            pending.discard(u)
    elapsed = time.perf_counter() - t0
    assert not pending, f"{len(pending)} guests without their new owner"
    assert all(acting_host(t.owner(u)) == d for u, d in dst_of.items())
    return elapsed


def converge_announcements(t: LocationTable, listings: dict[str, dict[str, DomainState]],
                           moves: list[tuple[str, str, str, str]],
                           stream: list[tuple[float, str, str, str, Kind]]) -> tuple[float, int]:
    """Each event makes its host re-announce its whole list (host-cluster mode)."""
    state = {h: dict(doms) for h, doms in listings.items()}
    seq = dict.fromkeys(state, 1)
    dst_of = {u: dst for u, _, _, dst in moves}
    pending = set(dst_of)
    entries = 0
    t0 = time.perf_counter()
    for now, host, u, name, kind in stream:
        doms = state[host]
        if kind is Kind.STARTED:
            doms[u] = DomainState(name, u, PAUSED, Migration.IN)
        elif kind is Kind.SUSPENDED:
            doms[u] = DomainState(name, u, PAUSED, Migration.OUT)
        elif kind is Kind.RESUMED:
            doms[u] = DomainState(name, u, RUNNING)
        else:
            del doms[u]
        seq[host] += 1
        t.announce(host, doms, now, seq=seq[host])
        entries += len(doms)
        if kind is Kind.RESUMED and acting_host(t.owner(u)) == dst_of[u]:
            pending.discard(u)
    elapsed = time.perf_counter() - t0
    assert not pending, f"{len(pending)} guests without their new owner"
    assert all(acting_host(t.owner(u)) == d for u, d in dst_of.items())
    return elapsed, entries


def main() -> int:
    summary = Summary("tracking_scale")
    rng = random.Random(SEED)
    listings = make_guests()
    total = HOSTS * GUESTS
    summary.add(f"simulated cluster: {HOSTS} hosts x {GUESTS} guests = {total} guests, "
                f"{MIGRATIONS} simultaneous migrations; pure core, in process")
    summary.add("no reference to compare with (the C cpg backend has no such table); "
                "targets are our own")

    # memory of the filled table
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = build(listings)
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept

    t0 = time.perf_counter()
    table = build(listings)
    build_s = time.perf_counter() - t0

    all_states = [st for doms in listings.values() for st in doms.values()]
    targets = [rng.choice([st.name, st.uuid, st.name.upper()])
               for st in rng.choices(all_states, k=LOOKUPS)]
    measure_lookups(table, targets[:1000])  # warm-up
    lookups = sorted(measure_lookups(table, targets))
    median_us = statistics.median(lookups)
    p99_us = lookups[int(len(lookups) * 0.99)]

    moves = migrations(listings)
    stream = event_stream(moves, rng)
    # lookups while 500 guests are listed on two hosts (after STARTED and SUSPENDED)
    mid = build(listings)
    half = [e for e in stream if e[4] in (Kind.STARTED, Kind.SUSPENDED)]
    for now, host, u, name, kind in half:
        mid.event(host, u, name, kind, "MIGRATED", now)
    moving_targets = [rng.choice([m[0], m[1]]) for m in rng.choices(moves, k=LOOKUPS // 4)]
    mid_lookups = sorted(measure_lookups(mid, moving_targets))
    mid_median_us = statistics.median(mid_lookups)

    ev_s = converge_events(build(listings), moves, stream)
    ann_s, ann_entries = converge_announcements(build(listings), listings, moves, stream)
    last_resumed = max(e[0] for e in stream if e[4] is Kind.RESUMED)

    summary.add(f"build from {HOSTS} announcements: {build_s * 1000:.1f} ms; "
                f"memory {mem / 1e6:.2f} MB ({mem / total:.0f} B per guest)")
    summary.add(f"lookup ({LOOKUPS} by name/UUID): median {median_us:.2f} us, "
                f"p99 {p99_us:.2f} us; guests mid-migration: median {mid_median_us:.2f} us")
    summary.add(f"events feed: {len(stream)} events, all {MIGRATIONS} owners moved after "
                f"{ev_s * 1000:.1f} ms of processing ({ev_s / len(stream) * 1e6:.1f} us/event)")
    summary.add(f"announcement feed: {len(stream)} full announcements ({ann_entries} entries), "
                f"owners moved after {ann_s * 1000:.1f} ms of processing")
    summary.add(f"with libvirt's timing the last owner change happens at dest RESUMED, "
                f"+{last_resumed:.3f} s simulated, plus the processing above")
    summary.data.update(
        hosts=HOSTS, guests_per_host=GUESTS, migrations=MIGRATIONS, lookups=LOOKUPS,
        build_ms=build_s * 1000, memory_bytes=mem, memory_per_guest_bytes=mem / total,
        lookup_median_us=median_us, lookup_p99_us=p99_us,
        lookup_mid_migration_median_us=mid_median_us,
        events=len(stream), events_converge_ms=ev_s * 1000,
        announcements_converge_ms=ann_s * 1000, announcement_entries=ann_entries,
        simulated_last_resumed_s=last_resumed, reference="none",
    )
    summary.checks += [
        Check("median lookup", median_us, 50.0, " us"),
        Check("table memory, 5,000 guests", mem / 1e6, 16.0, " MB"),
        Check("convergence, 500 migrations, events", ev_s, 1.0, " s"),
        Check("convergence, 500 migrations, announcements", ann_s, 1.0, " s"),
    ]
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
