"""A private libvirtd with real QEMU (TCG) guests, for integration tests and labs.

:class:`LibvirtLab` runs Debian's ``libvirtd`` as root without touching the
machine's libvirt state:

* in a network :class:`~guestfence.lab.netns.Namespace` (optional) and always
  in a **private mount namespace** (``unshare --mount --propagation private``)
  in which scratch directories are bind-mounted over ``/run`` (so
  ``/run/libvirt`` and ``/run/libvirtd.pid`` are private), ``/etc/libvirt``,
  ``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt``; a
  tmpfs hides ``/sys/fs/cgroup`` so libvirt never creates cgroups;
* under a **child subreaper** (``python -m guestfence.lab.libvirtd --reap``).
  libvirtd double-forks qemu, so qemu's parent becomes the nearest subreaper.
  Without one that is PID 1, which in containers may reap only about once a
  second; libvirt polls ``kill(pid, 0)``, which succeeds on a zombie, so every
  ``virsh destroy`` would take 1-2 s.  The reaper also forwards SIGTERM to
  libvirtd, and once libvirtd has exited it kills whatever is left below it
  (the qemu processes): stopping the reaper stops the whole tree.  It asks for
  SIGTERM when its parent dies, so a killed test run does not leave guests.

No virtlogd is needed: ``stdio_handler = "file"`` in qemu.conf makes libvirtd
write qemu's output to ``/var/log/libvirt/qemu/NAME.log`` itself.  qemu runs
as root without a security driver and without its own mount namespace.

Debian's libvirt looks up the user ``libvirt-qemu`` (created by
libvirt-daemon-system, which this lab does not need) before it reads
qemu.conf; when the machine has no such user, copies of ``/etc/passwd`` and
``/etc/group`` with the entries added are bind-mounted inside the namespace.

The daemon is ready when its unix socket accepts a libvirt connection.
Clients outside the mount namespace reach it through the socket file in the
scratch directory: :attr:`LibvirtLab.uri` is
``qemu:///system?socket=SCRATCH/run/libvirt/libvirt-sock``.  A unix socket
addressed by path works from any network namespace.

The only change made outside the scratch directory: the mount points
``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt`` are
created (empty) when missing, as the libvirt packages would.

Needs root, ``libvirtd`` (libvirt-daemon), the QEMU driver
(libvirt-daemon-driver-qemu) and ``qemu-system-x86_64`` (qemu-system-x86).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import grp
import itertools
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from guestfence.lab.detached import all_pids, ns_id, pid_alive, stat_fields
from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError, Namespace

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU_X86 = "/usr/bin/qemu-system-x86_64"
QEMU_DRIVER_GLOB = "/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so"
QEMU_USER = "libvirt-qemu"
"""The user (and group) Debian's libvirt resolves before reading qemu.conf."""
QEMU_UID = 64055

REQUIRED: dict[str, str] = {
    LIBVIRTD: "libvirt-daemon",
    QEMU_DRIVER_GLOB: "libvirt-daemon-driver-qemu",
    QEMU_X86: "qemu-system-x86",
    "/usr/bin/unshare": "util-linux",
    "/usr/bin/mount": "mount",
}
"""Path (or glob) -> Debian package that provides it."""

BIND_DIRS: dict[str, str] = {
    "/run": "run",
    "/etc/libvirt": "etc",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}
"""Path inside the mount namespace -> its scratch subdirectory."""

SYSTEM_CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
"""Seeded into the scratch cache when present: saves the ~1.5 s qemu probe."""

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL = 0.02
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "GUESTFENCE_LAB_PARENT"


def missing_tools() -> list[str]:
    """One line per missing executable or driver, naming the Debian package to install."""
    return [
        f"{path} (apt-get install {pkg})"
        for path, pkg in REQUIRED.items()
        if not glob.glob(path)
    ]


# -- processes ---------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` even as a zombie (unlike detached.start_time): a zombie
    remembered with its start time is never mistaken for a later process reusing it."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (ppid chains), found by one /proc scan."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = _ppid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_qemu_for(pid: int, name: str | None) -> bool:
    argv = _cmdline(pid)
    if not argv or not os.path.basename(argv[0]).startswith("qemu-system-"):
        return False
    if name is None:
        return True
    for flag, value in itertools.pairwise(argv):
        if flag == "-name" and value.split(",")[0] == f"guest={name}":
            return True
    return False


