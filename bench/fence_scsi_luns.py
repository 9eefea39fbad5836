"""Fencing one node of three across 1, 10 and 50 LUNs on tgt: ours against the reference.

The reference is fence-agents' fence_scsi sequence for ``off`` (spec: status,
am-I-registered, REGISTER AND IGNORE (with main's self-preempt when the key was
already registered), READ KEYS, preempt, verify with READ KEYS and READ
RESERVATION, final status poll; TEST UNIT READY first), device
after device, sent through the same libiscsi sessions as ours. sg_persist
would add a process start per command; this reference leaves that out, so
it is the best the serial design can do. tgt rejects PREEMPT AND ABORT, so
both use PREEMPT.

Ours is what `fence_scsi -o off` does: status on every device, fence (verified),
status again, every step on all devices in parallel. Both run on sessions
that are already logged in; one extra line measures the whole agent process,
logins included, for 50 LUNs.

Target: ours under 1 s for 50 LUNs.

    .venv/bin/python bench/fence_scsi_luns.py
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
from guestfence.lab.tgt import TgtTarget
from guestfence.scsi.fencing import SharedStorage
from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.prclient import WERO, PrClient
from guestfence.scsi.transport import Borrowed

NODES = {"node1": 0x6C9D0001, "node2": 0x6C9D0002, "node3": 0x6C9D0003}
COUNTS = (1, 10, 50)
ROUNDS = 5
VICTIM, FENCER = "node1", "node3"


def reference_off(clients: list[PrClient], own: int, victim: int) -> None:
    """fence-agents' (main) per-device sequence for off, one device after the other."""
    for c in clients:
        c.test_unit_ready()
        c.read_keys()  # initial status
        registered = own in c.read_keys().keys  # are we registered?
        c.register_and_ignore(own)
        if registered:  # maybe a stale nexus: preempt our own key, register again
            c.preempt(own, own, WERO)
            held = c.read_reservation().reservation
            if held is None or held.key != own:
                c.register_and_ignore(own)
        c.read_keys()
        if victim in c.read_keys().keys:
            c.preempt(own, victim, WERO)  # PREEMPT AND ABORT on a target that has it
        c.read_keys()  # verify: victim gone
        c.read_reservation()  # verify: a reservation exists
        c.read_keys()  # final status poll


def ours_off(storage: SharedStorage, own: int, victim: int) -> None:
    assert storage.is_registered(victim)
    storage.fence(own, victim)
    assert not storage.is_registered(victim)


def measure(target: TgtTarget, luns: int) -> dict[str, float]:
    urls = [target.url(n) for n in range(1, luns + 1)]
    sessions = {(node, url): IscsiTransport(url, f"iqn.2026-11.org.guestfence.bench:{node}",
                                            isid_seed=node, connect_timeout=10)
                for node in NODES for url in urls}
    try:
        def storage(node: str) -> SharedStorage:
            return SharedStorage(urls, lambda u: Borrowed(sessions[(node, u)]),
                                 preempt_fallback=True)

        def unfence_all() -> None:
            for node, key in NODES.items():
                storage(node).unfence(key)

        ours, ref = [], []
        fencer_clients = [PrClient(Borrowed(sessions[(FENCER, u)])) for u in urls]
        for _ in range(ROUNDS):
            unfence_all()
            t0 = time.perf_counter()
            ours_off(storage(FENCER), NODES[FENCER], NODES[VICTIM])
            ours.append(time.perf_counter() - t0)
            unfence_all()
            t0 = time.perf_counter()
            reference_off(fencer_clients, NODES[FENCER], NODES[VICTIM])
            ref.append(time.perf_counter() - t0)
        return {"ours_s": statistics.median(ours), "reference_s": statistics.median(ref)}
    finally:
        for s in sessions.values():
            s.close()


def agent_process(target: TgtTarget, luns: int, tmp: Path) -> float:
    """The whole `fence_scsi -o off` process for ``luns`` LUNs: start-up, logins, fencing."""
    urls = ",".join(target.url(n) for n in range(1, luns + 1))

    def run(node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_tool("fence_scsi"), "-d", urls, "--preempt-fallback", "--state-dir",
             str(tmp / node), "--initiator-name", f"iqn.2026-11.org.guestfence.bench:{node}-p",
             *args], capture_output=True, text=True, timeout=120, check=False)

    for node, key in NODES.items():
        done = run(node, "-o", "on", "-k", f"{key:x}")
        assert done.returncode == 0, done.stderr
    t0 = time.perf_counter()
    done = run(FENCER, "-o", "off", "-k", f"{NODES[VICTIM]:x}")
    took = time.perf_counter() - t0
    assert done.returncode == 0 and done.stdout == "Success: Powered OFF\n", done.stderr
    return took


def main() -> int:
    summary = Summary("fence_scsi_luns")
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gf-scsi-bench-") as tmp, \
            TgtTarget(Path(tmp) / "tgt", luns=max(COUNTS)) as target:
        for luns in COUNTS:
            r = measure(target, luns)
            results[luns] = r
            summary.add(f"{luns:>2} LUN(s): ours {r['ours_s'] * 1000:7.1f} ms, reference "
                        f"(serial) {r['reference_s'] * 1000:7.1f} ms, ratio ours/reference "
                        f"{r['ours_s'] / r['reference_s']:.2f} (median of {ROUNDS})")
        process = agent_process(target, max(COUNTS), Path(tmp))
        summary.add(f"whole fence_scsi -o off process, {max(COUNTS)} LUNs, fresh logins: "
                    f"{process * 1000:.0f} ms")
    summary.data.update(results={str(k): v for k, v in results.items()},
                        agent_process_s=process)
    summary.checks.append(Check("ours, fence one node across 50 LUNs", results[50]["ours_s"],
                                1.0, " s"))
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
