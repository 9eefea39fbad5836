"""Pacemaker fencing a guest: ``stonith_admin --fence node3`` until success, ours against C.

One ``guestfence lab`` (three pacemaker nodes, two hosts, our target).  The
fence-xvm device fences node3, whose guest lives on host2, in two setups that
alternate round by round:

* ours: our fence_xvm (the lab's default) against our guestfenced on host2;
* C: the Debian fence_xvm 4.12.1 as the cluster's agent (the nodes' private
  /usr/sbin/fence_xvm is pointed at the C binary) against the C fence_virtd on
  host2, same key, same test-driver node file.

host1 keeps our guestfenced (node3 is not its guest, so it stays silent).  A
round times ``stonith_admin --fence node3`` from node1, checks that the
guest is off, then brings node3 back (power on, stack, unfencing), which is
not timed.  Reported: the median (and range) per setup and the ratio.

Target: ours under 500 ms (the fencer's own timeouts are in seconds).  The ratio
to the C pair is printed, not judged: both finish in well under a tenth of a
second, and the difference is mostly the Python agent's process start (about
40 ms, see bench/latency.py's controls) against a C binary's.

With ``--qemu`` the hosts run a private libvirtd with real QEMU guests (both
daemons then talk to the same libvirtd, and "off" waits for qemu to exit).

    .venv/bin/python bench/lab_fence.py [--qemu] [ROUNDS]   (default 3 per setup)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from common import Check, Stats, Summary, ratio, table

from guestfence.lab.cfence import FENCE_VIRTD, CDaemon, write_c_config
from guestfence.lab.guestlab import GuestLab
from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.testdriver import node_uri

NAME = "lab_fence"
VICTIM = "node3"
HOST = "host2"
C_AGENT = "/usr/sbin/fence_virt"  # the Debian fence_xvm is a symlink to it (argv[0] decides)
LIMIT_MS = 500.0


def point_agent(lab: GuestLab, c_agent: bool) -> None:
    """Make /usr/sbin/fence_xvm inside every node run ours or the C agent (the nodes'
    /usr/sbin is a live directory of symlinks; the machine's own is at <root>/sbin-orig)."""
    assert lab.cluster is not None
    for node in lab.cluster.nodes():
        link = node.root / "sbin" / "fence_xvm"
        tmp = link.with_name(".fence_xvm.bench")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(node.root / "sbin-orig" / "fence_virt" if c_agent
                       else os.path.realpath(venv_tool("fence_xvm")))
        os.replace(tmp, link)


def fence_once(lab: GuestLab) -> float:
    assert lab.cluster is not None
    started = time.monotonic()
    done = lab.cluster.node("node1").run(["stonith_admin", "--fence", VICTIM, "--timeout", "60"])
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"stonith_admin --fence failed: {done.stdout}{done.stderr}")
    if lab.guest_power(VICTIM) != "off":
        raise SystemExit(f"{VICTIM} reported fenced but its guest is not off")
    return took


def use_c(lab: GuestLab, scratch: Path) -> CDaemon:
    lab.stop_host_daemon(HOST)
    uri = (lab.state["qemu_hosts"][HOST]["uri"] if lab.qemu
           else node_uri(lab.state_dir / HOST / "node.xml"))
    conf = write_c_config(scratch / "fence_virtd.conf", "multicast", lab.key_file, uri,
                          interface="eth0")
    daemon = CDaemon(conf, Namespace(lab.state["namespaces"][HOST])).start()
    lab.state["hosts"][HOST]["pid"] = daemon.pid  # restart_guest must not start ours
    assert lab.cluster is not None
    point_agent(lab, c_agent=True)
    return daemon


def use_ours(lab: GuestLab, c_daemon: CDaemon) -> None:
    c_daemon.stop()
    lab.state["hosts"][HOST]["pid"] = None
    lab.start_host_daemon(HOST)
    point_agent(lab, c_agent=False)


def main() -> int:
    args = sys.argv[1:]
    qemu = "--qemu" in args
    numbers = [a for a in args if a != "--qemu"]
    rounds = int(numbers[0]) if numbers else 3
    if not os.path.exists(FENCE_VIRTD) or not os.path.exists(C_AGENT):
        raise SystemExit(f"the C pair is needed: {FENCE_VIRTD} and {C_AGENT} "
                         "(apt-get install fence-virtd fence-virt)")
    summary = Summary(NAME + ("_qemu" if qemu else ""))
    times: dict[str, list[float]] = {"ours": [], "C": []}
    with tempfile.TemporaryDirectory(prefix="gfbench-lab-") as tmp:
        lab = GuestLab(Path(tmp) / "lab", prefix=f"gfb-{os.getpid()}-lab-", progress=print,
                       qemu=qemu)
        c_daemon: CDaemon | None = None
        try:
            lab.up()
            for n in range(rounds):
                times["ours"].append(fence_once(lab))
                lab.restart_guest(VICTIM)
                c_daemon = use_c(lab, Path(tmp))
                times["C"].append(fence_once(lab))
                if VICTIM not in c_daemon.log_text():  # the C pair really did the work
                    raise SystemExit(f"the C fence_virtd never saw {VICTIM}")
                # the C fence_virtd does not power a test-driver guest on again (our daemon's
                # fresh connection to the node file has it running): switch back first
                use_ours(lab, c_daemon)
                c_daemon = None
                lab.restart_guest(VICTIM)
                print(f"round {n + 1}: ours {times['ours'][-1] * 1000:.0f} ms, "
                      f"C {times['C'][-1] * 1000:.0f} ms")
        finally:
            if c_daemon is not None:
                c_daemon.stop()
            lab.down()
    stats = {impl: Stats.of(t) for impl, t in times.items()}
    print(table(["setup", "n", "median ms", "min", "max"],
                [[k, s.n, s.median, s.min, s.max] for k, s in stats.items()]))
    r = ratio(stats["ours"].median, stats["C"].median)
    summary.add(f"{'QEMU guests' if qemu else 'test driver'}: "
                f"stonith_admin --fence {VICTIM} (fence-xvm device, off): ours median "
                f"{stats['ours'].median:.0f} ms, C pair {stats['C'].median:.0f} ms, x{r:.2f}")
    summary.checks.append(Check("ours: stonith_admin --fence median", stats["ours"].median,
                                LIMIT_MS, " ms"))
    summary.data = {"rounds": rounds, "stats": stats, "seconds": times}
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
