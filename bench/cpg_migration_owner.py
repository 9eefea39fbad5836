"""Host-cluster mode: from ``virsh migrate`` returning to the new owner answering fence_xvm.

Two hosts, each a network namespace with its own libvirtd (a 32 MiB diskless
TCG guest), corosync (lab.cluster, corosync only, token 1000 ms) and our
guestfenced with ``backend = "cpg"`` inside the node's network and mount
namespaces; fence_xvm (ours) runs in a third namespace on the same LAN.

The guest migrates back and forth (live, client-managed, as ``virsh migrate
--live``). As soon as the migration call returns, fence_xvm ``status``
requests are sent one after the other until one is answered by the new host
(read from the daemons' request lines); the time from the return to that
answer is the figure. Reference in the same run: the same request for a guest
that does not move (a whole fence_xvm process, so the floor of the figure).

    .venv/bin/python bench/cpg_migration_owner.py        (root; libvirt, qemu, corosync)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Check, Stats, Summary, table

from guestfence.lab.cfence import write_key
from guestfence.lab.cluster import Cluster
from guestfence.lab.cluster import missing_tools as cluster_missing
from guestfence.lab.libvirtd import LibvirtLab
from guestfence.lab.libvirtd import missing_tools as libvirt_missing
from guestfence.lab.netns import build_lan, run_prefix
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool

HOSTS = ("host1", "host2")
MIGRATIONS = 8
BASELINE = 20


def config(key: Path, uri: str, host: str, group: str) -> str:
    text = daemon_config_text(str(key), [uri], interface="eth0")
    return text.replace('backend = "libvirt"', 'backend = "cpg"').replace(
        "\tlibvirt {", f'\tcpg {{\n\t\thost_name = "{host}";\n\t\tgroup = "{group}";')


def main() -> int:
    problems = libvirt_missing() + cluster_missing(pacemaker=False)
    if problems:
        print("needs: " + "; ".join(problems), file=sys.stderr)
        return 2
    summary = Summary("cpg_migration_owner")
    prefix = run_prefix("gfb-")
    scratch = Path(tempfile.mkdtemp(prefix="gf-bench-cpgmig-"))
    lan = build_lan(prefix, [*HOSTS, "guest"], subnet="10.231.65", subnet6=None)
    cluster = Cluster(scratch / "cluster", {h: lan[h] for h in HOSTS}, pacemaker=False,
                      token_ms=1000)
    labs: dict[str, LibvirtLab] = {}
    daemons: dict[str, OurDaemon] = {}
    key = write_key(scratch / "key")

    def status(vm: str) -> tuple[int, str]:
        r = lan["guest"].run([venv_tool("fence_xvm"), "-k", str(key), "-o", "status", "-H", vm,
                              "-t", "5"], capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout.strip()

    def lines(host: str, vm: str) -> int:
        return sum(f"target={vm} " in x for x in daemons[host].request_lines())

    def new_line(host: str, before: int) -> bool:
        """Whether ``host`` logged a request for mover since ``before`` (the line is
        written right after the answer; a reader thread collects it)."""
        end = time.monotonic() + 1.0
        while lines(host, "mover") == before:
            if time.monotonic() > end:
                return False
            time.sleep(0.005)
        return True

    after_return: list[float] = []
    migrate_wall: list[float] = []
    baseline: list[float] = []
    try:
        cluster.start()
        for host in HOSTS:
            labs[host] = LibvirtLab(scratch / f"libvirt-{host}", lan[host],
                                    listen_address=lan.addresses[host]).start()
        labs["host1"].define_and_start("mover", memory_mib=32)
        labs["host2"].define_and_start("stayer", memory_mib=32)
        for host in HOSTS:
            conf = scratch / f"{host}.conf"
            conf.write_text(config(key, labs[host].uri, host, f"{prefix}gf"))
            conf.chmod(0o600)
            daemons[host] = OurDaemon(conf, namespace=cluster.node(host)).start(timeout=60)
        deadline = time.monotonic() + 30
        while status("mover")[0] != 0 or status("stayer")[0] != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the guests are not answered for")
            time.sleep(0.1)
        for _ in range(BASELINE):
            t0 = time.monotonic()
            assert status("stayer") == (0, "Status: ON")
            baseline.append(time.monotonic() - t0)
        src, dst = "host1", "host2"
        for _ in range(MIGRATIONS):
            before = lines(dst, "mover")
            migrate_wall.append(labs[src].migrate("mover", labs[dst]))
            t0 = time.monotonic()
            while True:
                code, out = status("mover")
                answered = time.monotonic()
                if new_line(dst, before):  # this answer came from the new owner
                    break
                if answered - t0 > 10:
                    raise RuntimeError(f"{dst} did not answer for mover within 10 s")
            after_return.append(answered - t0)
            assert (code, out) == (0, "Status: ON"), out
            src, dst = dst, src
    finally:
        for d in daemons.values():
            d.stop()
        for lab in labs.values():
            try:
                lab.stop()
            except Exception as e:  # keep cleaning up
                print(f"libvirt lab stop: {e}", file=sys.stderr)
        cluster.stop()
        lan.destroy()
        subprocess.run(["rm", "-rf", str(scratch)], check=False)

    ours, ref, wall = Stats.of(after_return), Stats.of(baseline), Stats.of(migrate_wall)
    summary.add(f"2 hosts (corosync, token 1000 ms, libvirtd + 32 MiB TCG guest each), "
                f"{MIGRATIONS} live migrations back and forth")
    rows = [["migrate returned -> new owner answered", ours.n, f"{ours.median:.0f}",
             f"{ours.p90:.0f}", f"{ours.max:.0f}"],
            ["status, guest not moving (reference)", ref.n, f"{ref.median:.0f}",
             f"{ref.p90:.0f}", f"{ref.max:.0f}"],
            ["live migration call", wall.n, f"{wall.median:.0f}", f"{wall.p90:.0f}",
             f"{wall.max:.0f}"]]
    for line in table(["what", "n", "median ms", "p90 ms", "max ms"], rows).splitlines():
        summary.add(line)
    summary.data.update(after_return=vars(ours), baseline=vars(ref), migrate=vars(wall))
    summary.checks.append(Check("migrate returned -> new owner answered, max", ours.max / 1000,
                                1.0, " s"))
    return summary.finish()


if __name__ == "__main__":
    sys.exit(main())
