"""Several "hosts" on one machine: Linux network namespaces driven through ``ip``.

Everything here is a thin wrapper over iproute2 run as subprocesses (no
pyroute2).  Addresses and multicast routes only ever exist inside the
namespaces this module creates, so nothing leaves the machine and no multicast
is sent in the root namespace.

Two building blocks:

* :class:`Namespace` -- one namespace with ``lo`` up and, by default, able to
  carry IPv4 and IPv6 multicast on ``lo`` (a single-host lab).
* :func:`build_lan` -- one bridge namespace plus one namespace per host, each
  host attached to the bridge by a veth pair (``eth0`` inside the host).

Needs root.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestfence.errors import GuestfenceError
from guestfence.lab.lifecycle import StartStop

IP = "ip"
NETNS_DIR = Path("/run/netns")
TEST_PREFIX = "gft-"
"""Namespaces whose names start with this belong to test runs (see :func:`run_prefix`)."""

LO_IPV6 = "fd00:6766::1/128"
"""Unique-local address put on ``lo`` of a single-host namespace.

The C ``fence_xvm`` sends IPv6 multicast only from the addresses it finds on
the interfaces and ignores ``::1``; without a further address it never sends.
"""

IFNAMSIZ = 15
_POLL = 0.02
_counter = itertools.count(1)


class LabError(GuestfenceError):
    """A lab helper (namespace, bridge, C daemon) could not be set up or torn down."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; on failure raise :class:`LabError` naming the command and its stderr."""
    argv = [IP, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return proc


def _have_ipv6() -> bool:
    return Path("/proc/sys/net/ipv6").is_dir()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (those under ``/run/netns``)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def run_prefix(base: str = TEST_PREFIX) -> str:
    """A name prefix unique to this process and call: ``gft-<pid>-<n>-``.

    The pid makes two concurrent runs distinct; the counter makes two labs of
    one run distinct.  :func:`remove_stale_namespaces` relies on this format.
    """
    return f"{base}{os.getpid()}-{next(_counter)}-"


def _owner_pid(name: str, base: str) -> int | None:
    if not name.startswith(base):
        return None
    head = name[len(base) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale_namespaces(base: str = TEST_PREFIX, *, include_own: bool = False) -> list[str]:
    """Destroy namespaces named ``<base><pid>-...`` whose pid no longer runs.

    With ``include_own`` the namespaces carrying this process's pid are
    removed too (use it at session start, when none of ours can exist yet and
    any such name is left over from a crashed earlier process with the same
    pid).  Namespaces of other live runs are left alone.  Returns the names
    removed.
    """
    removed: list[str] = []
    me = os.getpid()
    for name in list_namespaces():
        pid = _owner_pid(name, base)
        if pid is None:
            continue
        if (pid == me and include_own) or (pid != me and not _pid_alive(pid)):
            Namespace(name).destroy()
            removed.append(name)
    return removed


class Namespace(StartStop):
    """A named network namespace; a context manager that destroys it on exit.

    ``Namespace(name)`` only refers to a namespace; :meth:`create` makes one.
    """

    def __init__(self, name: str) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @classmethod
    def create(
        cls,
        name: str,
        *,
        lo_multicast: bool = True,
        lo_ipv6: str | None = LO_IPV6,
    ) -> Namespace:
        """Create namespace ``name`` with ``lo`` up.

        A stale namespace of the same name (a crashed earlier run) is destroyed
        first.  With ``lo_multicast`` (the default) ``lo`` gets the MULTICAST
        flag, ``224.0.0.0/4 dev lo`` and ``local ff00::/8 dev lo table local``
        so IPv4 and IPv6 multicast sent inside the namespace loops back to
        sockets that joined the group on ``lo``.  (A plain ``ff00::/8 dev lo``
        route does not work: the kernel turns non-local IPv6 routes through
        ``lo`` into reject routes and the datagram is dropped as "no route".)
        ``lo_ipv6`` is an extra address for ``lo`` (see :data:`LO_IPV6`);
        ``None`` adds none.
        """
        ns = cls(name)
        if ns.exists():
            ns.destroy()
        _ip("netns", "add", name)
        try:
            ipv6 = _have_ipv6()
            if ipv6:
                # _ip names the command and keeps the real cause (its stderr)
                _ip("netns", "exec", ns.name, "sysctl", "-q", "-w",
                    "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.lo.disable_ipv6=0")
            ns.ip("link", "set", "lo", "up")
            if lo_multicast:
                ns.ip("link", "set", "lo", "multicast", "on")
                ns.ip("route", "add", "224.0.0.0/4", "dev", "lo")
                if ipv6:
                    ns.ip("-6", "route", "add", "local", "ff00::/8", "dev", "lo", "table", "local")
            if lo_ipv6 is not None and ipv6:
                ns.ip("-6", "addr", "add", lo_ipv6, "dev", "lo")
        except BaseException:
            ns.destroy()
            raise
        return ns

    # -- inspection -------------------------------------------------------

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def pids(self) -> list[int]:
        """Live processes whose network namespace is this one (zombies excluded)."""
        if not self.exists():
            return []
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(tok) for tok in out.split() if tok.isdigit()]

    def contains(self, pid: int) -> bool:
        """True if process ``pid`` is (already) inside this namespace."""
        try:
            mine = os.stat(self.path)
            theirs = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)

    def wait_entered(self, pid: int, timeout: float = 5.0) -> None:
        """Wait until ``pid`` (just started by :meth:`popen`) has entered the namespace.

        ``ip netns exec`` switches namespace after it starts, so right after
        :meth:`popen` the child may still be in the caller's namespace.
        """
        deadline = time.monotonic() + timeout
        while not self.contains(pid):
            if time.monotonic() > deadline:
                raise LabError(f"process {pid} did not enter namespace {self.name}")
            time.sleep(_POLL)

    # -- running things inside ---------------------------------------------

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace (keyword arguments passed through)."""
        return subprocess.run(self.exec_argv(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace.

        ``ip netns exec`` execs the command, so the returned pid is the
        command's own pid.
        """
        return subprocess.Popen(self.exec_argv(argv), **kwargs)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS`` -- an iproute2 command applied to this namespace."""
        return _ip("-n", self.name, *args, check=check)

    # -- teardown ----------------------------------------------------------

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the namespace and wait until none is left."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise LabError(f"processes {pids} in namespace {self.name} survive SIGKILL")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_POLL)

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what runs inside, then delete the namespace.  Idempotent."""
        if not self.exists():
            return
        self.kill_all(timeout)
        proc = _ip("netns", "del", self.name, check=False)
        if proc.returncode != 0 and self.exists():
            raise LabError(f"ip netns del {self.name} failed: {proc.stderr.strip()}")

    def stop(self) -> None:
        self.destroy()