# -- the child subreaper (runs as `python -m guestfence.lab.libvirtd --reap CMD...`) --


def _reap_ready(blocking: bool) -> list[tuple[int, int]]:
    """Reap children; with ``blocking`` wait for at least one.  [(pid, status)]."""
    reaped: list[tuple[int, int]] = []
    flags = 0 if blocking else os.WNOHANG
    while True:
        try:
            pid, status = os.waitpid(-1, flags)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))
        flags = os.WNOHANG


def reaper_main(argv: Sequence[str], grace: float = 3.0) -> int:
    """Become a child subreaper, run ``argv`` as a child and return its exit code.

    SIGTERM, SIGINT and SIGHUP are forwarded to that child.  Orphans that land
    here (the double-forked qemu processes) are reaped as soon as they die.
    When the child has exited, every remaining process below the reaper gets
    SIGTERM, then SIGKILL after ``grace`` seconds.  The reaper gets SIGTERM
    when its parent dies; :data:`PARENT_ENV`, if set, is the pid the parent
    must have (a parent that died before that was armed counts as dead).
    """
    if not argv:
        print("usage: python -m guestfence.lab.libvirtd --reap CMD [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}", file=sys.stderr)
        return 1
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    main = 0
    # handlers first, with the signals blocked, so none is lost around the fork
    signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)

    def forward(signum: int, _frame: object) -> None:
        if main > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(main, signum)

    for signum in forwarded:
        signal.signal(signum, forward)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    main = os.fork()
    if main == 0:
        try:
            for signum in forwarded:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
            os.execvp(argv[0], list(argv))
        finally:
            os._exit(127)
    expected_parent = os.environ.get(PARENT_ENV, "")
    if expected_parent.isdigit() and os.getppid() != int(expected_parent):
        forward(signal.SIGTERM, None)  # the parent died before PDEATHSIG was armed
    signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)

    code: int | None = None
    while code is None:
        reaped = _reap_ready(blocking=True)
        if not reaped:
            code = 1  # no child left at all (cannot happen: main is one until reaped)
        for pid, status in reaped:
            if pid == main:
                code = os.waitstatus_to_exitcode(status)
    _kill_below_self(grace)
    return code if code >= 0 else 128 - code


def _kill_below_self(grace: float) -> None:
    me = os.getpid()
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        _reap_ready(blocking=False)
        left = _descendants(me)
        if not left:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(_POLL)


# -- configuration -------------------------------------------------------------


TCP_PORT = 16509
MIGRATION_PORTS = (49152, 49215)


def libvirtd_conf_text(host_uuid: str, listen_address: str | None = None) -> str:
    """libvirtd.conf: unix socket, no authentication, log to /var/log/libvirt.

    With ``listen_address`` also plain TCP without authentication on that address
    only (``libvirtd --listen``): acceptable in the lab alone, where the address
    exists only inside the lab's private network namespace.
    """
    tcp = ["listen_tcp = 0"]
    if listen_address is not None:
        tcp = ["# lab only: no auth, no TLS, on the namespace's private address",
               "listen_tcp = 1", f'listen_addr = "{listen_address}"', f'tcp_port = "{TCP_PORT}"',
               'auth_tcp = "none"']
    return "\n".join([
        "# guestfence lab: private libvirtd",
        "listen_tls = 0",
        *tcp,
        'unix_sock_dir = "/run/libvirt"',
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
        f'host_uuid = "{host_uuid}"',
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
        "",
    ])


def qemu_conf_text(migration_address: str | None = None) -> str:
    """qemu.conf: qemu as root, no security driver, no cgroups, no virtlogd.

    ``migration_address``: where an incoming migration listens and what the
    source is told to connect to (the default, the host name, resolves nowhere here).
    """
    migration = []
    if migration_address is not None:
        migration = [f'migration_host = "{migration_address}"',
                     f'migration_address = "{migration_address}"',
                     f"migration_port_min = {MIGRATION_PORTS[0]}",
                     f"migration_port_max = {MIGRATION_PORTS[1]}"]
    return "\n".join([
        "# guestfence lab",
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        "remember_owner = 0",
        'security_driver = "none"',
        "namespaces = []",
        "cgroup_controllers = []",
        '# qemu output goes to /var/log/libvirt/qemu/NAME.log without virtlogd',
        'stdio_handler = "file"',
        *migration,
        "",
    ])


