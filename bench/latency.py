"""Whole-process latency of ``fence_xvm -o status -H guest1``: four client/daemon pairings.

Each daemon (the Debian C fence_virtd and our guestfenced) runs in its own
namespace, multicast on ``lo``.  Inside each namespace hyperfine (``-N``, 3
warm-up runs, 30 runs) times the C and our fence_xvm against that daemon.
This is repeated in ``ROUNDS`` rounds that alternate between the daemons, so
drift in the (shared, noisy) machine's load hits both sides of a ratio alike;
the statistics pool the rounds and the per-round ratios are printed as well.
``-o metadata`` and ``-V`` of both clients (no network) are the process-start
controls.  Peak RSS (``VmHWM``) of both daemons is read after the runs.

Targets: (a) our daemon serves the C client within 1.5x the C daemon's median;
(b) our fence_xvm against our daemon has a median under 80 ms.

    .venv/bin/python bench/latency.py
"""

from __future__ import annotations

import sys
from collections import defaultdict

from common import (
    IMPLS,
    LABEL,
    RESULTS_DIR,
    Check,
    Impl,
    Lab,
    Stats,
    Summary,
    client_exe,
    hyperfine,
    pairing,
    ratio,
    run_benchmark,
    table,
    timed_run,
    vm_hwm_kib,
)

NAME = "latency"
ROUNDS = 3
STATUS_ARGS = ("-o", "status", "-H", "guest1")
DAEMON_RATIO_LIMIT = 1.5
OUR_CLIENT_LIMIT_MS = 80.0
CONTROLS: dict[str, tuple[str, ...]] = {"-o metadata": ("-o", "metadata"), "-V": ("-V",)}
"""Process-start controls (no network).  Our ``-o metadata`` imports more than ``status``."""
INTERPRETER = "python -c pass (bare venv interpreter)"

Times = dict[str, list[float]]


def control_name(client: Impl, control: str) -> str:
    return f"{LABEL[client]} client {control}"


def check_answers(lab: Lab, daemon: Impl) -> None:
    """One status call per client first: both must get ``Status: ON`` from this daemon."""
    ns = lab.namespaces[daemon]
    for client in IMPLS:
        r = timed_run(ns, lab.client_argv(client, *STATUS_ARGS), timeout=40)
        if (r.rc, r.stdout.strip()) != (0, "Status: ON"):
            raise RuntimeError(f"{pairing(client, daemon)}: rc {r.rc}, {r.stdout!r} {r.stderr!r}")


def hyperfine_step(lab: Lab, daemon: Impl, commands: dict[str, list[str]], tag: str) -> Times:
    """One hyperfine call inside ``daemon``'s namespace; its JSON kept in bench/results."""
    json_path = RESULTS_DIR / f"{NAME}-hyperfine-{tag}.json"
    return hyperfine(lab.namespaces[daemon], commands, json_path)


def measure_status(lab: Lab) -> list[Times]:
    """``ROUNDS`` rounds; in each, every client runs against both daemons back to back.

    The daemon order flips every round (C first, then ours first, ...).
    """
    rounds: list[Times] = []
    for n in range(ROUNDS):
        order = IMPLS if n % 2 == 0 else IMPLS[::-1]
        times: Times = {}
        for client in IMPLS:
            for daemon in order:
                cmd = {pairing(client, daemon): lab.client_argv(client, *STATUS_ARGS)}
                tag = f"r{n + 1}-{client}-client-{daemon}-daemon"
                times |= hyperfine_step(lab, daemon, cmd, tag)
        rounds.append(times)
    return rounds


def measure_controls(lab: Lab) -> Times:
    commands: dict[str, list[str]] = {}
    for control, args in CONTROLS.items():
        commands |= {control_name(c, control): [client_exe(c), *args] for c in IMPLS}
    commands[INTERPRETER] = [sys.executable, "-c", "pass"]
    return hyperfine_step(lab, "c", commands, "controls")


def pooled(rounds: list[Times]) -> dict[str, Stats]:
    merged: defaultdict[str, list[float]] = defaultdict(list)
    for times in rounds:
        for name, values in times.items():
            merged[name] += values
    return {name: Stats.of(values) for name, values in merged.items()}