@dataclass
class Lan(StartStop):
    """Hosts on one Ethernet segment: a bridge namespace and one namespace per host."""

    prefix: str
    bridge: Namespace
    hosts: dict[str, Namespace] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    """host name -> IPv4 address on its ``eth0`` (no prefix length)."""
    addresses6: dict[str, str] = field(default_factory=dict)
    """host name -> IPv6 address on its ``eth0`` (empty when IPv6 is off)."""
    bridge_ifname: str = "br0"

    def __getitem__(self, host: str) -> Namespace:
        return self.hosts[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self.hosts)

    def namespaces(self) -> list[Namespace]:
        return [*self.hosts.values(), self.bridge]

    def destroy(self) -> None:
        """Remove every namespace of the LAN (hosts first, then the bridge)."""
        errors: list[str] = []
        for ns in self.namespaces():
            try:
                ns.destroy()
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))

    def stop(self) -> None:
        self.destroy()


def build_lan(
    prefix: str,
    hosts: Sequence[str],
    subnet: str = "10.231.7",
    subnet6: str | None = "fd00:6766:7::",
) -> Lan:
    """Build namespace ``<prefix>br`` holding bridge ``br0`` (multicast snooping
    off) and one namespace ``<prefix><host>`` per host.

    Host number N (1-based, in ``hosts`` order) gets ``eth0`` with
    ``<subnet>.N/24`` (and ``<subnet6>N/64`` unless ``subnet6`` is None or the
    kernel has no IPv6) and the route ``224.0.0.0/4 dev eth0``.  The bridge side
    of its veth pair is ``veth<N>``.  Partial work is undone on failure.
    """
    names = list(hosts)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate host names in {names}")
    if "br" in names:
        raise ValueError('"br" is reserved for the bridge namespace')
    if not 1 <= len(names) <= 254:
        raise ValueError("a LAN holds 1 to 254 hosts")
    octets = subnet.split(".")
    if len(octets) != 3 or not all(o.isdigit() and int(o) < 256 for o in octets):
        raise ValueError(f"subnet must be three octets like '10.231.7', not {subnet!r}")
    use6 = subnet6 is not None and _have_ipv6()

    bridge = Namespace.create(prefix + "br", lo_multicast=False, lo_ipv6=None)
    lan = Lan(prefix=prefix, bridge=bridge)
    try:
        bridge.ip("link", "add", lan.bridge_ifname, "type", "bridge", "mcast_snooping", "0")
        bridge.ip("link", "set", lan.bridge_ifname, "up")
        for n, host in enumerate(names, start=1):
            ns = Namespace.create(prefix + host, lo_multicast=False, lo_ipv6=None)
            lan.hosts[host] = ns
            port = f"veth{n}"  # at most 7 characters, well under IFNAMSIZ
            bridge.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            bridge.ip("link", "set", port, "master", lan.bridge_ifname, "up")
            addr = f"{subnet}.{n}"
            ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
            lan.addresses[host] = addr
            if use6:
                addr6 = f"{subnet6}{n:x}"
                ns.ip("-6", "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
                lan.addresses6[host] = addr6
            ns.ip("link", "set", "eth0", "up")
            ns.ip("route", "add", "224.0.0.0/4", "dev", "eth0")
    except BaseException:
        lan.destroy()
        raise
    return lan