def domain_xml(
    name: str,
    memory_mib: int = 64,
    uuid: str | None = None,
    serial: str = "none",
) -> str:
    """A diskless, NIC-less x86_64 TCG guest (``type='qemu'``: software emulation).

    SeaBIOS finds nothing to boot and idles.  ``serial`` is ``"none"`` (no
    serial port) or ``"pty"``.
    """
    if serial not in ("none", "pty"):
        raise ValueError(f"serial must be 'none' or 'pty', not {serial!r}")
    lines = [
        "<domain type='qemu'>",
        f"  <name>{escape(name)}</name>",
    ]
    if uuid is not None:
        lines.append(f"  <uuid>{escape(uuid)}</uuid>")
    lines += [
        f"  <memory unit='MiB'>{int(memory_mib)}</memory>",
        "  <vcpu>1</vcpu>",
        "  <os><type arch='x86_64' machine='pc'>hvm</type></os>",
        "  <on_poweroff>destroy</on_poweroff>",
        "  <on_reboot>restart</on_reboot>",
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        f"    <emulator>{escape(QEMU_X86)}</emulator>",
    ]
    if serial == "pty":
        lines.append("    <serial type='pty'><target port='0'/></serial>")
    lines += ["  </devices>", "</domain>", ""]
    return "\n".join(lines)


def _with_qemu_user(src: Path, dst: Path, line: str) -> None:
    text = src.read_text()
    if text and not text.endswith("\n"):
        text += "\n"
    dst.write_text(text + line + "\n")
    dst.chmod(0o644)


# -- the lab -------------------------------------------------------------------


