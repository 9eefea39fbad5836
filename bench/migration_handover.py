"""Live-migration hand-over: from the migration call returning to the new owner answering.

Two hosts, each a private libvirtd with a real QEMU (TCG) guest of 32 MiB,
migrated back and forth with libvirt's migrate API (what ``virsh migrate
--live`` calls); a guestfenced per host in ``multi-libvirt`` mode
(``host_name`` set, both on one multicast group). Right after each migration
call returns, the Debian C ``fence_xvm -o status`` is sent from a third
namespace until it is answered "on" by the new owner's daemon (checked in
that daemon's request log; the old owner must not have answered). The time
includes one request round trip (a C fence_xvm process, multicast, call-back);
the same round trip in steady state is measured too, and the difference is
what the hand-over adds.

There is no reference implementation: the C fence_virtd has no mode that
follows migrations without a host cluster.

    .venv/bin/python bench/migration_handover.py [MIGRATIONS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NS_PREFIX, Check, Summary, preflight

from guestfence.lab.cfence import FENCE_XVM, write_key
from guestfence.lab.hostslab import HostsLab
from guestfence.lab.netns import LabError
from guestfence.lab.ourdaemon import daemon_config_text

GUEST = "mover"
MIGRATIONS = 8
BASELINE = 8
TARGET_S = 1.0


def status_lines(lab: HostsLab, host: str) -> int:
    return sum(f"target={GUEST} action=status " in x
               for x in lab.daemons[host].request_lines())


def wait_lines(lab: HostsLab, host: str, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while status_lines(lab, host) < count:
        if time.monotonic() > deadline:
            raise LabError(f"{host}'s daemon never logged request {count}:\n{lab.logs()}")
        time.sleep(0.005)


def status_round_trip(lab: HostsLab, key: Path) -> tuple[bool, float]:
    """One C fence_xvm status; (answered 'on', seconds)."""
    assert lab.net is not None
    t0 = time.monotonic()
    r = lab.net["g"].run([FENCE_XVM, "-k", str(key), "-o", "status", "-H", GUEST, "-t", "3"],
                         capture_output=True, text=True, timeout=30)
    return (r.returncode, r.stdout.strip()) == (0, "Status: ON"), time.monotonic() - t0


def handover(lab: HostsLab, key: Path, src: str, dst: str) -> tuple[float, float, int]:
    """Migrate src -> dst; (migrate call s, hand-over s, requests needed)."""
    before = {h: status_lines(lab, h) for h in lab.host_names}
    seconds = lab.labs[src].migrate(GUEST, lab.labs[dst])
    t0 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        ok, _ = status_round_trip(lab, key)
        if ok:
            break
        if time.monotonic() - t0 > 30:
            raise LabError(f"no answer after the migration to {dst}:\n{lab.logs()}")
    took = time.monotonic() - t0
    wait_lines(lab, dst, before[dst] + 1)
    if status_lines(lab, src) != before[src]:
        raise LabError(f"the old owner {src} answered after the migration:\n{lab.logs()}")
    return seconds, took, tries


def main() -> int:
    preflight()
    count = int(sys.argv[1]) if len(sys.argv) > 1 else MIGRATIONS
    summary = Summary("migration_handover")
    with tempfile.TemporaryDirectory(prefix="gfbench-mig-") as tmp:
        key = write_key(Path(tmp) / "fence_xvm.key")
        with HostsLab(Path(tmp) / "lab", ns_prefix=NS_PREFIX) as lab:
            for host in lab.host_names:
                lab.daemon(host, daemon_config_text(
                    str(key), [], interface="eth0", backend="multi-libvirt", host_name=host,
                    hosts=lab.hosts_block()), debug=0)
            lab.labs["h1"].define_and_start(GUEST, memory_mib=32)
            baseline = []
            for _ in range(BASELINE):
                ok, rtt = status_round_trip(lab, key)
                if not ok:
                    raise LabError(f"steady-state status failed:\n{lab.logs()}")
                baseline.append(rtt)
            migrate_s, handover_s, tries = [], [], []
            for i in range(count):
                src, dst = ("h1", "h2") if i % 2 == 0 else ("h2", "h1")
                m, h, n = handover(lab, key, src, dst)
                migrate_s.append(m)
                handover_s.append(h)
                tries.append(n)
    base = statistics.median(baseline)
    med = statistics.median(handover_s)
    summary.add(f"{count} live migrations of a 32 MiB TCG guest between two namespaced "
                "libvirtd (multi-libvirt mode, a daemon per host, one multicast group)")
    summary.add(f"migrate call: median {statistics.median(migrate_s):.3f} s "
                f"(min {min(migrate_s):.3f}, max {max(migrate_s):.3f})")
    summary.add(f"call returned -> new owner answered 'on': median {med * 1000:.0f} ms "
                f"(min {min(handover_s) * 1000:.0f}, max {max(handover_s) * 1000:.0f}); "
                f"requests needed: {max(tries)} at most")
    summary.add(f"steady-state status round trip (C fence_xvm): median {base * 1000:.0f} ms; "
                f"hand-over beyond one round trip: {(med - base) * 1000:.0f} ms")
    summary.add("reference: none (fence_virtd has no host-cluster-free migration mode)")
    summary.data.update(migrations=count, migrate_s=migrate_s, handover_s=handover_s,
                        requests=tries, baseline_s=baseline, handover_median_s=med,
                        baseline_median_s=base, reference="none")
    summary.checks.append(Check("hand-over (median, incl. one round trip)", med * 1000,
                                TARGET_S * 1000, " ms"))
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
