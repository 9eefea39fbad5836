"""Run the real C fence-virt tools (Debian's fence_virtd, fence_xvm, fence_virt).

They serve as the reference peer for guestfence: a C daemon answers our
agents, C agents talk to our daemon.

Readiness of ``fence_virtd``: with ``-d 2`` the daemon prints nothing after it
has set up its listener (the last line is the listener's ``Got ... for ...``
configuration echo; ``ipv4_recv_sk: success`` only appears from ``-d 4`` on).
So :class:`CDaemon` watches the kernel instead: the daemon is ready when one of
*its own* sockets (found through ``/proc/PID/fd``) is bound to the configured
port in ``/proc/PID/net/{udp,udp6,tcp,tcp6}`` -- in LISTEN state for TCP --
and, for the multicast listener, the group shows up in
``/proc/PID/net/igmp``/``igmp6`` (the daemon binds first and joins right
after).  ``/proc/PID/net`` is the view of the process's own network namespace,
so this works for a daemon inside a namespace without entering it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError, Namespace
from guestfence.lab.tools import missing

SBIN = "/usr/sbin"
FENCE_VIRTD = f"{SBIN}/fence_virtd"
FENCE_XVM = f"{SBIN}/fence_xvm"
FENCE_VIRT = f"{SBIN}/fence_virt"

REQUIRED_TOOLS: dict[str, str] = {
    "ip": "iproute2",
    "fence_virtd": "fence-virtd",
    "fence_xvm": "fence-virt",
    "fence_virt": "fence-virt",
    "stdbuf": "coreutils",
}
"""Executable -> Debian package that provides it."""

KEY_SIZE = 4096
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_POLL = 0.02

Listener = Literal["multicast", "tcp"]
Family = Literal["ipv4", "ipv6"]
_DIGESTS = ("none", "sha1", "sha256", "sha512")
_DEFAULT_ADDRESS: dict[tuple[str, str], str] = {
    ("multicast", "ipv4"): "225.0.0.12",
    ("multicast", "ipv6"): "ff05::3:1",
    ("tcp", "ipv4"): "127.0.0.1",
    ("tcp", "ipv6"): "::1",
}


def missing_tools() -> list[str]:
    """One line per required executable that is not installed, naming its package."""
    return missing(REQUIRED_TOOLS)


def write_key(path: str | os.PathLike[str], data: bytes | None = None) -> Path:
    """Write a shared key file (``KEY_SIZE`` random bytes unless ``data``), mode 0600."""
    p = Path(path)
    payload = os.urandom(KEY_SIZE) if data is None else data
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, payload)
    finally:
        os.close(fd)
    return p


@dataclass(frozen=True)
class CConfig:
    """What :func:`write_c_config` wrote, kept so :class:`CDaemon` knows what to wait for."""

    path: Path
    listener: Listener
    family: Family
    address: str
    port: int
    key_file: Path
    uri: str
    interface: str | None = None


def _quote(key: str, value: str) -> str:
    if any(c in value for c in '"\n\r\\'):
        raise ValueError(f"{key}: fence_virt.conf cannot hold {value!r}")
    return f'"{value}"'


def c_config_text(cfg: CConfig, hash: str | None = None, auth: str | None = None) -> str:
    """The fence_virt.conf text for ``cfg``."""
    items: list[tuple[str, str]] = [("key_file", str(cfg.key_file))]
    if hash is not None:
        items.append(("hash", hash))
    if auth is not None:
        items.append(("auth", auth))
    items += [
        ("address", cfg.address),
        ("port", str(cfg.port)),
        ("family", cfg.family),
    ]
    if cfg.interface is not None:
        items.append(("interface", cfg.interface))
    body = "".join(f"\t\t{k} = {_quote(k, v)};\n" for k, v in items)
    return (
        "fence_virtd {\n"
        f"\tlistener = {_quote('listener', cfg.listener)};\n"
        '\tbackend = "libvirt";\n'
        "}\n"
        "\n"
        "listeners {\n"
        f"\t{cfg.listener} {{\n"
        f"{body}"
        "\t}\n"
        "}\n"
        "\n"
        "backends {\n"
        "\tlibvirt {\n"
        f"\t\turi = {_quote('uri', cfg.uri)};\n"
        "\t}\n"
        "}\n"
    )


def write_c_config(
    path: str | os.PathLike[str],
    listener: Listener,
    key_file: str | os.PathLike[str],
    uri: str,
    interface: str | None = "lo",
    address: str | None = None,
    port: int = 1229,
    family: Family = "ipv4",
    hash: str | None = None,
    auth: str | None = None,
) -> CConfig:
    """Write a fence_virt.conf for the C daemon (libvirt backend at ``uri``), mode 0600.

    ``address`` defaults to the C defaults: 225.0.0.12 / ff05::3:1 for
    multicast, 127.0.0.1 / ::1 for tcp.  ``interface`` only applies to the
    multicast listener (the tcp listener has no such key).  ``hash``/``auth``
    (none, sha1, sha256, sha512) are written only when given.
    """
    if listener not in ("multicast", "tcp"):
        raise ValueError(f"listener must be 'multicast' or 'tcp', not {listener!r}")
    if family not in ("ipv4", "ipv6"):
        raise ValueError(f"family must be 'ipv4' or 'ipv6', not {family!r}")
    for name, digest in (("hash", hash), ("auth", auth)):
        if digest is not None and digest not in _DIGESTS:
            raise ValueError(f"{name} must be one of {_DIGESTS}, not {digest!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    addr = address if address is not None else _DEFAULT_ADDRESS[(listener, family)]
    if ip_address(addr).version != (4 if family == "ipv4" else 6):
        raise ValueError(f"address {addr} does not match family {family}")
    cfg = CConfig(
        path=Path(path),
        listener=listener,
        family=family,
        address=addr,
        port=port,
        key_file=Path(key_file),
        uri=uri,
        interface=interface if listener == "multicast" else None,
    )
    text = c_config_text(cfg, hash=hash, auth=auth)
    fd = os.open(cfg.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return cfg


# -- reading the kernel's view of a process's sockets ------------------------------

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
_TCP_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return inodes
    for fd in fds:
        try:
            m = _SOCKET_LINK.fullmatch(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    return inodes


def _bound_ports(pid: int, proto: Literal["udp", "tcp"]) -> set[int]:
    """Local ports of ``pid``'s own sockets of ``proto`` (TCP: listening ones only)."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    if not inodes:
        return ports
    for table in (proto, proto + "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[9] not in inodes:
                continue
            if proto == "tcp" and fields[3] != _TCP_LISTEN:
                continue
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _joined_groups(pid: int) -> set[str]:
    """Multicast groups joined on any interface of ``pid``'s network namespace."""
    groups: set[str] = set()
    try:
        for line in Path(f"/proc/{pid}/net/igmp").read_text().splitlines():
            if line.startswith("\t\t"):
                raw = int(line.split()[0], 16).to_bytes(4, sys.byteorder)
                groups.add(socket.inet_ntop(socket.AF_INET, raw))
    except OSError:
        pass
    try:
        for line in Path(f"/proc/{pid}/net/igmp6").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and len(fields[2]) == 32:
                groups.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[2])))
    except OSError:
        pass
    return groups


