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

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError, Namespace
from guestfence.lab.tools import missing

REQUIRED_TOOLS = {"corosync": "corosync", "corosync-cmapctl": "corosync",
                  "nsenter": "util-linux", "unshare": "util-linux"}
PACEMAKER_TOOLS = {"pacemakerd": "pacemaker", "crm_mon": "pacemaker-cli-utils",
                   "cibadmin": "pacemaker-cli-utils", "stonith_admin": "pacemaker-cli-utils"}
CLUSTER_USER = "hacluster"
CLUSTER_GROUP = "haclient"
PRIVATE_DIRS = {  # mount point in the node -> directory under the node's root
    "/dev/shm": "shm",
    "/etc/corosync": "etc-corosync",
    "/var/lib/corosync": "var-lib-corosync",
    "/var/lib/pacemaker": "var-lib-pacemaker",
    "/var/log/cluster": "log-cluster",
    "/var/log/pacemaker": "log-pacemaker",
}
DEFAULT_CRM_CONFIG = {"dc-deadtime": "2s"}
"""Pre-seeded cluster options; the default dc-deadtime (20 s) dominates start-up."""
_POLL = 0.2


def missing_tools(pacemaker: bool = True) -> list[str]:
    """Executables the cluster needs that this machine lacks, with their packages."""
    return missing({**REQUIRED_TOOLS, **(PACEMAKER_TOOLS if pacemaker else {})})


