"""A legitimate ``fence_xvm -o status`` while 7 requests with unreachable call-backs are pending.

Each daemon runs in its own namespace, which also holds a "black hole": an
address routed over a veth into a sink namespace, with a permanent neighbour
entry, so a call-back SYN to it leaves and is never answered.  Seven
misbehaving clients (``guestfence.lab.badclient --mode normal``, distinct
seqnos) each send one signed status request whose call-back address is the
black hole.  Right after they have sent, a legitimate client is timed.

* our daemon: every call-back runs in its own task, so the legitimate request
  is served at once.  Target: under 200 ms, for the C client and for ours.
* the C daemon: one request at a time, ``connect()`` with a 5 s limit, so 7
  datagrams stall it for 35 s and the real C fence_xvm (``-t 30``) times out
  after ~30 s (rc 1).  That is the expected result; this part takes ~35 s.

The number of call-backs stuck in SYN-SENT (``ss``) is recorded as well, to
show the bad requests really were in flight while the legitimate one ran.

    .venv/bin/python bench/blocking.py
"""

from __future__ import annotations

import subprocess
import sys
import time

from common import (
    IMPLS,
    LABEL,
    Check,
    Impl,
    Lab,
    Summary,
    Timed,
    pairing,
    run_benchmark,
    table,
    timed_run,
)

from guestfence.lab.netns import Namespace

NAME = "blocking"
BAD_REQUESTS = 7
LEGIT_LIMIT_MS = 200.0
C_LEGIT_TIMEOUT_S = 30
STATUS_ARGS = ("-o", "status", "-H", "guest1")
ANSWER = "Status: ON"


def send_bad_requests(lab: Lab, ns: Namespace, blackhole: str) -> None:
    """Start the misbehaving clients together and wait until each has sent its datagram."""
    procs = [
        ns.popen([sys.executable, "-m", "guestfence.lab.badclient", "--key", str(lab.key),
                  "--mode", "normal", "--op", "status", "--domain", "guest1",
                  "--advertise-addr", blackhole, "--advertise-port", "1229",
                  "--seqno", str(1000 + i)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(BAD_REQUESTS)
    ]
    for p in procs:
        out, err = p.communicate(timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"badclient failed (rc {p.returncode}): {out}{err}")


def syn_sent(ns: Namespace, address: str) -> int:
    """TCP connections in ``ns`` still waiting for a SYN-ACK from ``address``."""
    proc = ns.run(["ss", "-Htn", "state", "syn-sent", "dst", address],
                  capture_output=True, text=True, check=False)
    return len(proc.stdout.splitlines())


def legit(lab: Lab, ns: Namespace, client: Impl, *extra: str) -> Timed:
    """One legitimate status call, timed from outside (``ip netns exec`` included)."""
    return timed_run(ns, lab.client_argv(client, *extra, *STATUS_ARGS), timeout=60)


def ours_under_attack(lab: Lab, summary: Summary) -> dict[str, object]:
    ns = lab.namespace("oursd")
    blackhole = lab.blackhole(ns)
    lab.start_daemon("ours", ns, debug=1)
    baseline = {c: legit(lab, ns, c) for c in IMPLS}
    send_bad_requests(lab, ns, blackhole)
    pending_before = syn_sent(ns, blackhole)
    during = {c: legit(lab, ns, c) for c in IMPLS}
    pending_after = syn_sent(ns, blackhole)
    failed_during = _callback_failures(lab)
    handled = _wait_callback_failures(lab, BAD_REQUESTS, timeout=20.0)

    rows = [[pairing(c, "ours"), baseline[c].seconds * 1000, during[c].seconds * 1000,
             during[c].rc, during[c].stdout.strip()] for c in IMPLS]
    print(f"\nour daemon, {BAD_REQUESTS} unreachable call-backs pending (ms)")
    print(table(["legitimate client", "alone", "during", "rc", "output"], rows))
    summary.add(f"our daemon: call-backs in SYN-SENT before/after the legitimate calls: "
                f"{pending_before}/{pending_after}; failed while they ran: {failed_during}; "
                f"failed in the end: {handled}/{BAD_REQUESTS}")
    for c in IMPLS:
        summary.add(f"{pairing(c, 'ours')}: alone {baseline[c].seconds * 1000:6.1f} ms, "
                    f"with {BAD_REQUESTS} pending {during[c].seconds * 1000:6.1f} ms "
                    f"(rc {during[c].rc})")
        summary.checks.append(Check(
            f"{pairing(c, 'ours')} with {BAD_REQUESTS} unreachable call-backs pending",
            during[c].seconds * 1000, LEGIT_LIMIT_MS, " ms",
            ok=_answered(during[c]) and during[c].seconds * 1000 < LEGIT_LIMIT_MS))
    return {"baseline": baseline, "during": during, "syn_sent_before": pending_before,
            "syn_sent_after": pending_after, "callback_failed_during": failed_during,
            "callback_failed_total": handled}


def c_under_attack(lab: Lab, summary: Summary) -> dict[str, object]:
    ns = lab.namespace("cd")
    blackhole = lab.blackhole(ns)
    lab.start_daemon("c", ns)
    baseline = legit(lab, ns, "c")
    send_bad_requests(lab, ns, blackhole)
    pending = syn_sent(ns, blackhole)
    print(f"\nC daemon: {BAD_REQUESTS} bad requests sent, timing the C fence_xvm "
          f"-t {C_LEGIT_TIMEOUT_S} (about {C_LEGIT_TIMEOUT_S} s) ...", flush=True)
    during = legit(lab, ns, "c", "-t", str(C_LEGIT_TIMEOUT_S))
    out = " ".join((during.stdout + during.stderr).split())
    print(table(["legitimate client", "alone ms", "during s", "rc", "output"],
                [[pairing("c", "c"), baseline.seconds * 1000, during.seconds, during.rc,
                  out[:60]]]))
    summary.add(f"C daemon: call-backs in SYN-SENT before the legitimate call: {pending} "
                f"(serial: one at a time)")
    summary.add(f"{pairing('c', 'c')}: alone {baseline.seconds * 1000:.1f} ms, with "
                f"{BAD_REQUESTS} pending {during.seconds:.1f} s, rc {during.rc} "
                f"({'answered' if _answered(during) else 'no answer: ' + out[:50]})")
    return {"baseline": baseline, "during": during, "syn_sent_before": pending}


def _answered(r: Timed) -> bool:
    return r.rc == 0 and r.stdout.strip().splitlines()[-1:] == [ANSWER]


def _callback_failures(lab: Lab) -> int:
    assert lab.our_daemon is not None
    return lab.our_daemon.log_text().count("outcome=callback-failed")


def _wait_callback_failures(lab: Lab, count: int, timeout: float) -> int:
    """Wait until our daemon has logged ``count`` failed call-backs; return how many it did."""
    deadline = time.monotonic() + timeout
    while _callback_failures(lab) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return _callback_failures(lab)


def body(lab: Lab, summary: Summary) -> None:
    ours = ours_under_attack(lab, summary)
    c = c_under_attack(lab, summary)
    summary.data = {"bad_requests": BAD_REQUESTS, "ours_daemon": ours, "c_daemon": c,
                    "labels": LABEL}


if __name__ == "__main__":
    sys.exit(run_benchmark(NAME, body))
