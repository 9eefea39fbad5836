"""``guestfence lab up|status|down``: the guest-cluster lab from the command line."""

from __future__ import annotations

import argparse
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guestfence.lab import guestcib
from guestfence.lab.guestlab import (
    DEFAULT_STATE_DIR,
    HOSTS,
    NAMESPACE_PREFIX,
    NODES,
    STATE_FILE,
    GuestLab,
    node_key,
)
from guestfence.lab.netns import LabError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lab",
        help="a three-node Pacemaker guest cluster fencing through guestfence, on this machine",
        description="Build (up), show (status) or remove (down) a guest cluster in a box: "
        "three pacemaker nodes, two hypervisor hosts running guestfenced on libvirt's test "
        "driver, and our iSCSI target with a shared LUN, each in its own network namespace. "
        "The CIB fences with our fence_xvm (level 1) and fence_scsi (level 2). A power link "
        "kills a node's corosync and pacemaker when its guest goes off and starts them when "
        "it comes on. Needs root, "
        "corosync, pacemaker and pacemaker-cli-utils. Try: guestfence lab up; then inside "
        "a node: nsenter ... stonith_admin --fence node3 (status prints the command).",
    )
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the running lab keeps its state (default {DEFAULT_STATE_DIR})")
    p.add_argument("--qemu", action="store_true",
                   help="up: the hosts run a private libvirtd with real QEMU (TCG) guests "
                   "instead of libvirt's test driver (slower to start)")
    p.add_argument("--prefix", default=NAMESPACE_PREFIX, metavar="NAME",
                   help=f"network namespace name prefix for up (default {NAMESPACE_PREFIX})")


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    if args.action == "up":
        lab = GuestLab(args.state_dir, prefix=args.prefix, progress=console.print,
                       qemu=args.qemu).up()
        console.print()
        show_status(lab, console)
        return 0
    if args.action == "down":
        if os.geteuid() != 0:
            raise LabError("the lab needs root to remove its namespaces")
        if not (args.state_dir / STATE_FILE).exists():
            console.print(f"no lab is up (no {args.state_dir / STATE_FILE}); nothing to remove")
            return 0
        GuestLab.load(args.state_dir).down()
        console.print(f"lab removed: processes, namespaces and {args.state_dir}")
        return 0
    show_status(GuestLab.load(args.state_dir), console)
    return 0


def _pacemaker_view(lab: GuestLab) -> tuple[dict[str, str], str, dict[str, str]]:
    """(node -> online/OFFLINE, DC, resource -> where) from crm_mon, empty if none runs."""
    try:
        root = ET.fromstring(lab.crm_mon_xml())
    except (ET.ParseError, LabError):
        return {}, "-", {}
    nodes = {n.get("name", ""): "online" if n.get("online") == "true" else "OFFLINE"
             for n in root.findall("nodes/node")}
    dc = root.find("summary/current_dc")
    dc_name = dc.get("name", "-") if dc is not None and dc.get("present") == "true" else "-"
    where = {}
    for res in root.iter("resource"):
        node = res.find("node")
        where[res.get("id", "")] = (f"{res.get('role', '?')} on {node.get('name')}"
                                    if node is not None else res.get("role", "Stopped"))
    return nodes, dc_name, where


def show_status(lab: GuestLab, console: Console) -> None:
    assert lab.cluster is not None
    online, dc, where = _pacemaker_view(lab)
    try:
        keys = lab.lun_keys()
    except LabError:
        keys = []
    guests = {g.name: g for g in lab.guests()}
    nodes = Table(title=f"guest cluster gflab (state {lab.state_dir})")
    for col in ("node", "address", "stack", "pacemaker", "guest on host", "power",
                "fence_scsi key on LUN"):
        nodes.add_column(col)
    for name in NODES:
        node = lab.cluster.node(name)
        stack = "running" if node.holder_pid and node.corosync_running() else "down"
        state = online.get(name, "?") + (" (DC)" if name == dc else "")
        key = node_key(name)
        power = guests[name].power
        colour = {"on": "green", "off": "red"}.get(power, "yellow")
        nodes.add_row(name, node.address, stack, state, guests[name].host,
                      f"[{colour}]{power}[/]",
                      f"{key:#x} " + ("registered" if key in keys else "[red]absent[/]"))
    console.print(nodes)

    devices = Table(title="stonith devices (fencing topology: level 1, then level 2)")
    for col in ("level", "device", "agent", "state"):
        devices.add_column(col)
    devices.add_row("1", guestcib.XVM_DEVICE, "fence_xvm (ours)",
                    where.get(guestcib.XVM_DEVICE, "-"))
    devices.add_row("2", guestcib.SCSI_DEVICE, "fence_scsi (ours), provides=unfencing",
                    where.get(guestcib.SCSI_DEVICE, "-"))
    devices.add_row("", guestcib.RESOURCE, "ocf:pacemaker:Dummy",
                    where.get(guestcib.RESOURCE, "-"))
    console.print(devices)

    backend = "a private libvirtd with QEMU guests" if lab.qemu else "libvirt's test driver"
    hosts = Table(title=f"hypervisor hosts (guestfenced on {backend})")
    for col in ("host", "address", "guestfenced", "guests"):
        hosts.add_column(col)
    for host in HOSTS:
        pid = lab.state["hosts"].get(host, {}).get("pid")
        alive = pid is not None and os.path.exists(f"/proc/{pid}")
        hosts.add_row(host, lab.state["addresses"][host],
                      f"pid {pid}" if alive else "[red]stopped[/]", ", ".join(HOSTS[host]))
    console.print(hosts)
    link = lab.power_link_state()
    console.print(f"power link (a node's stack dies when its guest goes off, boots when it "
                  f"comes on): {'[green]' if link.startswith('running') else '[red]'}{link}[/]"
                  f", log {lab.power_link_log}")
    console.print(f"shared LUN {lab.lun_url}: {len(keys)} registration(s) "
                  f"{', '.join(hex(k) for k in keys) or '-'}")
    example = lab.cluster.node(NODES[0]).exec_argv(["stonith_admin", "--fence", NODES[-1]])
    console.print(f"fence a node from {NODES[0]}: [bold]{' '.join(example)}[/bold]")
    down = "guestfence lab down" + (f" --state-dir {lab.state_dir}"
                                    if lab.state_dir != DEFAULT_STATE_DIR else "")
    console.print(f"remove the lab: [bold]{down}[/bold]")