class CDaemon(StartStop):
    """``fence_virtd -F -d 2 -f CONF -p PIDFILE`` under ``stdbuf -oL -eL``.

    A context manager: entering starts it and waits until it is ready, leaving
    stops it.  The combined stdout/stderr goes to ``log_path`` (by default next
    to the config, ``<conf stem>.log``).
    """

    def __init__(
        self,
        config: CConfig,
        ns: Namespace | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        pid_path: str | os.PathLike[str] | None = None,
        debug: int = 2,
        ready_timeout: float = READY_TIMEOUT,
        binary: str = FENCE_VIRTD,
    ) -> None:
        if ns is None and (
            config.listener == "multicast" or not ip_address(config.address).is_loopback
        ):
            raise LabError(
                "a C daemon outside a namespace may only listen on TCP loopback; "
                "run multicast listeners inside a Namespace"
            )
        self.config = config
        self.ns = ns
        stem = config.path.with_suffix("")
        self.log_path = Path(log_path) if log_path is not None else Path(f"{stem}.log")
        self.pid_path = Path(pid_path) if pid_path is not None else Path(f"{stem}.pid")
        self.debug = debug
        self.ready_timeout = ready_timeout
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        where = self.ns.name if self.ns else "root"
        return f"CDaemon({self.config.listener}/{self.config.port} in {where}, pid={self.pid})"

    @property
    def argv(self) -> list[str]:
        cmd = [
            "stdbuf",
            "-oL",
            "-eL",
            self.binary,
            "-F",
            "-d",
            str(self.debug),
            "-f",
            str(self.config.path),
            "-p",
            str(self.pid_path),
        ]
        return self.ns.exec_argv(cmd) if self.ns is not None else cmd

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> CDaemon:
        """Start the daemon and wait until it is ready (see the module docstring)."""
        if self._proc is not None:
            raise LabError("daemon already started")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        """True once the listener socket is bound (and the group joined, for multicast)."""
        if self._proc is None or self._proc.poll() is not None:
            return False
        pid = self._proc.pid
        proto: Literal["udp", "tcp"] = "udp" if self.config.listener == "multicast" else "tcp"
        if self.config.port not in _bound_ports(pid, proto):
            return False
        if self.config.listener == "multicast":
            group = str(ip_address(self.config.address))
            return group in _joined_groups(pid)
        return True

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll :meth:`is_ready` until ``timeout``; raise :class:`LabError` with the log tail."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self._proc is None:
                raise LabError("daemon not started")
            rc = self._proc.poll()
            if rc is not None:
                raise LabError(
                    f"fence_virtd exited with rc {rc} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"fence_virtd ({self.config.listener} port {self.config.port}) not ready "
                    f"after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL.  Returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> CDaemon:
        return self if self._proc is not None else self.start()


def run_c_client(
    ns: Namespace | None,
    argv: Sequence[str],
    timeout: float = 30.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a C agent (``fence_xvm``/``fence_virt`` + arguments) and capture its output.

    A bare ``fence_xvm``/``fence_virt`` in ``argv[0]`` means the one in
    ``/usr/sbin``.  ``fence_xvm`` multicasts, so it must run inside a
    namespace.  ``subprocess.TimeoutExpired`` propagates after the agent is
    killed.
    """
    if not argv:
        raise ValueError("empty argv")
    cmd = list(argv)
    if cmd[0] in ("fence_xvm", "fence_virt"):
        cmd[0] = f"{SBIN}/{cmd[0]}"
    if ns is None and Path(cmd[0]).name == "fence_xvm":
        raise LabError("fence_xvm sends multicast: run it inside a Namespace")
    full = ns.exec_argv(cmd) if ns is not None else cmd
    return subprocess.run(
        full,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
