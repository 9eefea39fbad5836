"""A private tgt iSCSI target (Debian package ``tgt``) on 127.0.0.1 with file-backed LUNs.

:class:`TgtTarget` runs its own ``tgtd -f`` (foreground, our child) with the
iSCSI portal on ``127.0.0.1:<free port>`` only, creates one target with N
sparse-file LUNs (``bstype rdwr``, LUN 1..N; LUN 0 is tgt's controller LUN)
through ``tgtadm``, binds the ACL ``ALL`` and optionally a CHAP account.

Isolation from a system tgtd: tgtd and tgtadm both take the path of their
management socket from ``TGT_IPC_SOCKET`` (``usr/mgmt.c``/``usr/tgtadm.c``:
``<path>.<control port>``), so each TgtTarget keeps its socket, and its lock
file, in its own scratch directory; nothing is created under /run/tgtd.

Readiness, without fixed sleeps: tgtd answers ``tgtadm --mode sys --op show``
(management socket up), then, once configured, tgtd's *own* socket is in
LISTEN state on the portal port (``/proc/PID/fd`` + ``/proc/PID/net/tcp``) and
a TCP connect to the portal succeeds.

Stopping: tgtd 1.0.85 ignores SIGTERM (its handler is empty) and refuses
``--mode sys --op delete`` while a target exists, so :meth:`TgtTarget.stop`
deletes the target with ``--force`` (closing the sessions), then the system,
wakes the daemon with SIGTERM, and SIGKILLs it if it is not gone after a few
seconds.  ``restart(hard=True)`` SIGKILLs at once (a crashed target).  The
LUN files survive a restart (the data does); tgt keeps persistent
reservations only in memory, so they do not.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from guestfence.lab.iscsilab import HOST, LabIscsiTarget
from guestfence.lab.netns import LabError
from guestfence.lab.tools import find_tool, missing

PACKAGE = "tgt"
REQUIRED_TOOLS: dict[str, str] = {"tgtd": PACKAGE, "tgtadm": PACKAGE}
"""Executable -> Debian package that provides it."""

DEFAULT_IQN = "iqn.2024-01.org.guestfence.lab:pr"
DEFAULT_LUN_SIZE = 64 * 1024 * 1024
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
TGTADM_TIMEOUT = 10.0
CONTROL_PORT = 0  # the socket path is private anyway
TID = 1
_POLL = 0.01
_SUN_PATH_MAX = 107
_TCP_LISTEN = "0A"
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def missing_tools() -> list[str]:
    """One line per required executable that is not installed, naming its package."""
    return missing(REQUIRED_TOOLS)


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise LabError(f"{name} not found (apt-get install {REQUIRED_TOOLS[name]})")
    return path


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _listening_ports(pid: int) -> set[int]:
    """Local ports of ``pid``'s own TCP sockets in LISTEN state on 127.0.0.1 or any address."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            m = _SOCKET_LINK.fullmatch(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports: set[int] = set()
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return ports
    for line in lines:
        f = line.split()
        if len(f) >= 10 and f[3] == _TCP_LISTEN and f[9] in inodes:
            addr, port = f[1].split(":")
            if addr in ("0100007F", "00000000"):
                ports.add(int(port, 16))
    return ports


