"""`guestfence check` on a large generated topology: 1,000 hosts, 10,000 guests, 1,000 clusters.

Target: the whole command (interpreter start, YAML load, every rule, the
host-loss analysis, JSON output) in under 2 s. No other tool checks these
rules, so there is no reference to compare with; the script prints where the
time goes (load / rules / output) from an in-process run as well.

    .venv/bin/python bench/check_scale.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Check, Summary

from guestfence.lab.ourdaemon import venv_tool

HOSTS, CLUSTERS, MEMBERS, OTHERS_PER_HOST = 1000, 1000, 8, 2
RUNS = 5


def generate() -> str:
    """Hosts in host clusters of 10; each cluster's members spread over distinct hosts."""
    out = ["hosts:"]
    for h in range(HOSTS):
        out.append(f"  - {{name: h{h:04d}, hypervisor: kvm, version: RHEL 8.6, cpus: 64, "
                   f"memory: 256GiB, host_cluster: hc{h // 10}, fence_virtd: true}}")
    out.append("clusters:")
    for c in range(CLUSTERS):
        agents = "[fence_scsi]" if c % 3 == 0 else "[fence_xvm]"
        out += [f"  - name: c{c:04d}", "    os: RHEL 8.6", f"    fence_agents: {agents}",
                "    fence_virtd_mode: host-cluster"]
        if c % 3 == 0:
            out += ["    storage:",
                    f"      - {{iscsi: 'iscsi://192.0.2.{c % 250}:3260/iqn.2026-11.org.example:"
                    f"c{c}/0', persistent_reservations: true, preempt_and_abort: true}}"]
        out.append("    members:")
        for m in range(MEMBERS):
            host = (c * 37 + m * 101) % HOSTS
            out.append(f"      - {{name: c{c:04d}m{m}, host: h{host:04d}, vcpus: 4, "
                       "memory: 8GiB}")
    out.append("guests:")
    for h in range(HOSTS):
        for g in range(OTHERS_PER_HOST):
            out.append(f"  - {{name: o{h:04d}g{g}, host: h{h:04d}, vcpus: 2, memory: 4GiB}}")
    return "\n".join(out) + "\n"


def in_process(path: Path) -> dict[str, float]:
    from guestfence.check.engine import run_checks
    from guestfence.check.loader import load_topology
    from guestfence.check.report_json import render_json

    t0 = time.perf_counter()
    topo = load_topology(str(path))
    t1 = time.perf_counter()
    report = run_checks(topo)
    t2 = time.perf_counter()
    render_json(report)
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "rules_s": t2 - t1, "json_s": t3 - t2,
            "findings": float(len(report.findings))}


def main() -> int:
    summary = Summary("check_scale")
    with tempfile.TemporaryDirectory(prefix="gf-check-bench-") as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(generate())
        guests = CLUSTERS * MEMBERS + HOSTS * OTHERS_PER_HOST
        summary.add(f"topology: {HOSTS} hosts, {CLUSTERS} clusters, {guests} guests, "
                    f"{path.stat().st_size / 1e6:.1f} MB of YAML")
        argv = [venv_tool("guestfence"), "check", str(path), "--format", "json",
                "-o", str(Path(tmp) / "out.json")]
        times = []
        codes = set()
        for _ in range(RUNS):
            t0 = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            times.append(time.monotonic() - t0)
            codes.add(proc.returncode)
            if proc.returncode not in (0, 1):
                print(proc.stderr, file=sys.stderr)
                return 1
        parts = in_process(path)
        median = statistics.median(times)
        summary.add(f"whole command, {RUNS} runs: median {median:.2f} s "
                    f"(min {min(times):.2f}, max {max(times):.2f}); exit codes {sorted(codes)}")
        summary.add(f"in process: load {parts['load_s']:.2f} s, rules + host-loss analysis "
                    f"{parts['rules_s']:.2f} s, JSON {parts['json_s']:.2f} s; "
                    f"{int(parts['findings'])} findings")
        summary.data.update(times=times, parts=parts)
        summary.checks.append(Check("guestfence check, 1,000 hosts / 10,000 guests", median,
                                    2.0, " s"))
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