def corosync_conf(cluster_name: str, token_ms: int, members: Sequence[tuple[str, int, str]]
                  ) -> str:
    """corosync.conf for ``members`` (name, nodeid, ring0 address): knet, no crypto."""
    lines = [
        "totem {", "    version: 2", f"    cluster_name: {cluster_name}",
        "    transport: knet", "    crypto_cipher: none", "    crypto_hash: none",
        f"    token: {token_ms}", "}",
        "logging {", "    to_stderr: no", "    to_logfile: yes",
        "    logfile: /var/log/cluster/corosync.log", "    to_syslog: no",
        "    timestamp: on", "}",
        "quorum {", "    provider: corosync_votequorum",
    ]
    if len(members) == 2:
        lines.append("    two_node: 1")
    lines += ["}", "nodelist {"]
    for name, nodeid, address in members:
        lines += ["    node {", f"        ring0_addr: {address}", f"        name: {name}",
                  f"        nodeid: {nodeid}", "    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def seed_cib(crm_config: Mapping[str, str]) -> str:
    """An empty CIB carrying ``crm_config`` (no .sig: pacemaker-based signs it itself)."""
    cib = ET.Element("cib", {"crm_feature_set": "3.16.1", "validate-with": "pacemaker-3.9",
                             "epoch": "1", "num_updates": "0", "admin_epoch": "0"})
    conf = ET.SubElement(cib, "configuration")
    props = ET.SubElement(ET.SubElement(conf, "crm_config"), "cluster_property_set",
                          {"id": "cib-bootstrap-options"})
    for name, value in crm_config.items():
        ET.SubElement(props, "nvpair", {"id": f"cib-bootstrap-options-{name}", "name": name,
                                        "value": value})
    for section in ("nodes", "resources", "constraints"):
        ET.SubElement(conf, section)
    ET.SubElement(cib, "status")
    return ET.tostring(cib, encoding="unicode") + "\n"


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_mount_ns(holder: int) -> list[int]:
    """Every process sharing ``holder``'s mount namespace (the holder included)."""
    wanted = _mount_ns(holder)
    if wanted is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mount_ns(int(entry)) == wanted:
            found.append(int(entry))
    return found


def _kill_and_wait(pids: Collection[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
            if time.monotonic() > deadline:
                raise LabError(f"process {pid} survives SIGKILL")
            time.sleep(0.01)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


class ClusterNode:
    """One member: its namespaces, its private directories and its daemons."""

    def __init__(self, cluster: Cluster, name: str, nodeid: int, namespace: Namespace,
                 address: str) -> None:
        self.cluster = cluster
        self.name = name
        self.nodeid = nodeid
        self.namespace = namespace
        self.address = address
        self.root = cluster.scratch / name
        self.holder_pid: int | None = None

    def __repr__(self) -> str:
        return f"ClusterNode({self.name}, id {self.nodeid}, {self.address})"

    # -- running things inside -------------------------------------------------------

    def _holder(self) -> int:
        if self.holder_pid is None:
            raise LabError(f"{self.name}: not started")
        return self.holder_pid

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run in the node's network, mount and UTS namespace."""
        return ["nsenter", "-t", str(self._holder()), "-m", "-n", "-u", "--", *argv]

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """``subprocess.run`` inside the node; text output captured unless told otherwise."""
        kw.setdefault("text", True)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.exec_argv(argv), check=False, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.exec_argv(argv), **kw)

    # -- life cycle ------------------------------------------------------------------

    def prepare(self, conf: str) -> None:
        """Create the node's private directories, corosync.conf and the seeded CIB."""
        for sub in (*PRIVATE_DIRS.values(), "run", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "shm", 0o1777)
        (self.root / "etc-corosync" / "corosync.conf").write_text(conf)
        pcmk = self.root / "var-lib-pacemaker"
        for sub in ("cib", "pengine", "blackbox", "cores"):
            (pcmk / sub).mkdir(exist_ok=True)
        if self.cluster.pacemaker and not (pcmk / "cib" / "cib.xml").exists():
            (pcmk / "cib" / "cib.xml").write_text(seed_cib(self.cluster.crm_config))
            os.chmod(pcmk / "cib" / "cib.xml", 0o600)
        for path in (pcmk, *pcmk.rglob("*"), self.root / "log-pacemaker"):
            shutil.chown(path, CLUSTER_USER, CLUSTER_GROUP)
        for sub in ("cib", "pengine", "blackbox", "cores"):
            os.chmod(pcmk / sub, 0o750)
        if self.cluster.agents:
            self._agent_farm()

    def _agent_farm(self) -> None:
        """``<root>/sbin``: the host's /usr/sbin as symlinks, the lab's agents in between."""
        farm = self.root / "sbin"
        if farm.exists():
            shutil.rmtree(farm)
        farm.mkdir()
        original = self.root / "sbin-orig"  # the holder bind-mounts the real /usr/sbin here
        original.mkdir(exist_ok=True)
        for entry in os.listdir("/usr/sbin"):
            (farm / entry).symlink_to(original / entry)
        for name, target in self.cluster.agents.items():
            (farm / name).unlink(missing_ok=True)
            (farm / name).symlink_to(target)

    def _holder_script(self) -> str:
        root = self.root
        binds = []
        if self.cluster.agents:  # keep the real /usr/sbin reachable before covering it
            binds.append(f"mount --bind /usr/sbin {root}/sbin-orig")
            binds.append(f"mount --bind {root}/sbin /usr/sbin")
        for point, sub in PRIVATE_DIRS.items():
            binds.append(f"mount --bind {root}/{sub} {point}")
        binds.append(f"mount --bind {root}/run /run")  # last: the root may live under /run
        return ("set -e; " + "; ".join(binds) + f"; hostname {self.name}; "
                f"touch {root}/holder.ready; exec sleep infinity")

    def start_holder(self, timeout: float = 15.0) -> None:
        ready = self.root / "holder.ready"
        ready.unlink(missing_ok=True)
        log = open(self.root / "logs" / "holder.log", "ab")  # noqa: SIM115 - child keeps it
        with log:
            proc = self.namespace.popen(
                ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c",
                 self._holder_script()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.holder_pid = proc.pid
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise LabError(f"{self.name}: namespace holder exited (rc {proc.returncode}): "
                               f"{(self.root / 'logs' / 'holder.log').read_text().strip()}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: namespace holder not ready after {timeout} s")
            time.sleep(0.01)

    def _daemon(self, argv: Sequence[str], logname: str, env: Mapping[str, str] = {}) -> int:
        envargs = [f"{k}={v}" for k, v in env.items()]
        with open(self.root / "logs" / logname, "ab") as log:
            proc = self.popen(["env", *envargs, *argv], stdin=subprocess.DEVNULL,
                              stdout=log, stderr=log, start_new_session=True)
        self.cluster._children.append(proc)  # polled by _reap so no zombie stays behind
        return proc.pid

    def start_stack(self) -> None:
        """Start corosync (and pacemakerd) if they are not running; does not wait."""
        if not self.corosync_running():
            self._daemon(["corosync", "-f"], "corosync.stdout")
            deadline = time.monotonic() + 15
            while self.run(["corosync-cfgtool", "-s"], timeout=10).returncode != 0:
                if time.monotonic() > deadline:
                    raise LabError(f"{self.name}: corosync did not start; "
                                   f"{self.log_tail('corosync')}")
                time.sleep(0.05)
        if self.cluster.pacemaker and not self.stack_pids("pacemakerd"):
            self._daemon(["pacemakerd"], "pacemakerd.stdout", {
                "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",
                "PCMK_logfacility": "none", "PCMK_debug": "no"})

    def stack_pids(self, command: str | None = None) -> list[int]:
        """Processes of the node other than the holder (only ``command`` if given)."""
        if self.holder_pid is None:
            return []
        pids = [p for p in pids_in_mount_ns(self.holder_pid) if p != self.holder_pid]
        if command is None:
            return pids
        found = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == command[:15]:
                    found.append(pid)
        return found

    def corosync_running(self) -> bool:
        return bool(self.stack_pids("corosync"))

    def kill_corosync(self) -> None:
        """SIGKILL corosync only (a crash the cluster must notice and fence)."""
        _kill_and_wait(self.stack_pids("corosync"))

    def kill_stack(self) -> None:
        """SIGKILL everything the node runs (corosync, pacemaker, agents): a dead guest."""
        _kill_and_wait(self.stack_pids())
        self.cluster._reap()

    def stop(self) -> None:
        if self.holder_pid is not None:
            _kill_and_wait(pids_in_mount_ns(self.holder_pid))
            self.holder_pid = None

    def log_tail(self, which: str = "pacemaker", lines: int = 30) -> str:
        path = {"corosync": self.root / "log-cluster" / "corosync.log",
                "pacemaker": self.root / "log-pacemaker" / "pacemaker.log"}[which]
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return f"(no {path})"
        return f"{path}:\n" + "\n".join(text.splitlines()[-lines:])

    # -- what the node sees ----------------------------------------------------------

    def corosync_members(self) -> set[int]:
        """Node ids this node's corosync lists as joined (empty if it does not answer)."""
        done = self.run(["corosync-cmapctl", "-b", "runtime.members"], timeout=10)
        if done.returncode != 0:
            return set()
        ids = set()
        for line in done.stdout.splitlines():
            # runtime.members.2.status (str) = joined
            key, _, value = line.partition(" = ")
            parts = key.split(" ")[0].split(".")
            if len(parts) == 4 and parts[3] == "status" and value.strip() == "joined":
                ids.add(int(parts[2]))
        return ids

    def pacemaker_view(self) -> tuple[set[str], str | None, bool]:
        """(online node names, DC name or None, quorate) as this node's crm_mon tells."""
        done = self.run(["crm_mon", "-1", "--output-as=xml"], timeout=20)
        if done.returncode != 0:
            return set(), None, False
        try:
            root = ET.fromstring(done.stdout)
        except ET.ParseError:
            return set(), None, False
        online = {n.get("name", "") for n in root.iter("node") if n.get("online") == "true"}
        dc = root.find("summary/current_dc")
        dc_name = dc.get("name") if dc is not None and dc.get("present") == "true" else None
        quorate = dc is not None and dc.get("with_quorum") == "true"
        return online, dc_name, quorate


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
        alive = []
        for proc in self._children:
            if proc.poll() is None:
                alive.append(proc)
        self._children = alive

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
            if isinstance(holder, int) and _mount_ns(holder) is not None:
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
