"""A corosync 3 (+ pacemaker 2.1) cluster on one machine: one node per network namespace.

Every node lives in a network namespace the caller built (a
:class:`~guestfence.lab.netns.Namespace` on a LAN, with an address) and, inside
it, in a private mount and UTS namespace held open by a ``sleep`` process (the
*holder*).  The holder's mount namespace gets private copies of the
directories a cluster stack writes to, so several stacks coexist on one
machine and nothing of the host's own cluster configuration is touched:

``/run``, ``/dev/shm`` (mode 1777: the hacluster-owned daemons create their
libqb ring buffers there), ``/etc/corosync``, ``/var/lib/corosync``,
``/var/lib/pacemaker``, ``/var/log/cluster``, ``/var/log/pacemaker``.

The hostname (UTS namespace) is the node's name, as in a real guest.  libqb IPC
uses abstract unix sockets, which belong to the network namespace, so the
CPG/CIB clients of a node must run in its network *and* mount namespace:
:meth:`ClusterNode.exec_argv` / :meth:`ClusterNode.run` / :meth:`ClusterNode.popen`.

With ``agents`` (name -> executable), ``/usr/sbin`` inside the nodes is a
directory of symlinks to the host's ``/usr/sbin`` entries with those names
pointing at the given executables instead: pacemaker-fenced finds fence agents
only in ``/usr/sbin``, and this way the host's ``/usr/sbin`` stays untouched.

No systemd: corosync and pacemakerd are started in the foreground by the
holder's namespaces (``setsid``).  The CIB is pre-seeded with a short
``dc-deadtime`` so a DC is elected in about two seconds instead of twenty.
Everything a node runs shares the holder's mount namespace, which is how
:meth:`Cluster.stop` and :meth:`ClusterNode.kill_stack` find it all.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from guestfence.lab.clusterconf import DEFAULT_CRM_CONFIG, corosync_conf, seed_cib
from guestfence.lab.clusternode import ClusterNode, is_holder, pids_in_mount_ns
from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError, Namespace
from guestfence.lab.tools import missing

__all__ = ["DEFAULT_CRM_CONFIG", "Cluster", "ClusterNode", "corosync_conf", "missing_tools",
           "pids_in_mount_ns", "seed_cib"]

REQUIRED_TOOLS = {"corosync": "corosync", "corosync-cmapctl": "corosync",
                  "nsenter": "util-linux", "unshare": "util-linux"}
PACEMAKER_TOOLS = {"pacemakerd": "pacemaker", "crm_mon": "pacemaker-cli-utils",
                   "cibadmin": "pacemaker-cli-utils", "stonith_admin": "pacemaker-cli-utils"}
_POLL = 0.2


def missing_tools(pacemaker: bool = True) -> list[str]:
    """Executables the cluster needs that this machine lacks, with their packages."""
    return missing({**REQUIRED_TOOLS, **(PACEMAKER_TOOLS if pacemaker else {})})


class Cluster(StartStop):
    """corosync (+ pacemaker) on ``nodes`` (name -> namespace already on a LAN)."""

    def __init__(self, scratch: Path, nodes: Mapping[str, Namespace], *,
                 pacemaker: bool = True, token_ms: int = 1000, cluster_name: str = "gflab",
                 start_timeout: float = 60.0, addresses: Mapping[str, str] | None = None,
                 crm_config: Mapping[str, str] | None = None,
                 agents: Mapping[str, str] | None = None) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        self.scratch = Path(scratch).resolve()
        if agents and str(self.scratch).startswith(("/run/", "/dev/shm/")):
            # the nodes' /usr/sbin links point into the scratch dir, which their private
            # /run or /dev/shm would hide
            raise ValueError(f"{self.scratch}: with agents, the scratch directory must not "
                             "be under /run or /dev/shm")
        self.pacemaker = pacemaker
        self.token_ms = token_ms
        self.cluster_name = cluster_name
        self.start_timeout = start_timeout
        self.crm_config = dict(DEFAULT_CRM_CONFIG if crm_config is None else crm_config)
        self.agents = dict(agents or {})
        self._children: list[subprocess.Popen[Any]] = []
        self._nodes: dict[str, ClusterNode] = {}
        for nodeid, (name, ns) in enumerate(nodes.items(), start=1):
            address = (addresses or {}).get(name) or _eth0_address(ns)
            self._nodes[name] = ClusterNode(self, name, nodeid, ns, address)

    def node(self, name: str) -> ClusterNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise LabError(f"no node {name!r} in the cluster ({', '.join(self._nodes)})") from None

    def nodes(self) -> list[ClusterNode]:
        return list(self._nodes.values())

    def start(self) -> Cluster:
        problems = missing_tools(self.pacemaker)
        if problems:
            raise LabError("the cluster lab needs: " + "; ".join(problems))
        try:
            conf = corosync_conf(self.cluster_name, self.token_ms,
                                 [(n.name, n.nodeid, n.address) for n in self.nodes()])
            for node in self.nodes():
                node.prepare(conf)
                node.start_holder()
            for node in self.nodes():
                node.start_stack()
            self.wait_membership(list(self._nodes), self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_node(self, name: str, timeout: float | None = None) -> None:
        """Start a node's stack again (after kill_stack or fencing) and wait for it to join."""
        self.node(name).start_stack()
        running = [n.name for n in self.nodes() if n.corosync_running()]
        self.wait_membership(running, timeout or self.start_timeout)

    def wait_membership(self, names: Collection[str], timeout: float) -> None:
        """Wait until every node of ``names`` sees exactly ``names`` as members (and, with
        pacemaker, all of them online with a DC elected and quorum)."""
        wanted = {self.node(n).nodeid for n in names}
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            views = {n: self.node(n).corosync_members() for n in names}
            if all(v == wanted for v in views.values()):
                if not self.pacemaker:
                    return
                online, dc, quorate = self.node(next(iter(names))).pacemaker_view()
                if online == set(names) and dc is not None and quorate:
                    return
                last = f"pacemaker: online {sorted(online)}, DC {dc}, quorate {quorate}"
            else:
                last = f"corosync members: { {n: sorted(v) for n, v in views.items()} }"
            if time.monotonic() > deadline:
                tails = "\n".join(self.node(n).log_tail() for n in names)
                raise LabError(f"membership {sorted(names)} not reached after {timeout:g} s "
                               f"({last})\n{tails}")
            time.sleep(_POLL)

    def _reap(self) -> None:
        """Collect exited stacks (no zombies) and forget them."""
        self._children = [proc for proc in self._children if proc.poll() is None]

    def stop(self) -> None:
        """Kill every process of every node (holders included); idempotent."""
        errors = []
        for node in self.nodes():
            try:
                node.stop()
            except LabError as e:
                errors.append(str(e))
        self._reap()
        if errors:
            raise LabError("; ".join(errors))

    def state(self) -> dict[str, Any]:
        """What another process needs to find this cluster again (see :meth:`attach`)."""
        return {"scratch": str(self.scratch), "pacemaker": self.pacemaker,
                "nodes": {n.name: {"nodeid": n.nodeid, "namespace": n.namespace.name,
                                   "address": n.address, "holder": n.holder_pid}
                          for n in self.nodes()}}

    @classmethod
    def attach(cls, state: Mapping[str, Any]) -> Cluster:
        """The running cluster described by :meth:`state` (from ``json``), to use or stop."""
        nodes = state["nodes"]
        cluster = cls(Path(state["scratch"]), {n: Namespace(v["namespace"])
                                               for n, v in nodes.items()},
                      pacemaker=bool(state["pacemaker"]),
                      addresses={n: v["address"] for n, v in nodes.items()})
        for name, value in nodes.items():
            holder = value.get("holder")
            if isinstance(holder, int) and is_holder(holder, cluster.node(name).namespace):
                cluster.node(name).holder_pid = holder
        return cluster


def _eth0_address(ns: Namespace) -> str:
    done = ns.ip("-j", "-4", "addr", "show", "dev", "eth0", check=False)
    try:
        for iface in json.loads(done.stdout or "[]"):
            for info in iface.get("addr_info", []):
                return str(info["local"])
    except (ValueError, KeyError, TypeError):
        pass
    raise LabError(f"namespace {ns.name} has no IPv4 address on eth0; pass addresses=")
