"""A private vCenter simulator (govmomi's ``simulator`` package) on 127.0.0.1.

:class:`VcSim` builds ``tests/vcsim/main.go`` once (Debian's
golang-go and golang-github-vmware-govmomi-dev, ``GO111MODULE=off``; the
binary is cached under ``/tmp`` by the hash of the source and the Go version),
runs it as our child and waits for its ``READY`` line. The model is vcsim's
VPX: datacenter ``DC0`` with a standalone host and a cluster, and
``vms_per_pool`` VMs in each of their two resource pools (6 -> 12 VMs,
1000 -> 2,000), all in ``/DC0/vm``; ``duplicate`` adds ``/DC0/vm/dup/<name>``,
a second VM with an existing name.

The discovery helpers (:meth:`VcSim.vms`, :meth:`VcSim.power_state`, ...)
talk to the simulator with pyVmomi, independently of the agent under test.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError
from guestfence.lab.tools import find_tool, missing

GOPATH = "/usr/share/gocode"
GOVMOMI = Path(GOPATH) / "src/github.com/vmware/govmomi/simulator"
REQUIRED_TOOLS: dict[str, str] = {"go": "golang-go"}
READY_TIMEOUT = 120.0  # 2,000 VMs take ~2 s; a loaded machine more
BUILD_TIMEOUT = 600.0
STOP_TIMEOUT = 5.0


def source_dir() -> Path:
    """tests/vcsim of this checkout (the lab runs from the source tree)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "tests" / "vcsim" / "main.go"
        if candidate.exists():
            return candidate.parent
    raise LabError("tests/vcsim/main.go not found above " + str(here))


def missing_tools() -> list[str]:
    problems = missing(REQUIRED_TOOLS)
    if not GOVMOMI.is_dir():
        problems.append(f"{GOVMOMI} (apt-get install golang-github-vmware-govmomi-dev)")
    return problems


def _go() -> str:
    path = find_tool("go")
    if path is None:
        raise LabError("go not found (apt-get install golang-go)")
    return path


def build(source: Path | None = None) -> Path:
    """The simulator binary, built once per source hash into /tmp."""
    src = source or source_dir()
    go = _go()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True,
                             timeout=30).stdout
    digest = hashlib.sha256(version.encode())
    for path in sorted(src.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    cache = Path(tempfile.gettempdir()) / f"guestfence-vcsim-{digest.hexdigest()[:16]}"
    binary = cache / "vcsim"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"vcsim.{os.getpid()}.tmp"
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="",
               GOCACHE=str(Path(tempfile.gettempdir()) / "guestfence-vcsim-gocache"))
    try:
        done = subprocess.run([go, "build", "-o", str(partial), "."], cwd=src, env=env,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              check=False)
        if done.returncode != 0:
            raise LabError(f"building the vCenter simulator failed: {done.stderr.strip()}")
        os.replace(partial, binary)  # atomic: concurrent builders are harmless
    finally:
        partial.unlink(missing_ok=True)
    return binary


@dataclass(frozen=True)
class SimVm:
    name: str
    uuid: str  # BIOS UUID, config.uuid
    path: str  # inventory path, e.g. /DC0/vm/DC0_H0_VM0
    power_state: str  # poweredOn, poweredOff, suspended