class TgtTarget(LabIscsiTarget):
    """``tgtd -f --iscsi portal=127.0.0.1:PORT`` with one target and ``luns`` file LUNs.

    A context manager: entering starts and configures it and waits until the
    portal accepts connections; leaving stops tgtd and removes the LUN files
    (and ``workdir`` if this object created it).  ``start()`` cleans up after
    itself when it fails.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        iqn: str = DEFAULT_IQN,
        luns: int = 1,
        lun_size: int = DEFAULT_LUN_SIZE,
        chap: tuple[str, str] | None = None,
        port: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        super().__init__(workdir, iqn=iqn, luns=luns, lun_size=lun_size, chap=chap, port=port,
                         ready_timeout=ready_timeout)

    @property
    def ipc_base(self) -> Path:
        """``TGT_IPC_SOCKET``: tgtd listens on ``<this>.<control port>``."""
        return self._dir() / "tgtd.sock"

    @property
    def log_path(self) -> Path:
        return self._dir() / "tgtd.log"


    # -- tgtadm ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, "TGT_IPC_SOCKET": str(self.ipc_base)}

    def tgtadm(
        self, *args: str, check: bool = True, timeout: float = TGTADM_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tgtadm -C 0 ARGS`` against this tgtd; LabError with stderr if it fails."""
        argv = [_tool("tgtadm"), "-C", str(CONTROL_PORT), *args]
        try:
            r = subprocess.run(
                argv,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"{' '.join(argv)}: no answer in {timeout:g} s") from None
        if check and r.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()}"
            )
        return r

    def _iscsi(self, *args: str) -> str:
        return self.tgtadm("--lld", "iscsi", *args).stdout

    def show(self) -> str:
        """``tgtadm --mode target --op show``: targets, I_T nexuses, LUNs, ACLs."""
        return self._iscsi("--mode", "target", "--op", "show")

    def connections(self) -> str:
        """``tgtadm --mode conn --op show``: one block per session (initiator, address)."""
        return self._iscsi("--mode", "conn", "--op", "show", "--tid", str(TID))

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> TgtTarget:
        if self._proc is not None:
            raise LabError("tgt target already started")
        missing = missing_tools()
        if missing:
            raise LabError("tgt is not installed: " + "; ".join(missing))
        try:
            self._prepare_files()
            self._start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_files(self) -> None:
        if self._requested_workdir is not None:
            self._requested_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._requested_workdir.resolve()
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="guestfence-tgt-"))
            self._own_workdir = True
        sock = f"{self.ipc_base}.{CONTROL_PORT}"
        if len(sock) > _SUN_PATH_MAX:
            raise LabError(f"tgtd socket path too long for AF_UNIX ({len(sock)} > 107): {sock}")
        for lun in range(1, self.luns + 1):
            path = self.lun_path(lun)
            with open(path, "xb") as f:  # refuse to reuse someone else's image
                self._files.append(path)
                f.truncate(self.lun_size)  # sparse
        if self.port is None:
            self.port = free_port()

    def _start_daemon(self) -> None:
        argv = [
            _tool("tgtd"),
            "-f",
            "-C",
            str(CONTROL_PORT),
            "--iscsi",
            f"portal={self.portal}",
        ]
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                argv,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's ^C is for pytest, not for tgtd
            )
        deadline = time.monotonic() + self.ready_timeout
        self._wait(deadline, "management socket", self._mgmt_ready)
        self._configure()
        self._wait(deadline, f"portal {self.portal}", self._portal_ready)

    def _configure(self) -> None:
        tid = str(TID)
        self._iscsi("--mode", "target", "--op", "new", "--tid", tid, "--targetname", self.iqn)
        for lun in range(1, self.luns + 1):
            self._iscsi(
                "--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", str(lun),
                "--backing-store", str(self.lun_path(lun)), "--bstype", "rdwr",
            )  # fmt: skip
            self._iscsi(
                "--mode", "logicalunit", "--op", "update", "--tid", tid, "--lun", str(lun),
                "--params", f"scsi_sn=GFLAB{self.port:05d}{lun:03d},vendor_id=GFENCE,"
                "product_id=TGTLAB",
            )  # fmt: skip
        self._iscsi("--mode", "target", "--op", "bind", "--tid", tid, "--initiator-address", "ALL")
        if self.chap is not None:
            user, password = self.chap
            self._iscsi("--mode", "account", "--op", "new", "--user", user, "--password", password)
            self._iscsi("--mode", "account", "--op", "bind", "--tid", tid, "--user", user)

    def _mgmt_ready(self) -> bool:
        return self.tgtadm("--mode", "sys", "--op", "show", check=False).returncode == 0

    def _portal_ready(self) -> bool:
        pid = self.pid
        if pid is None or self.port not in _listening_ports(pid):
            return False
        try:
            with socket.create_connection((HOST, self._port()), timeout=1.0):
                return True
        except OSError:
            return False

    def _port(self) -> int:
        if self.port is None:
            raise LabError("tgt target has no port yet")
        return self.port

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        while not ready():
            proc = self._proc
            rc = proc.poll() if proc is not None else None
            if proc is None or rc is not None:
                raise LabError(
                    f"tgtd exited (rc {rc}) before its {what} was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"tgtd {what} not ready after {self.ready_timeout:g} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def _stop_process(self, *, hard: bool = False, timeout: float = STOP_TIMEOUT) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None and not hard:
            # graceful: close the sessions, let tgtd leave its loop (it ignores SIGTERM)
            tid = str(TID)
            for args in (
                ("--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", tid),
                ("--mode", "sys", "--op", "delete"),
            ):
                try:
                    self.tgtadm(*args, check=False, timeout=STOP_TIMEOUT / 2)
                except LabError:
                    break  # hung or stopped: SIGKILL below
            try:
                proc.send_signal(signal.SIGTERM)  # wakes epoll_wait; the loop sees the flag
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout)
        for leftover in (
            Path(f"{self.ipc_base}.{CONTROL_PORT}"),
            Path(f"{self.ipc_base}.{CONTROL_PORT}.lock"),
        ):
            leftover.unlink(missing_ok=True)
        return proc.returncode

    def restart(self, *, hard: bool = False) -> TgtTarget:
        """Stop tgtd (SIGKILL if ``hard``) and start a fresh one: same portal, IQN, LUN files."""
        if self.workdir is None:
            raise LabError("tgt target not started")
        self._stop_process(hard=hard)
        try:
            self._start_daemon()
        except BaseException:
            self.stop()
            raise
        return self