def round_ratios(rounds: list[Times], client: Impl) -> list[float]:
    """Per round: median with our daemon over median with the C daemon, for one client."""
    return [ratio(Stats.of(t[pairing(client, "ours")]).median,
                  Stats.of(t[pairing(client, "c")]).median) for t in rounds]


def status_rows(stats: dict[str, Stats]) -> list[list[object]]:
    """One row per pairing: ratios to C/C and to the same client against the C daemon."""
    base = stats[pairing("c", "c")].median
    rows: list[list[object]] = []
    for client in IMPLS:
        same_client = stats[pairing(client, "c")].median
        for daemon in IMPLS:
            s = stats[pairing(client, daemon)]
            rows.append([pairing(client, daemon), s.median, s.p90, s.min, s.max,
                         ratio(s.median, base), ratio(s.median, same_client)])
    return rows


def print_tables(stats: dict[str, Stats], controls: dict[str, Stats]) -> list[list[object]]:
    rows = status_rows(stats)
    print(f"\nfence_xvm -o status -H guest1, ms, {ROUNDS} rounds x 30 runs pooled "
          "(x C/C: over C client / C daemon; x same client: over that client / C daemon)")
    print(table(["pairing", "median", "p90", "min", "max", "x C/C", "x same client"], rows))
    print("\nprocess-start controls (no network), ms")
    print(table(["command", "median", "p90", "min", "max"],
                [[n, s.median, s.p90, s.min, s.max] for n, s in controls.items()]))
    return rows


def summarize(stats: dict[str, Stats], controls: dict[str, Stats], rounds: list[Times],
              rss: dict[Impl, int | None], summary: Summary) -> None:
    for row in print_tables(stats, controls):
        summary.add(f"{row[0]:27s} median {row[1]:6.2f} ms  p90 {row[2]:6.2f} ms  "
                    f"x{row[5]:.2f} of C/C")
    for client in IMPLS:
        per_round = ", ".join(f"{r:.2f}" for r in round_ratios(rounds, client))
        summary.add(f"{LABEL[client]} client, our daemon / C daemon per round: {per_round}")
    for client in IMPLS:
        start = controls[control_name(client, "-V")].median
        summary.add(f"{LABEL[client]} client -V {start:.2f} ms; status minus -V: C daemon "
                    f"{stats[pairing(client, 'c')].median - start:.2f} ms, ours "
                    f"{stats[pairing(client, 'ours')].median - start:.2f} ms")
    meta = {c: controls[control_name(c, "-o metadata")].median for c in IMPLS}
    summary.add(f"-o metadata: C {meta['c']:.2f} ms, ours {meta['ours']:.2f} ms; bare "
                f"interpreter {controls[INTERPRETER].median:.2f} ms")
    summary.add("peak RSS (VmHWM): " + ", ".join(
        f"{LABEL[d]} daemon {_mib(rss[d])}" for d in IMPLS))


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def body(lab: Lab, summary: Summary) -> None:
    pids: dict[Impl, int] = {}
    for daemon in IMPLS:
        lab.namespaces[daemon] = lab.namespace(f"{daemon}d")
        pids[daemon] = lab.start_daemon(daemon, lab.namespaces[daemon])
        check_answers(lab, daemon)
    rounds = measure_status(lab)
    controls = {n: Stats.of(t) for n, t in measure_controls(lab).items()}
    rss: dict[Impl, int | None] = {d: vm_hwm_kib(pids[d]) for d in IMPLS}
    stats = pooled(rounds)
    summarize(stats, controls, rounds, rss, summary)

    cc, co = stats[pairing("c", "c")], stats[pairing("c", "ours")]
    oo = stats[pairing("ours", "ours")]
    summary.checks += [
        Check("(a) C client: our daemon / C daemon median", ratio(co.median, cc.median),
              DAEMON_RATIO_LIMIT, "x"),
        Check("(b) our client / our daemon median", oo.median, OUR_CLIENT_LIMIT_MS, " ms"),
    ]
    summary.data = {
        "rounds": ROUNDS,
        "stats": stats,
        "controls": controls,
        "per_round_ratio_ours_over_c_daemon": {LABEL[c]: round_ratios(rounds, c) for c in IMPLS},
        "vm_hwm_kib": {LABEL[d]: rss[d] for d in IMPLS},
    }


if __name__ == "__main__":
    sys.exit(run_benchmark(NAME, body))
