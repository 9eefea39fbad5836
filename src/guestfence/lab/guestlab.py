"""A guest cluster in a box: pacemaker fencing through guestfence, on one machine.

Layout (one LAN, one network namespace each)::

    node1 node2 node3   the guest cluster: corosync + pacemaker (lab.cluster), our agents
                        in their private /usr/sbin, hostname = node name
    host1 host2         the hypervisors: one guestfenced each on a libvirt test-driver
                        node whose domains are the cluster nodes (host1: node1, node2;
                        host2: node3); multicast on eth0, as on a real host
    storage             our PR-complete iSCSI target with the shared LUN

The guest's power state lives in its host daemon's libvirt connection (the test
driver keeps state per connection), so the lab asks the daemon, over the real
protocol with our fence_xvm, exactly as a person at the hosts would.

Every process is started detached and every name, pid and address is written
to ``<state_dir>/lab.json``, so ``guestfence lab status`` and ``down`` work
from another invocation; ``down`` kills what runs in the lab's namespaces,
removes them and the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guestfence.keygen import write_key
from guestfence.lab import detached, guestcib, powerlink
from guestfence.lab.cluster import Cluster, missing_tools
from guestfence.lab.guestview import (
    CLUSTER_NAME,
    HOSTS,
    NODES,
    STORAGE,
    TARGET_IQN,
    TARGET_PORT,
    GuestState,
    LabView,
    completed_at,
    node_key,
)
from guestfence.lab.netns import LabError, Namespace, build_lan
from guestfence.lab.ourdaemon import READY_LINE, daemon_config_text
from guestfence.lab.testdriver import Guest, write_node_xml

DEFAULT_STATE_DIR = Path("/var/lib/guestfence-lab")
NAMESPACE_PREFIX = "gflab-"
SUBNET = "10.231.90"
LUN_SIZE = 64 * 1024 * 1024
STATE_FILE = powerlink.STATE_FILE  # one name: the power link reads this file too
__all__ = ["CLUSTER_NAME", "DEFAULT_STATE_DIR", "HOSTS", "NAMESPACE_PREFIX", "NODES", "STATE_FILE",
           "STORAGE", "GuestLab", "GuestState", "check_can_run", "completed_at", "node_key"]
_ENTRY = "import sys; from guestfence.cli import main; sys.argv[0] = 'guestfence'; main()"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class GuestLab(LabView):
    """Build with :meth:`up`, find again with :meth:`load`, tear down with :meth:`down`."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, *,
                 prefix: str = NAMESPACE_PREFIX, progress: Progress = _quiet,
                 qemu: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.prefix = prefix
        self.qemu = qemu
        """Real libvirtd + QEMU guests on the hosts instead of libvirt's test driver."""
        self.progress = progress
        self.state: dict[str, Any] = {}
        self.cluster: Cluster | None = None
        self._children: list[subprocess.Popen[bytes]] = []
        self._t0 = time.monotonic()

    # -- paths and names -------------------------------------------------------------

    def _say(self, text: str) -> None:
        self.progress(f"[{time.monotonic() - self._t0:5.1f}s] {text}")

    def _save(self) -> None:
        if self.cluster is not None:
            self.state["cluster"] = self.cluster.state()
        tmp = self.state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.state_dir / STATE_FILE)

    # -- building --------------------------------------------------------------------

    def up(self, *, start_timeout: float = 90.0) -> GuestLab:
        check_can_run(self.qemu)
        if (self.state_dir / STATE_FILE).exists():
            old = GuestLab.load(self.state_dir)
            if old.is_up():
                raise LabError(f"a lab is already up (state in {self.state_dir}); "
                               "run 'guestfence lab down' first")
            self._say(f"removing the remains of an old lab in {self.state_dir}")
            old.down()
        if str(self.state_dir).startswith(("/run/", "/dev/shm/")):
            raise LabError(f"{self.state_dir}: the state directory must not be under /run or "
                           "/dev/shm (the nodes get private copies of those)")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state = {"prefix": self.prefix, "namespaces": {}, "addresses": {}, "hosts": {},
                      "qemu": self.qemu, "qemu_hosts": {}, "started": time.time()}
        try:
            self._build()
            self._save()
            self._start_hosts()
            self._start_storage()
            self._start_cluster(start_timeout)
            self._load_cib()
            self.wait_unfenced(start_timeout)
            self._start_power_link()
        except BaseException:
            self._say("failed; tearing down what was built")
            self.down()
            raise
        self._say("lab is up")
        return self

    def _build(self) -> None:
        members = [*NODES, *HOSTS, STORAGE]
        taken = [n for n in (*(self.prefix + m for m in members), self.prefix + "br")
                 if Namespace(n).exists()]
        if taken:  # build_lan would replace them: they may be another lab's
            raise LabError(f"network namespaces {', '.join(taken)} exist already (another "
                           "lab with another --state-dir? use --prefix, or its 'lab down')")
        # recorded before they exist, so a 'down' after an interrupted 'up' finds them
        self.state["namespaces"] = {m: self.prefix + m for m in members}
        self.state["namespaces"]["bridge"] = self.prefix + "br"
        self._save()
        lan = build_lan(self.prefix, members, subnet=SUBNET, subnet6=None)
        if {m: lan.hosts[m].name for m in members} | {"bridge": lan.bridge.name} \
                != self.state["namespaces"]:
            raise LabError("build_lan named the namespaces unexpectedly")
        self.state["addresses"] = dict(lan.addresses)
        write_key(str(self.key_file))
        self._say(f"LAN {SUBNET}.0/24: {', '.join(members)} (namespaces {self.prefix}*)")

    def _spawn(self, member: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        proc = detached.spawn(self.namespace(member).exec_argv(argv), log)
        self._children.append(proc)
        return proc

    def start_host_daemon(self, host: str, timeout: float = 30.0) -> None:
        """Start (again) the guestfenced of ``host`` and wait for its ready line."""
        work = self.state_dir / host
        work.mkdir(exist_ok=True)
        guests = [Guest(name=n, uuid=f"6766{i:04d}-0000-4000-8000-{i:012d}")
                  for i, n in enumerate(HOSTS[host], start=NODES.index(HOSTS[host][0]) + 1)]
        conf = work / "fence_virt.conf"
        if not conf.exists():  # a restarted daemon keeps its guests' definitions
            uri = (self._start_qemu_host(host, guests) if self.qemu
                   else write_node_xml(work / "node.xml", guests))
            conf.write_text(daemon_config_text(str(self.key_file), [uri], interface="eth0"))
        log = work / "guestfenced.log"
        mark = log.stat().st_size if log.exists() else 0
        admin = work / "admin.sock"  # its own: the power link and 'guestfence status' use it
        proc = self._spawn(host, [sys.executable, "-m", "guestfence.host.main", "-F", "-f",
                                  str(conf), "-p", str(work / "guestfenced.pid"), "-d", "1",
                                  "--admin-socket", str(admin)], log)
        deadline = time.monotonic() + timeout
        while READY_LINE not in log.read_text(errors="replace")[mark:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[mark:][-2000:]
                raise LabError(f"guestfenced of {host} did not become ready; log {log}:\n{tail}")
            time.sleep(0.05)
        self.state["hosts"][host] = {"pid": proc.pid, "guests": list(HOSTS[host]),
                                     "log": str(log), "admin_socket": str(admin)}
        self._save()

    def _start_qemu_host(self, host: str, guests: list[Guest], timeout: float = 120.0) -> str:
        """A private libvirtd with running QEMU guests for ``host`` (its own long-lived
        process, see :mod:`guestfence.lab.qemuhost`); the URI guestfenced connects to."""
        work = self.state_dir / host
        ready = work / "qemuhost.json"
        ready.unlink(missing_ok=True)
        proc = detached.spawn([sys.executable, "-m", "guestfence.lab.qemuhost",
                               str(work / "libvirt"), self.state["namespaces"][host], str(ready),
                               *(f"{g.name}={g.uuid}" for g in guests)], work / "qemuhost.log")
        self._children.append(proc)
        self.state["qemu_hosts"][host] = detached.record(proc.pid)
        self._save()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{host}: libvirtd with QEMU guests did not start; log "
                               f"{work / 'qemuhost.log'}:\n"
                               f"{(work / 'qemuhost.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        uri = str(json.loads(ready.read_text())["uri"])
        self.state["qemu_hosts"][host]["uri"] = uri
        return uri

    def _start_hosts(self) -> None:
        backend = "libvirtd + QEMU (TCG)" if self.qemu else "test driver"
        for host in HOSTS:
            self.start_host_daemon(host)
            self._say(f"{host}: guestfenced ready ({backend}, guests "
                      f"{', '.join(HOSTS[host])})")

    def _start_storage(self, timeout: float = 30.0) -> None:
        work = self.state_dir / STORAGE
        work.mkdir(exist_ok=True)
        lun = work / "lun1.img"
        with open(lun, "wb") as f:
            f.truncate(LUN_SIZE)
        ready = work / "target.ready"
        portal = f"{self.state['addresses'][STORAGE]}:{TARGET_PORT}"
        proc = self._spawn(STORAGE, [sys.executable, "-c", _ENTRY, "target", "serve",
                                     "--iqn", TARGET_IQN, "--portal", portal,
                                     "--ready-file", str(ready), "--lun", str(lun)],
                           work / "target.log")
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"iSCSI target did not become ready; log {work / 'target.log'}")
            time.sleep(0.05)
        self.state["target"] = {"pid": proc.pid, "url": self.lun_url}
        self._say(f"{STORAGE}: our iSCSI target on {portal}, LUN {self.lun_url}")

    def _start_cluster(self, timeout: float) -> None:
        from guestfence.install_agents import agent_sources

        nodes = {n: self.namespace(n) for n in NODES}
        self.cluster = Cluster(self.state_dir / "cluster", nodes, cluster_name=CLUSTER_NAME,
                               start_timeout=timeout, agents=agent_sources(),
                               addresses={n: self.state["addresses"][n] for n in NODES},
                               crm_config={"dc-deadtime": "2s", "stonith-action": "off",
                                           # a fencing request stuck on a node that left
                                           # fails in 30 s, not 60 (see decisions.md)
                                           "stonith-timeout": "30s"})
        self._save()
        self.cluster.start()
        self._save()
        self._say(f"cluster {CLUSTER_NAME}: {', '.join(NODES)} online, DC elected "
                  "(corosync 3 + pacemaker, our agents in the nodes' /usr/sbin)")

    def _start_power_link(self, timeout: float = 30.0) -> None:
        """The watcher that cuts a node's stack when its guest goes off and boots it when
        the guest comes on (:mod:`guestfence.lab.powerlink`); waits for its first view."""
        proc = powerlink.start(self.state_dir)
        self._children.append(proc)
        self.state["powerlink"] = detached.record(proc.pid)
        self._save()
        deadline = time.monotonic() + timeout
        while set(powerlink.read_view(self.state_dir).get("known", {})) != set(NODES):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the power link did not start; log {self.power_link_log}")
            time.sleep(0.05)
        self._say("power link: a node's stack is killed when its guest goes off, started "
                  "when it comes on")

    def _load_cib(self) -> None:
        node = self.node_with_stack()
        for section, xml in (
                ("resources", guestcib.resources_xml(NODES, str(self.key_file),
                                                     [self.lun_url])),
                ("configuration", guestcib.topology_xml(NODES))):
            verb = "--replace" if section == "resources" else "--create"
            done = node.run(["cibadmin", verb, "-o", section, "--xml-text", xml])
            if done.returncode != 0:
                raise LabError(f"cibadmin {verb} -o {section} failed: {done.stderr.strip()}")
        self._say("CIB: stonith fence-xvm (level 1), fence-scsi provides=unfencing (level 2), "
                  "Dummy resource web")

    def wait_unfenced(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = {node_key(n) for n in NODES}
        while True:
            try:
                keys = set(self.lun_keys())
            except LabError:  # a login refused while the target is busy: ask again
                keys = set()
            started = self.started_resources()
            if want <= keys and {guestcib.XVM_DEVICE, guestcib.SCSI_DEVICE,
                                 guestcib.RESOURCE} <= set(started) and not any(
                    e.get("status") == "pending" for e in self.fence_history("*")):
                break
            if time.monotonic() > deadline:
                raise LabError(f"nodes not unfenced / resources not started after {timeout:g} s"
                               f" (keys {sorted(hex(k) for k in keys)}, started {started})")
            time.sleep(0.3)
        self._say("every node unfenced itself (its key is on the LUN); devices started")

    # -- finding it again and tearing down -------------------------------------------

    @classmethod
    def load(cls, state_dir: Path = DEFAULT_STATE_DIR, *, progress: Progress = _quiet
             ) -> GuestLab:
        path = Path(state_dir) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab is up (no {path}); start one with 'guestfence lab up'"
                           ) from None
        except ValueError as e:
            raise LabError(f"{path}: not a lab state file ({e})") from None
        lab = cls(Path(state_dir), prefix=state.get("prefix", NAMESPACE_PREFIX),
                  progress=progress)
        lab.state = state
        lab.qemu = bool(state.get("qemu"))
        if "cluster" in state:
            lab.cluster = Cluster.attach(state["cluster"])
        return lab

    def is_up(self) -> bool:
        return any(Namespace(n).exists() for n in self.state.get("namespaces", {}).values())

    def down(self) -> None:
        """Stop everything the lab started and remove its namespaces and files; idempotent."""
        errors = []
        if not detached.stop(self.state.get("powerlink", {})):  # first: no reactions now
            errors.append(f"the power link {self.state['powerlink']['pid']} survived")
        for host, info in self.state.get("qemu_hosts", {}).items():
            if not detached.stop(info, timeout=30):  # it destroys its guests: give it time
                errors.append(f"{host}: the libvirtd/QEMU process {info['pid']} survived")
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except LabError as e:
                errors.append(str(e))
        names = self.state.get("namespaces", {})
        for member in sorted(names, key=lambda m: m == "bridge"):  # the bridge last
            try:
                Namespace(names[member]).destroy()
            except LabError as e:
                errors.append(str(e))
        for proc in self._children:
            proc.poll()
        self._remove_files()
        if errors:
            raise LabError("; ".join(errors))

    def _remove_files(self) -> None:
        """Remove what the lab wrote, then the state directory if nothing else is in it
        (``--state-dir`` may name a directory that holds other things)."""
        for name in (*HOSTS, STORAGE, "cluster"):
            shutil.rmtree(self.state_dir / name, ignore_errors=True)
        for name in (STATE_FILE, f"{STATE_FILE}.tmp", self.key_file.name, powerlink.LOG_FILE,
                     powerlink.VIEW_FILE, f"{powerlink.VIEW_FILE}.tmp"):
            (self.state_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()

    def restart_guest(self, node: str, timeout: float = 90.0) -> None:
        """Bring a fenced node back: its host daemon running, the guest powered on (the
        power link boots the node), unfenced again (key on the LUN) and every node online.

        A guest that is on already (its host daemon was down while the storage fenced
        it) makes no power transition the link would act on: it is rebooted here."""
        host = self.host_of(node)
        pid = self.state["hosts"][host].get("pid")
        if pid is None or not Path(f"/proc/{pid}").exists():
            self.start_host_daemon(host)
        assert self.cluster is not None
        power = self.wait_power_link_sees(node, timeout)
        since = time.time()
        if power == "on":
            self.cluster.node(node).kill_stack()
            self.cluster.node(node).start_stack()
        else:
            self.power_on(node)  # the power link starts its stack: never both
        self.wait_booted(node, timeout)
        # a fenced node is unfenced again when it rejoins: wait for that to have happened
        # (its key may still be on the LUN from before, so the keys alone do not tell)
        deadline = time.monotonic() + timeout
        while not any(e.get("action") == "on" and e.get("status") == "success"
                      and completed_at(e) >= int(since) for e in self.fence_history(node)):
            if time.monotonic() > deadline:
                raise LabError(f"{node} was not unfenced after rejoining: "
                               f"{self.fence_history(node)}")
            time.sleep(0.3)
        self.wait_unfenced(timeout)

    def stop_host_daemon(self, host: str) -> None:
        pid = int(self.state["hosts"][host]["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for proc in self._children:
            if proc.pid == pid:
                proc.wait(10)
        self.state["hosts"][host]["pid"] = None
        self._save()

def check_can_run(qemu: bool = False) -> None:
    """Refuse early, naming what is missing: root, tools, libiscsi (and QEMU if asked)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it builds network and mount namespaces "
                       "(run: sudo guestfence lab up)")
    problems = missing_tools(pacemaker=True)
    if shutil.which("ip") is None:
        problems.append("ip (apt-get install iproute2)")
    import ctypes.util

    if ctypes.util.find_library("iscsi") is None:
        problems.append("libiscsi (apt-get install libiscsi7)")
    if not Path("/usr/lib/ocf/resource.d/pacemaker/Dummy").exists():
        problems.append("the Dummy resource agent (apt-get install pacemaker)")
    if qemu:
        from guestfence.lab.libvirtd import missing_tools as missing_qemu

        problems += missing_qemu()
    if problems:
        raise LabError("the lab needs: " + "; ".join(problems))
