"""The lab's power link: a cluster node lives and dies with its guest's power.

In ``guestfence lab`` a cluster node is a network namespace running corosync +
pacemaker, and the guest that stands for it is a domain on a host daemon: two
things that a real machine would be one.  This watcher links them.  It asks
every host daemon over its admin socket (the ``status`` command of
:mod:`guestfence.host.admin`, a filesystem socket reachable from any network
namespace) which guests it has and their state, every :data:`POLL_S` seconds,
and applies power *transitions* to the nodes:

- on -> off: a power cut; every process of the node is killed at once
  (SIGKILL, :meth:`ClusterNode.kill_stack`), as a guest destroyed on its host;
- off -> on: a boot; the node's corosync and pacemaker are started again
  (:meth:`ClusterNode.start_stack`).

A daemon that does not answer tells nothing: its guests' power is unknown and
nothing changes (unknown is not off; the level-2 scenario stops a host daemon
on purpose and relies on it).  Each action is logged to ``powerlink.log`` in
the lab's state directory; the watcher's view is kept in ``powerlink.json``.

``python -m guestfence.lab.powerlink STATE_DIR`` runs it; ``lab up`` starts it
detached and records its pid and start time, ``lab down`` stops it first.  It
exits by itself once the lab's state file is gone, so it never outlives the lab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from guestfence.errors import TransportError
from guestfence.host.admin import query
from guestfence.lab import detached
from guestfence.lab.netns import LabError

POLL_S = 0.2
QUERY_TIMEOUT_S = 2.0
LOG_FILE = "powerlink.log"
VIEW_FILE = "powerlink.json"
STATE_FILE = "lab.json"
MODULE = "guestfence.lab.powerlink"


class Node(Protocol):
    def kill_stack(self) -> None: ...
    def start_stack(self) -> None: ...


def guest_powers(admin_socket: str, timeout: float = QUERY_TIMEOUT_S) -> dict[str, str]:
    """``on``/``off`` of every guest the daemon on ``admin_socket`` lists; empty when the
    daemon (or its backend) does not answer.  Off means shut off, as for fence_xvm."""
    try:
        reply = query(admin_socket, {"command": "status", "requests": 0}, timeout=timeout)
    except TransportError:
        return {}
    status = reply.get("status")
    if not reply.get("ok") or not isinstance(status, dict):
        return {}
    if (status.get("backend") or {}).get("error"):
        return {}
    return {str(g["name"]): "off" if g.get("state") == "shutoff" else "on"
            for g in status.get("guests", []) if isinstance(g, dict) and "name" in g}


class PowerLink:
    """Follows ``hosts`` (host -> (admin socket, its guests)) and acts on ``nodes``."""

    def __init__(self, hosts: Mapping[str, tuple[str, Sequence[str]]],
                 nodes: Mapping[str, Node], log: Callable[[str], None],
                 read_powers: Callable[[str], dict[str, str]] = guest_powers) -> None:
        self.hosts = hosts
        self.nodes = nodes
        self.log = log
        self.read_powers = read_powers
        self.known: dict[str, str] = {}
        """The last power seen of each guest; a guest never seen is not in it."""
        self.answering: dict[str, bool] = {}

    def poll(self) -> bool:
        """Ask every host once and apply what changed; True if the view changed."""
        changed = False
        for host, (socket_path, guests) in self.hosts.items():
            powers = self.read_powers(socket_path)
            if self.answering.get(host) != bool(powers):
                self.answering[host] = bool(powers)
                self.log(f"{host}: daemon " + ("answers" if powers else
                                               "does not answer (its guests' power is "
                                               "unknown: nothing changes)"))
                changed = True
            for guest in guests:
                power = powers.get(guest)
                if power is None or power == self.known.get(guest):
                    continue
                before, self.known[guest] = self.known.get(guest), power
                changed = True
                if before == "on" and power == "off":
                    self._act(guest, host, "power cut: killing its stack",
                              self.nodes[guest].kill_stack)
                elif before == "off" and power == "on":
                    self._act(guest, host, "power on: booting (starting its stack)",
                              self.nodes[guest].start_stack)
                else:
                    self.log(f"{guest}: guest {power} on {host}")
        return changed

    def _act(self, guest: str, host: str, what: str, action: Callable[[], None]) -> None:
        self.log(f"{guest}: {what} (guest went {self.known[guest]} on {host})")
        try:
            action()
        except (LabError, OSError, subprocess.SubprocessError) as e:
            self.log(f"{guest}: failed: {e}")
            return
        self.log(f"{guest}: done")

    def view(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "known": dict(self.known),
                "answering": dict(self.answering)}


def serve(state_dir: Path) -> int:
    """Run the power link of the lab in ``state_dir`` until SIGTERM or the lab is gone."""
    from guestfence.lab.cluster import Cluster

    stop = detached.stop_on_signals()
    state = json.loads((state_dir / STATE_FILE).read_text())
    cluster = Cluster.attach(state["cluster"])
    hosts = {h: (str(v["admin_socket"]), list(v["guests"])) for h, v in state["hosts"].items()}

    def log(text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with open(state_dir / LOG_FILE, "a") as f:
            f.write(f"{stamp}Z powerlink: {text}\n")

    link = PowerLink(hosts, {n.name: n for n in cluster.nodes()}, log)
    log(f"started (pid {os.getpid()}), following {', '.join(hosts)} every {POLL_S:g} s")
    while not stop.is_set() and (state_dir / STATE_FILE).exists():
        if link.poll():
            tmp = state_dir / f"{VIEW_FILE}.tmp"
            tmp.write_text(json.dumps(link.view()) + "\n")
            os.replace(tmp, state_dir / VIEW_FILE)
        cluster._reap()  # the stacks it booted are its children: no zombies
        stop.wait(POLL_S)
    log("stopped")
    return 0


# ---------------------------------------------------------------- the detached process


def start(state_dir: Path) -> subprocess.Popen[bytes]:
    """Start the watcher for the lab in ``state_dir``, detached (its own session)."""
    return detached.spawn([sys.executable, "-m", MODULE, str(state_dir)], state_dir / LOG_FILE)


def read_view(state_dir: Path) -> dict[str, Any]:
    """The watcher's last written view (``known`` power per guest); empty if none yet."""
    try:
        view: dict[str, Any] = json.loads((state_dir / VIEW_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return view


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m guestfence.lab.powerlink STATE_DIR", file=sys.stderr)
        return 2
    return serve(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
