"""Our iSCSI target (``guestfence target serve``) against tgt: IOPS, throughput, PR round trip.

Both targets run on this machine, each on its own 127.0.0.1 port with one
256 MiB sparse-file LUN, one after the other; the order alternates between
repetitions and every repetition starts fresh targets.  Every measurement
runs for DURATION seconds.

Load, the same method for both targets:

* reads: libiscsi's ``iscsi-perf`` (C, one session, ``-m`` requests in flight,
  ``-r`` random, ``-b`` blocks per request); it can only read;
* writes (and, as a cross-check, reads): our own load, WRITE(16)/READ(16)
  through :class:`IscsiTransport`, one session and one thread per request in
  flight (queue depth 32 = 32 sessions), so Python's per-command cost is in it;
* PR IN READ KEYS: the median round trip over up to PR_CALLS calls through
  IscsiTransport + PrClient, with one key registered.

Our target syncs every WRITE (``sync="always"``: fdatasync before the status)
and its CLI has no switch for ``on-flush``; tgt's ``rdwr`` backing store does
not sync, so the write figures compare a synced target with an unsynced one.

Targets: ours >= tgt/3 for every IOPS figure; PR READ KEYS round trip < 10x tgt.

    .venv/bin/python bench/target_perf.py [--reps N] [--duration S]
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Check, Summary, ratio, table

from guestfence.lab.ourtarget import OurTarget
from guestfence.lab.tgt import TgtTarget
from guestfence.scsi.iscsi import IscsiTransport
from guestfence.scsi.prclient import PrClient
from guestfence.scsi.transport import Direction

LUN_SIZE = 256 * 1024 * 1024
DURATION = 5.0
REPS = 2
PR_CALLS = 2000
KIB4 = 4096
MIB = 1024 * 1024
SEQ_QD = 4
INITIATOR = "iqn.2026-11.org.guestfence.bench:perf"
PR_KEY = 0x6C9D00FF
READ16, WRITE16 = 0x88, 0x8A

Factory = Callable[[Path], "OurTarget | TgtTarget"]
TARGETS: dict[str, Factory] = {
    "tgt": lambda d: TgtTarget(d, luns=1, lun_size=LUN_SIZE),
    "ours": lambda d: OurTarget(d, luns=1, lun_size=LUN_SIZE, log_level="WARNING"),
}

# (key, label, is an IOPS figure with a target)
FIGURES = [
    ("rr_qd1", "4 KiB random read IOPS, QD 1 (iscsi-perf)", True),
    ("rr_qd32", "4 KiB random read IOPS, QD 32 (iscsi-perf)", True),
    ("rw_qd1", "4 KiB random write IOPS, QD 1 (own load)", True),
    ("rw_qd32", "4 KiB random write IOPS, QD 32 (own load)", True),
    ("own_rr_qd1", "4 KiB random read IOPS, QD 1 (own load)", True),
    ("own_rr_qd32", "4 KiB random read IOPS, QD 32 (own load)", True),
    ("seq_read_mbs", f"1 MiB sequential read MB/s, {SEQ_QD} in flight (iscsi-perf)", False),
    ("seq_write_mbs", f"1 MiB sequential write MB/s, {SEQ_QD} in flight (own load)", False),
    ("pr_read_keys_us", "PR IN READ KEYS round trip, median µs", False),
]


def block_size(t: IscsiTransport) -> tuple[int, int]:
    """(block length, number of blocks) from READ CAPACITY(16)."""
    cdb = bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    r = t.execute(cdb, Direction.FROM_DEVICE, data_in_length=32)
    assert r.status == 0, r
    last, length = struct.unpack(">QI", r.data[:12])
    return length, last + 1


def rw16(opcode: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", opcode, 0, lba, blocks, 0, 0)


def own_load(url: str, *, qd: int, write: bool, rand: bool, size: int,
             duration: float) -> dict[str, float]:
    """qd sessions, one thread each, one command in flight per session, for ``duration`` s."""
    sessions = [IscsiTransport(url, f"{INITIATOR}-load{i}", connect_timeout=10) for i in range(qd)]
    try:
        bs, nblocks = block_size(sessions[0])
        per = size // bs
        slots = nblocks // per
        payload = random.randbytes(size)
        counts = [0] * qd
        errors: list[str] = []
        start = threading.Barrier(qd + 1)
        stop_at = [0.0]

        def worker(i: int) -> None:
            t, rng = sessions[i], random.Random(i)
            region = slots // qd
            slot = i * region
            start.wait()
            n = 0
            while time.monotonic() < stop_at[0]:
                if rand:
                    slot = rng.randrange(slots)
                else:
                    slot = i * region + (slot - i * region + 1) % region
                if write:
                    r = t.execute(rw16(WRITE16, slot * per, per), Direction.TO_DEVICE,
                                  data_out=payload)
                else:
                    r = t.execute(rw16(READ16, slot * per, per), Direction.FROM_DEVICE,
                                  data_in_length=size)
                if r.status != 0:
                    errors.append(f"status {r.status:#x} sense {r.sense.hex()}")
                    return
                n += 1
            counts[i] = n

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(qd)]
        for th in threads:
            th.start()
        stop_at[0] = time.monotonic() + duration
        t0 = time.monotonic()
        start.wait()
        for th in threads:
            th.join(duration + 30)
        took = time.monotonic() - t0
        if errors or any(th.is_alive() for th in threads):
            raise RuntimeError(f"own load on {url}: {errors[:3] or 'a worker hung'}")
        ops = sum(counts)
        return {"iops": ops / took, "mbs": ops * size / took / 1e6}
    finally:
        for s in sessions:
            s.close()


_AVG = re.compile(r"iops average (\d+) \((\d+) MB/s\)")


def iscsi_perf(url: str, *, qd: int, rand: bool, size: int, bs: int,
               duration: float) -> dict[str, float]:
    """``iscsi-perf`` for ``duration`` s (then SIGINT); its last 'iops average' line."""
    argv = ["iscsi-perf", "-i", f"{INITIATOR}-perf", "-m", str(qd), "-b", str(size // bs)]
    if rand:
        argv.append("-r")
    proc = subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(duration + 0.2)  # it prints a running average once a second
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = _AVG.findall(out.decode(errors="replace"))
    if not found:
        raise RuntimeError(f"iscsi-perf gave no average: {out.decode(errors='replace')[-500:]}")
    iops, mbs = found[-1]
    return {"iops": float(iops), "mbs": float(mbs) * 1.048576}  # it prints MiB/s as MB/s


def pr_round_trip(url: str, calls: int, duration: float) -> dict[str, float]:
    with IscsiTransport(url, f"{INITIATOR}-pr", connect_timeout=10) as t:
        pr = PrClient(t)
        pr.register_and_ignore(PR_KEY)
        assert PR_KEY in pr.read_keys().keys
        times = []
        deadline = time.monotonic() + duration
        while len(times) < calls and time.monotonic() < deadline:
            t0 = time.perf_counter()
            pr.read_keys()
            times.append(time.perf_counter() - t0)
        pr.unregister(PR_KEY)
    return {"median_us": statistics.median(times) * 1e6, "calls": len(times)}


def measure(target: OurTarget | TgtTarget, duration: float) -> dict[str, float]:
    url = target.url(1)
    with IscsiTransport(url, f"{INITIATOR}-probe", connect_timeout=10) as t:
        bs, _ = block_size(t)
    r: dict[str, float] = {}
    # writes first, so the reads afterwards find data, not holes, where it was written
    r["seq_write_mbs"] = own_load(url, qd=SEQ_QD, write=True, rand=False, size=MIB,
                                  duration=duration)["mbs"]
    r["rw_qd1"] = own_load(url, qd=1, write=True, rand=True, size=KIB4, duration=duration)["iops"]
    r["rw_qd32"] = own_load(url, qd=32, write=True, rand=True, size=KIB4,
                            duration=duration)["iops"]
    r["seq_read_mbs"] = iscsi_perf(url, qd=SEQ_QD, rand=False, size=MIB, bs=bs,
                                   duration=duration)["mbs"]
    r["rr_qd1"] = iscsi_perf(url, qd=1, rand=True, size=KIB4, bs=bs, duration=duration)["iops"]
    r["rr_qd32"] = iscsi_perf(url, qd=32, rand=True, size=KIB4, bs=bs,
                              duration=duration)["iops"]
    r["own_rr_qd1"] = own_load(url, qd=1, write=False, rand=True, size=KIB4,
                               duration=duration)["iops"]
    r["own_rr_qd32"] = own_load(url, qd=32, write=False, rand=True, size=KIB4,
                                duration=duration)["iops"]
    r["pr_read_keys_us"] = pr_round_trip(url, PR_CALLS, duration)["median_us"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--duration", type=float, default=DURATION, help="seconds per measurement")
    args = ap.parse_args()
    summary = Summary("target_perf")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
    with tempfile.TemporaryDirectory(prefix="gf-target-perf-") as tmp:
        for rep in range(args.reps):
            order = list(TARGETS) if rep % 2 == 0 else list(reversed(TARGETS))
            for name in order:
                with TARGETS[name](Path(tmp) / f"{name}-{rep}") as target:
                    result = measure(target, args.duration)
                runs[name].append(result)
                print(f"rep {rep + 1} {name}: " + ", ".join(f"{k} {v:.0f}"
                                                          for k, v in result.items()), flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for name, rs in runs.items()}
    rows = []
    for key, label, _ in FIGURES:
        ours, tgt = med["ours"][key], med["tgt"][key]
        rows.append([label, f"{ours:.0f}", f"{tgt:.0f}", f"{ratio(ours, tgt):.2f}"])
    summary.add(f"median of {args.reps} repetition(s), {args.duration:g} s per measurement; "
                "ours runs sync=always (fdatasync per WRITE), tgt rdwr does not sync")
    for line in table(["figure", "ours", "tgt", "ours/tgt"], rows).splitlines():
        summary.add(line)
    for key, label, is_iops in FIGURES:
        ours, tgt = med["ours"][key], med["tgt"][key]
        if is_iops:
            summary.checks.append(Check(f"{label}: tgt/ours (ours >= tgt/3)", ratio(tgt, ours),
                                        3.0, "x", ok=ours >= tgt / 3))
    ours_pr, tgt_pr = med["ours"]["pr_read_keys_us"], med["tgt"]["pr_read_keys_us"]
    summary.checks.append(Check(f"PR READ KEYS round trip ours/tgt ({ours_pr:.0f} vs "
                                f"{tgt_pr:.0f} µs)", ratio(ours_pr, tgt_pr), 10.0, "x"))
    summary.data.update(runs=runs, median=med, duration_s=args.duration, reps=args.reps,
                        lun_size=LUN_SIZE, pr_calls=PR_CALLS,
                        ours_sync="always (fdatasync per WRITE; no CLI switch for on-flush)",
                        tgt_backing_store="rdwr (no sync)")
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