class LibvirtLab(StartStop):
    """A private libvirtd in ``namespace`` (or the caller's network namespace).

    ``scratch`` holds everything: configs, state, logs, the socket.  Use as a
    context manager, or call :meth:`start` and (always) :meth:`stop`.

    The reaper gets SIGTERM when the *thread* that called :meth:`start` ends
    (``PR_SET_PDEATHSIG``): start the lab from a thread that outlives it.
    """

    def __init__(
        self,
        scratch: str | os.PathLike[str],
        namespace: Namespace | None = None,
        *,
        start_timeout: float = START_TIMEOUT,
        seed_caps_cache: Path | None = SYSTEM_CAPS_CACHE,
        listen_address: str | None = None,
        hostname: str | None = None,
    ) -> None:
        """``listen_address``: also serve ``qemu+tcp://ADDRESS/system`` (no auth; an
        address of ``namespace`` only) and take incoming migrations there.
        ``hostname``: libvirtd's host name (a private UTS namespace), e.g. for discovery."""
        if listen_address is not None and namespace is None:
            raise LabError("listen_address needs a namespace: unauthenticated TCP is for "
                           "private namespace addresses only")
        self.scratch = Path(scratch).absolute()
        self.namespace = namespace
        self.listen_address = listen_address
        self.hostname = hostname
        self.start_timeout = start_timeout
        self.seed_caps_cache = seed_caps_cache
        self.host_uuid = str(uuidlib.uuid4())
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Any = None
        self._mntns: tuple[int, int] | None = None
        # An open handle keeps the lab's mount namespace alive, so its inode number
        # cannot be given to another namespace (every `ip netns exec` makes one) while
        # we still compare processes against it: the stop sweep would kill strangers.
        self._mntns_fd: int | None = None
        self._known: dict[int, int | None] = {}  # pid -> start time, every process seen
        self.ready_seconds: float | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"LibvirtLab({str(self.scratch)!r}, ns={self.namespace!r}, reaper={pid})"

    # -- paths -------------------------------------------------------------

    def path(self, inside: str) -> Path:
        """Where ``inside`` (a path as libvirtd sees it) is in the scratch dir."""
        for mount, sub in sorted(BIND_DIRS.items(), key=lambda kv: -len(kv[0])):
            if inside == mount or inside.startswith(mount + "/"):
                return self.scratch / sub / inside[len(mount) :].lstrip("/")
        raise ValueError(f"{inside} is not private to the lab")

    @property
    def socket_path(self) -> Path:
        return self.path("/run/libvirt/libvirt-sock")

    @property
    def uri(self) -> str:
        """A libvirt URI that reaches this daemon from any namespace of the machine."""
        return f"qemu:///system?socket={self.socket_path}"

    @property
    def tcp_uri(self) -> str:
        """``qemu+tcp://ADDRESS/system``, reachable from the lab's network only."""
        if self.listen_address is None:
            raise LabError(f"{self!r} does not listen on TCP (no listen_address)")
        return f"qemu+tcp://{self.listen_address}/system"

    @property
    def log_path(self) -> Path:
        return self.path("/var/log/libvirt/libvirtd.log")

    @property
    def stdout_path(self) -> Path:
        return self.scratch / "libvirtd.stdout"

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text = p.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {p}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- start ---------------------------------------------------------------

    def _prepare(self) -> str:
        """Create the scratch tree and configs; the shell script that mounts it."""
        for mount, sub in BIND_DIRS.items():
            (self.scratch / sub).mkdir(parents=True, exist_ok=True)
            if mount != "/run":
                Path(mount).mkdir(parents=True, exist_ok=True)  # mount point
        etc = self.scratch / "etc"
        for item in Path("/etc/libvirt").glob("*.conf"):  # libvirt.conf, libvirt-admin.conf
            if item.is_file():
                shutil.copy2(item, etc / item.name)
        (etc / "libvirtd.conf").write_text(libvirtd_conf_text(self.host_uuid,
                                                               self.listen_address))
        (etc / "qemu.conf").write_text(qemu_conf_text(self.listen_address))
        (self.scratch / "log" / "qemu").mkdir(exist_ok=True)
        caps = self.scratch / "cache" / "qemu" / "capabilities"
        if self.seed_caps_cache is not None and self.seed_caps_cache.is_dir():
            shutil.copytree(self.seed_caps_cache, caps, dirs_exist_ok=True)

        binds = [(str(self.scratch / sub), mount) for mount, sub in BIND_DIRS.items()]
        try:
            pwd.getpwnam(QEMU_USER)
        except KeyError:
            passwd = self.scratch / "passwd"
            _with_qemu_user(Path("/etc/passwd"), passwd,
                            f"{QEMU_USER}:x:{QEMU_UID}:{QEMU_UID}:guestfence lab:/nonexistent:"
                            "/usr/sbin/nologin")
            binds.append((str(passwd), "/etc/passwd"))
        try:
            grp.getgrnam(QEMU_USER)
        except KeyError:
            group = self.scratch / "group"
            _with_qemu_user(Path("/etc/group"), group, f"{QEMU_USER}:x:{QEMU_UID}:")
            binds.append((str(group), "/etc/group"))
        script = ["set -e"]
        if self.hostname is not None:
            script.append(f"hostname {shlex.quote(self.hostname)}")
        script += [f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}" for src, dst in binds]
        # no cgroup hierarchy in sight: libvirt runs without cgroups and so never
        # creates machine cgroups in the machine's own tree
        script.append("mount -t tmpfs -o size=16k,mode=755 gflab-nocgroup /sys/fs/cgroup")
        script.append('exec "$@"')
        return "; ".join(script)

    def argv(self, script: str) -> list[str]:
        """The command line: netns (if any), private mount namespace, mounts, reaper, libvirtd."""
        uts = ["--uts"] if self.hostname is not None else []
        listen = ["--listen"] if self.listen_address is not None else []
        inner = [
            "unshare", "--mount", *uts, "--propagation", "private", "--",
            "/bin/sh", "-c", script, "gflab-libvirtd",
            sys.executable, "-m", "guestfence.lab.libvirtd", "--reap", LIBVIRTD, *listen,
        ]
        return self.namespace.exec_argv(inner) if self.namespace else inner

    def start(self) -> LibvirtLab:
        """Start libvirtd and wait (bounded) until it accepts a libvirt connection."""
        if self.proc is not None:
            raise LabError(f"{self!r} already started")
        missing = missing_tools()
        if missing:
            raise LabError("a private libvirtd needs: " + "; ".join(missing))
        t0 = time.monotonic()
        try:
            self.scratch.mkdir(parents=True, exist_ok=True)
            argv = self.argv(self._prepare())
            with open(self.stdout_path, "wb") as out:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, "LC_ALL": "C", PARENT_ENV: str(os.getpid())},
                )
            self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - t0
        return self

    def _remember_tree(self) -> None:
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            self._known.setdefault(pid, _start_time(pid))

    def _check_running(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise LabError(f"libvirtd (under {self.proc.pid}) exited with rc {rc} before it "
                           f"was ready\n{self.log_tail()}")

    def _wait_ready(self, deadline: float) -> None:
        # 1. the socket file exists and accepts a connection (cheap, silent)
        while True:
            self._check_running()
            self._remember_tree()
            if self.socket_path.is_socket():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    try:
                        s.connect(str(self.socket_path))
                        break
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                raise LabError(f"libvirtd socket {self.socket_path} not accepting after "
                               f"{self.start_timeout:.0f} s\n{self.log_tail()}")
            time.sleep(_POLL)
        # the reaper has exec'd after the mounts: its mount namespace is the lab's
        assert self.proc is not None
        try:
            self._mntns_fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY)
            st = os.fstat(self._mntns_fd)
            self._mntns = (st.st_dev, st.st_ino)
        except OSError:
            self._mntns = None
        if self._mntns is None or self._mntns == ns_id("self", "mnt"):
            self._mntns = None  # never sweep the caller's own mount namespace
            raise LabError(f"libvirtd under {self.proc.pid} is not in a private mount namespace")
        # 2. a libvirt connection is answered (libvirtd holds RPC calls back until
        #    its drivers are initialised; the first start probes qemu for ~1.5 s)
        self.conn = self._open(deadline)
        self._remember_tree()

    def _open(self, deadline: float) -> Any:
        import libvirt

        box: dict[str, Any] = {}

        def attempt() -> None:
            try:
                conn = libvirt.open(self.uri)
                conn.getLibVersion()
                box["conn"] = conn
            except libvirt.libvirtError as e:
                box["error"] = e

        while True:
            worker = threading.Thread(target=attempt, daemon=True)
            worker.start()
            worker.join(max(0.0, deadline - time.monotonic()))
            if "conn" in box:
                return box["conn"]
            self._check_running()
            if worker.is_alive() or time.monotonic() > deadline:
                raise LabError(f"libvirtd at {self.uri} did not answer within "
                               f"{self.start_timeout:.0f} s ({box.get('error')})\n"
                               f"{self.log_tail()}")
            box.clear()
            time.sleep(_POLL)

    # -- domains -------------------------------------------------------------

    def _conn(self) -> Any:
        if self.conn is None:
            raise LabError(f"{self!r} is not running")
        return self.conn

    def define(self, name: str, **kwargs: Any) -> Any:
        """Define a persistent domain from :func:`domain_xml` (keyword arguments passed on)."""
        return self._conn().defineXML(domain_xml(name, **kwargs))

    def start_domain(self, name: str, timeout: float = 15.0) -> int:
        """Start defined domain ``name``; its qemu pid once the domain runs."""
        self._conn().lookupByName(name).create()
        return self.wait_qemu_pid(name, timeout)

    def define_and_start(self, name: str, timeout: float = 15.0, **kwargs: Any) -> int:
        """Define and start a diskless TCG guest; its qemu pid."""
        self.define(name, **kwargs)
        return self.start_domain(name, timeout)

    def qemu_pid(self, name: str) -> int | None:
        """The live qemu pid of ``name``: libvirt's pid file, checked against /proc."""
        pidfile = self.path(f"/run/libvirt/qemu/{name}.pid")
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid_alive(pid) and _is_qemu_for(pid, name):
            self._known.setdefault(pid, _start_time(pid))
            return pid
        found = self.qemu_pids(name)
        return found[0] if len(found) == 1 else None

    def qemu_pids(self, name: str | None = None) -> list[int]:
        """Live qemu processes of this lab (for guest ``name``), by scanning /proc.

        qemu shares libvirtd's mount namespace here (``namespaces = []``), which
        tells this lab's guests from other labs' guests of the same name.
        """
        if self._mntns is None:
            return []
        found = sorted(
            pid for pid in all_pids()
            if ns_id(pid, "mnt") == self._mntns and pid_alive(pid) and _is_qemu_for(pid, name)
        )
        for pid in found:
            self._known.setdefault(pid, _start_time(pid))
        return found

    def wait_qemu_pid(self, name: str, timeout: float = 15.0) -> int:
        """Wait until domain ``name`` is running and its qemu process exists."""
        import libvirt

        dom = self._conn().lookupByName(name)
        deadline = time.monotonic() + timeout
        while True:
            if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                pid = self.qemu_pid(name)
                if pid is not None:
                    return pid
            if time.monotonic() > deadline:
                raise LabError(f"domain {name} not running with a qemu process after "
                               f"{timeout} s (state {dom.state()})\n{self.log_tail()}")
            time.sleep(_POLL)

    def migrate(self, name: str, dest: LibvirtLab, live: bool = True,
                timeout: float = 60.0) -> float:
        """Migrate running domain ``name`` to ``dest``; seconds the call took.

        As ``virsh migrate [--live] NAME DEST_URI`` does (client-managed, not
        peer-to-peer), through both labs' unix sockets; the migration stream goes
        from qemu to qemu over the LAN (``dest`` needs a ``listen_address``, its
        qemu.conf tells the source where to connect). Blocks until libvirt is done.
        """
        import libvirt

        if dest.listen_address is None:
            raise LabError(f"{dest!r} has no listen_address: nowhere to receive a migration")
        dom = self._conn().lookupByName(name)
        flags = libvirt.VIR_MIGRATE_LIVE if live else 0
        params = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 0}
        t0 = time.monotonic()
        done: dict[str, Any] = {}

        def run() -> None:
            try:
                dom.migrate3(dest._conn(), params, flags)
            except libvirt.libvirtError as e:
                done["error"] = e

        worker = threading.Thread(target=run, name=f"migrate-{name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            raise LabError(f"migration of {name} to {dest!r} not done after {timeout} s")
        if "error" in done:
            raise LabError(f"migration of {name} to {dest!r} failed: "
                           f"{done['error'].get_error_message()}\n{self.log_tail(10)}")
        return time.monotonic() - t0

    def domain_state(self, name: str) -> int | None:
        """libvirt's state of ``name`` here (VIR_DOMAIN_*), None if not defined here."""
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we report it
        try:
            return int(self._conn().lookupByName(name).state()[0])
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def libvirtd_pid(self) -> int | None:
        """The libvirtd process (the reaper's child), if it runs."""
        if self.proc is None:
            return None
        for pid in _descendants(self.proc.pid):
            argv = _cmdline(pid)
            if argv and argv[0] == LIBVIRTD and pid_alive(pid):
                return pid
        return None

    def kill_libvirtd(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL libvirtd, as a crashed host would lose it; the reaper then ends the
        guests below it and exits. Waits until the reaper is gone."""
        pid = self.libvirtd_pid()
        if pid is None:
            raise LabError(f"{self!r}: no libvirtd to kill")
        self._remember_tree()
        os.kill(pid, signal.SIGKILL)
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{self!r}: reaper still running {timeout} s after libvirtd "
                           "was killed") from e

    def qemu_log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return self.path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")
        return ""

    # -- stop ----------------------------------------------------------------

    def _members(self) -> list[int]:
        """Live processes in the lab's mount namespace (libvirtd, reaper, qemu)."""
        if self._mntns is None:
            return []
        return [p for p in all_pids() if ns_id(p, "mnt") == self._mntns and pid_alive(p)]

    def _ours_still(self, pid: int) -> bool:
        start = self._known.get(pid)
        return pid_alive(pid) and (start is None or _start_time(pid) == start)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop guests, libvirtd and everything the lab started.  Idempotent; never skips
        the kill sweep, whatever fails before it."""
        errors: list[str] = []
        try:
            self._remember_tree()
            for pid in self._members():
                self._known.setdefault(pid, _start_time(pid))
            self._destroy_guests()
        except Exception as exc:  # keep going: the processes must go anyway
            errors.append(f"stopping guests: {exc}")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # reaper -> libvirtd, then the rest
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                errors.append(f"reaper {self.proc.pid} ignored SIGTERM for {timeout} s")
                self.proc.kill()
                self.proc.wait()
        # sweep: anything we ever saw, or still in the lab's mount namespace
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in {*self._known, *self._members()} if self._ours_still(p)]
            if not left:
                break
            if time.monotonic() > deadline:
                errors.append(f"processes {left} survive SIGKILL")
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_POLL)
        if self._mntns_fd is not None:
            os.close(self._mntns_fd)  # from now on the inode number may be reused
            self._mntns_fd, self._mntns = None, None
        if errors:
            raise LabError(f"{self!r} stop: " + "; ".join(errors))

    def _destroy_guests(self) -> None:
        if self.conn is None:
            return
        import libvirt

        conn, self.conn = self.conn, None
        try:
            if self.proc is not None and self.proc.poll() is None:
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()



def _main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "--reap":
        return reaper_main(argv[1:])
    print("usage: python -m guestfence.lab.libvirtd --reap CMD [ARG...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