class VcSim(StartStop):
    """The simulator as a context manager; ``stop()`` always reaps the process."""

    def __init__(
        self,
        vms_per_pool: int = 6,
        *,
        tls: bool = True,
        auth: tuple[str, str] | None = ("fence", "s3cret"),
        duplicate: str | None = None,
        method_delay: Mapping[str, int] | None = None,
        deny_power: bool = False,
        port: int = 0,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.vms_per_pool = vms_per_pool
        self.tls = tls
        self.auth = auth
        self.duplicate = duplicate
        self.method_delay = dict(method_delay or {})
        self.deny_power = deny_power  # answer power on/off with vCenter's NoPermission
        self.requested_port = port
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.host = ""
        self.port = 0
        self.vm_count = 0
        self._stderr: Any = None
        self._workdir: str | None = None
        self.cert_file = ""  # PEM of the server's self-signed certificate (tls only)

    def __repr__(self) -> str:
        return f"VcSim({self.url or 'not started'}, vms={self.vm_count})"

    @property
    def username(self) -> str:
        return self.auth[0] if self.auth else "user"

    @property
    def password(self) -> str:
        return self.auth[1] if self.auth else "pass"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self, binary: Path) -> list[str]:
        args = [str(binary), f"-port={self.requested_port}", f"-vms={self.vms_per_pool}",
                f"-tls={'true' if self.tls else 'false'}"]
        if self.auth:
            args.append(f"-auth={self.auth[0]}:{self.auth[1]}")
        if self.duplicate:
            args.append(f"-duplicate={self.duplicate}")
        if self.deny_power:
            args.append("-deny-power")
        if self.cert_file:
            args.append(f"-cert-out={self.cert_file}")
        if self.method_delay:
            args.append("-method-delay=" + ",".join(f"{k}={v}"
                                                     for k, v in self.method_delay.items()))
        return args

    def start(self) -> VcSim:
        binary = build()
        try:
            self._workdir = tempfile.mkdtemp(prefix="guestfence-vcsim-")
            if self.tls:
                self.cert_file = os.path.join(self._workdir, "server.pem")
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
            self.proc = subprocess.Popen(self.argv(binary), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=self._stderr)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        buffer = b""
        fd = self.proc.stdout.fileno()
        while b"READY" not in buffer or not buffer.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"vCenter simulator not ready within {self.ready_timeout:g} s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise LabError("vCenter simulator exited before it was ready: "
                               + self.stderr_text())
            buffer += chunk
        for line in buffer.decode().splitlines():
            word, _, rest = line.partition(" ")
            if word == "URL":
                parts = urlsplit(rest)
                self.host, self.port = parts.hostname or "", parts.port or 0
                self.url = f"{parts.scheme}://{self.host}:{self.port}{parts.path}"
            elif word == "READY":
                self.vm_count = int(rest)
        if not self.url:
            raise LabError(f"vCenter simulator printed no URL: {buffer.decode()!r}")

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return str(self._stderr.read().decode(errors="replace")).strip()

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung vCenter)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            code = proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    # -- discovery (pyVmomi, separate from the agent) ----------------------------------

    def agent_stdin(self, **extra: str) -> str:
        """What Pacemaker would pipe to fence_vmware_soap for this simulator."""
        values = {"ip": self.host, "ipport": str(self.port), "username": self.username,
                  "password": self.password}
        values.update({"ssl_insecure": "1"} if self.tls else {"plain_http": "1"})
        values.update(extra)
        return "".join(f"{k}={v}\n" for k, v in values.items())

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A logged-in pyVmomi ServiceContent."""
        import ssl

        from pyVmomi import vim as _vim
        from pyVmomi.SoapAdapter import SoapStubAdapter as _SoapStubAdapter

        vim: Any = _vim  # pyVmomi's stubs are partial: used untyped
        soap_stub: Any = _SoapStubAdapter
        context = ssl._create_unverified_context() if self.tls else None
        stub = soap_stub(host=self.host, port=self.port if self.tls else -self.port,
                               version="vim.version.version9", sslContext=context,
                               httpConnectionTimeout=30)
        content = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
        content.sessionManager.Login(self.username, self.password, None)
        try:
            yield content
        finally:
            try:
                content.sessionManager.Logout()
            finally:
                stub.DropConnections()

    def vms(self) -> list[SimVm]:
        """Every VM with its name, BIOS UUID, inventory path and power state."""
        from pyVmomi import vim as _vim
        from pyVmomi import vmodl as _vmodl

        vim: Any = _vim
        pc: Any = _vmodl.query.PropertyCollector
        with self.session() as content:
            view = content.viewManager.CreateContainerView(content.rootFolder,
                                                           [vim.ManagedEntity], True)
            traverse = pc.TraversalSpec(name="t", type=vim.view.ContainerView, path="view",
                                        skip=False)
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
                propSet=[pc.PropertySpec(type=vim.ManagedEntity, all=False,
                                         pathSet=["name", "parent"]),
                         pc.PropertySpec(type=vim.VirtualMachine, all=False,
                                         pathSet=["name", "parent", "config.uuid",
                                                  "runtime.powerState"])])
            objects = content.propertyCollector.RetrieveContents([spec])
            props = {o.obj._moId: {p.name: p.val for p in o.propSet} for o in objects}
            root = content.rootFolder._moId

        def path_of(moid: str) -> str:
            parts = []
            while moid in props and moid != root:
                parts.append(props[moid]["name"])
                parent = props[moid].get("parent")
                moid = parent._moId if parent is not None else root
            return "/" + "/".join(reversed(parts))

        return [SimVm(name=p["name"], uuid=p.get("config.uuid", ""), path=path_of(moid),
                      power_state=str(p.get("runtime.powerState")))
                for moid, p in props.items() if "config.uuid" in p]

    def vm(self, name_or_uuid: str) -> SimVm:
        matches = [v for v in self.vms() if name_or_uuid in (v.name, v.uuid, v.path)]
        if len(matches) != 1:
            raise LabError(f"{len(matches)} simulator VMs match {name_or_uuid!r}")
        return matches[0]

    def power_state(self, name_or_uuid: str) -> str:
        return self.vm(name_or_uuid).power_state

    def set_power(self, uuid: str, state: str) -> None:
        """Drive a VM (by UUID) to poweredOn, poweredOff or suspended from outside."""
        with self.session() as content:
            vm = content.searchIndex.FindByUuid(uuid=uuid, vmSearch=True)
            if vm is None:
                raise LabError(f"no simulator VM with UUID {uuid}")
            current = vm.runtime.powerState
            if current == state:
                return
            if state == "suspended" and current != "poweredOn":
                self._wait(vm.PowerOnVM_Task())
            task = {"poweredOn": vm.PowerOnVM_Task, "poweredOff": vm.PowerOffVM_Task,
                    "suspended": vm.SuspendVM_Task}[state]()
            self._wait(task)

    @staticmethod
    def _wait(task: Any) -> None:
        deadline = time.monotonic() + 30
        while task.info.state not in ("success", "error"):
            if time.monotonic() > deadline:
                raise LabError(f"simulator task {task} did not finish")
            time.sleep(0.05)
        if task.info.state == "error":
            raise LabError(f"simulator task failed: {task.info.error}")
