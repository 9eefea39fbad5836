"""What a running guest-cluster lab looks like: guests' power, the LUN, pacemaker's view.

:class:`LabView` is the read side of :class:`guestfence.lab.guestlab.GuestLab`
(which builds and tears down): every answer comes from the real parts -- a
guest's power from its host daemon over the fence_virt protocol (our
fence_xvm, from the storage namespace), registrations with PR IN READ KEYS
(run in a namespace on the lab's LAN by :mod:`guestfence.lab.lunprobe`),
cluster state from pacemaker's own tools inside a node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guestfence.lab import detached, powerlink
from guestfence.lab.cluster import Cluster, ClusterNode
from guestfence.lab.netns import LabError, Namespace
from guestfence.lab.ourdaemon import venv_tool
from guestfence.scsi.keys import derive_key

CLUSTER_NAME = "gflab"
HOSTS: Mapping[str, tuple[str, ...]] = {"host1": ("node1", "node2"), "host2": ("node3",)}
NODES = tuple(n for guests in HOSTS.values() for n in guests)
STORAGE = "storage"
TARGET_IQN = "iqn.2026-11.org.guestfence.lab:shared"
TARGET_PORT = 3260


@dataclass(frozen=True)
class GuestState:
    name: str
    host: str
    power: str  # on, off, or unknown (the host did not answer)


def node_key(node: str) -> int:
    """The fence_scsi key of ``node`` (key_value=hash, as the lab's CIB asks)."""
    return int(derive_key(CLUSTER_NAME, node, "hash"), 16)


def completed_at(event: Mapping[str, str]) -> float:
    """When a fence_event completed (POSIX time, whole seconds); 0 if it has not."""
    try:
        done = datetime.strptime(event["completed"], "%Y-%m-%d %H:%M:%SZ")
    except (KeyError, ValueError):
        return 0.0
    return done.replace(tzinfo=UTC).timestamp()


class LabView:
    """Looking at a lab described by ``state`` (lab.json) with its ``cluster``."""

    state_dir: Path
    state: dict[str, Any]
    cluster: Cluster | None

    @property
    def key_file(self) -> Path:
        return self.state_dir / "fence_xvm.key"

    @property
    def lun_url(self) -> str:
        return f"iscsi://{self.state['addresses'][STORAGE]}:{TARGET_PORT}/{TARGET_IQN}/1"

    def namespace(self, member: str) -> Namespace:
        return Namespace(self.state["namespaces"][member])

    def host_of(self, node: str) -> str:
        return next(h for h, guests in HOSTS.items() if node in guests)

    # -- looking at it ---------------------------------------------------------------

    def node_with_stack(self) -> ClusterNode:
        assert self.cluster is not None
        for node in self.cluster.nodes():
            if node.holder_pid is not None and node.stack_pids("pacemakerd"):
                return node
        raise LabError("no node of the lab runs pacemaker")

    def crm_mon_xml(self) -> str:
        return str(self.node_with_stack().run(["crm_mon", "-1", "--output-as=xml"]).stdout)

    def started_resources(self) -> dict[str, str]:
        """Resource id -> node it is started on, from crm_mon."""
        try:
            root = ET.fromstring(self.crm_mon_xml())
        except (ET.ParseError, LabError):
            return {}
        found = {}
        for res in root.iter("resource"):
            node = res.find("node")
            if res.get("role") == "Started" and node is not None:
                found[res.get("id", "")] = node.get("name", "")
        return found

    def fence_history(self, target: str) -> list[dict[str, str]]:
        """The fencer's operations on ``target`` (``*``: all), newest first, as attributes
        of ``stonith_admin --history --verbose`` (action, target, status, client, ...)."""
        try:
            out = self.node_with_stack().run(
                ["stonith_admin", "--history", target, "--verbose", "--output-as=xml"]).stdout
            root = ET.fromstring(out[out.index("<"):])
        except (ValueError, ET.ParseError, LabError):
            return []
        return [dict(e.attrib) for e in root.iter("fence_event")]

    def guest_power(self, node: str, timeout: int = 3) -> str:
        """``on``/``off`` as the guest's host daemon answers our fence_xvm, else ``unknown``."""
        done = self.namespace(STORAGE).run(
            [venv_tool("fence_xvm"), "-k", str(self.key_file), "-o", "status", "-H", node,
             "-t", str(timeout)], capture_output=True, text=True, timeout=timeout + 30,
            stdin=subprocess.DEVNULL)
        return {0: "on", 2: "off"}.get(done.returncode, "unknown")

    def guests(self) -> list[GuestState]:
        return [GuestState(n, self.host_of(n), self.guest_power(n)) for n in NODES]

    def power_on(self, node: str) -> None:
        self._power(node, "on")

    def power_off(self, node: str) -> None:
        """Switch the guest off on its host, as its administrator would (not a fence
        the cluster knows of)."""
        self._power(node, "off")

    def _power(self, node: str, action: str) -> None:
        done = self.namespace(STORAGE).run(
            [venv_tool("fence_xvm"), "-k", str(self.key_file), "-o", action, "-H", node],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise LabError(f"power {action} {node} failed: {done.stdout}{done.stderr}")

    @property
    def power_link_log(self) -> Path:
        return self.state_dir / powerlink.LOG_FILE

    def power_link_view(self) -> dict[str, Any]:
        """The power link's last view: ``known`` power per guest, hosts ``answering``."""
        return powerlink.read_view(self.state_dir)

    def power_link_state(self) -> str:
        """``running (pid N)`` or ``stopped`` (never started, died, or a reused pid)."""
        info = self.state.get("powerlink", {})
        return f"running (pid {info['pid']})" if detached.is_running(info) else "stopped"

    def power_link_actions(self, node: str) -> list[str]:
        """The power link's log lines about what it did to ``node`` (kills, boots)."""
        try:
            lines = self.power_link_log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [x for x in lines if f"powerlink: {node}: " in x
                and ("power cut" in x or "power on" in x)]

    def wait_power_link_sees(self, node: str, timeout: float) -> str:
        """The guest's power once the power link's view agrees with its host daemon."""
        deadline = time.monotonic() + timeout
        while True:
            power = self.guest_power(node)
            if power != "unknown" and self.power_link_view().get("known", {}).get(node) == power:
                return power
            if time.monotonic() > deadline:
                raise LabError(f"the power link does not see {node}'s guest {power} "
                               f"({self.power_link_state()}); log {self.power_link_log}")
            time.sleep(0.1)

    def wait_booted(self, node: str, timeout: float) -> None:
        """Wait until ``node`` runs pacemaker and every running node sees it as a member."""
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        while not self.cluster.node(node).stack_pids("pacemakerd"):
            if time.monotonic() > deadline:
                raise LabError(f"{node} did not boot ({self.power_link_state()}); log "
                               f"{self.power_link_log}")
            time.sleep(0.1)
        running = [n.name for n in self.cluster.nodes() if n.corosync_running()]
        self.cluster.wait_membership(running, max(1.0, deadline - time.monotonic()))

    def host_requests(self, host: str) -> list[str]:
        """The request log lines of a host's guestfenced (one per request it served)."""
        log = Path(self.state["hosts"][host]["log"])
        return [x for x in log.read_text(errors="replace").splitlines() if " request " in x]

    def _probe(self, member: str, *args: str) -> dict[str, Any]:
        done = self.namespace(member).run(
            [sys.executable, "-m", "guestfence.lab.lunprobe", *args], capture_output=True,
            text=True, timeout=30, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise LabError(f"LUN probe {' '.join(args)} failed (rc {done.returncode}): "
                           f"{done.stdout.strip()} {done.stderr.strip()}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def lun_keys(self) -> list[int]:
        """PR IN READ KEYS on the shared LUN (one key per registered I_T nexus)."""
        return [int(k, 16) for k in self._probe(STORAGE, "keys", self.lun_url)["keys"]]

    def write_as_node(self, node: str) -> str:
        """SCSI status of a WRITE sent from ``node`` with its fence_scsi initiator identity."""
        initiator = f"iqn.2026-11.org.guestfence:{node}"  # fence_scsi's default: the hostname
        return str(self._probe(node, "write", self.lun_url, initiator)["status"])
