"""One member of a lab cluster: its namespaces, private directories and daemons.

See :mod:`guestfence.lab.cluster` for the layout; this module holds the
per-node half (start the holder and the stack, run commands inside, kill).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guestfence.lab.clusterconf import seed_cib
from guestfence.lab.detached import all_pids, ns_id, pid_alive
from guestfence.lab.netns import LabError, Namespace

if TYPE_CHECKING:
    from guestfence.lab.cluster import Cluster

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


def pids_in_mount_ns(holder: int) -> list[int]:
    """Every process sharing ``holder``'s mount namespace (the holder included).

    Empty when ``holder`` is in this process's own mount namespace: then it is
    not a node's holder (a pid reused after the lab died), and the namespace
    is the machine's -- nothing in it is the lab's to kill.
    """
    wanted = ns_id(holder, "mnt")
    if wanted is None or wanted == ns_id("self", "mnt"):
        return []
    return [pid for pid in all_pids() if ns_id(pid, "mnt") == wanted]


def is_holder(pid: int, namespace: Namespace) -> bool:
    """``pid`` is a node holder: a ``sleep`` in ``namespace`` with a mount namespace of its
    own (guards a pid read back from a state file against reuse)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return (comm == "sleep" and namespace.contains(pid)
            and ns_id(pid, "mnt") not in (None, ns_id("self", "mnt")))


def _kill_and_wait(pids: Collection[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while pid_alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f"process {pid} survives SIGKILL")
            time.sleep(0.01)


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
        def q(path: str) -> str:
            return shlex.quote(str(path))

        root = str(self.root)
        binds = []
        if self.cluster.agents:  # keep the real /usr/sbin reachable before covering it
            binds.append(f"mount --bind /usr/sbin {q(root + '/sbin-orig')}")
            binds.append(f"mount --bind {q(root + '/sbin')} /usr/sbin")
        for point, sub in PRIVATE_DIRS.items():
            binds.append(f"mount --bind {q(root + '/' + sub)} {point}")
        binds.append(f"mount --bind {q(root + '/run')} /run")  # last: root may be under /run
        return ("set -e; " + "; ".join(binds) + f"; hostname {q(self.name)}; "
                f"touch {q(root + '/holder.ready')}; exec sleep infinity")

    def start_holder(self, timeout: float = 15.0) -> None:
        ready = self.root / "holder.ready"
        ready.unlink(missing_ok=True)
        with open(self.root / "logs" / "holder.log", "ab") as log:
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
