"""Several libvirt hosts on one LAN, each with its own libvirtd, plus guest-side namespaces.

:class:`HostsLab` is what the live-migration tests and the hand-over benchmark
need: ``build_lan`` with one namespace per host and per client, a
:class:`~guestfence.lab.libvirtd.LibvirtLab` per host that listens on
``qemu+tcp://<its LAN address>/system`` (lab only: no auth) and takes
incoming migrations there, guestfenced daemons started in the hosts'
namespaces, and ``fence_xvm`` run from a client namespace. :meth:`stop`
removes every process and namespace, whatever failed before.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from guestfence.lab.libvirtd import LibvirtLab
from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import TEST_PREFIX, LabError, Lan, build_lan, run_prefix
from guestfence.lab.ourdaemon import OurDaemon, venv_tool


class HostsLab(StartStop):
    def __init__(self, scratch: str | os.PathLike[str], hosts: Sequence[str] = ("h1", "h2"),
                 clients: Sequence[str] = ("g",), subnet: str = "10.231.9",
                 ns_prefix: str = TEST_PREFIX) -> None:
        self.scratch = Path(scratch)
        self.host_names = tuple(hosts)
        self.client_names = tuple(clients)
        self.subnet = subnet
        self.ns_prefix = ns_prefix
        self.net: Lan | None = None
        self.labs: dict[str, LibvirtLab] = {}
        self.daemons: dict[str, OurDaemon] = {}

    def start(self) -> HostsLab:
        try:
            self.net = build_lan(run_prefix(self.ns_prefix), [*self.host_names, *self.client_names],
                                 subnet=self.subnet, subnet6=None)
            for host in self.host_names:
                lab = LibvirtLab(self.scratch / host, self.net[host],
                                 listen_address=self.net.addresses[host], hostname=host)
                self.labs[host] = lab
                lab.start()
        except BaseException:
            self.stop()
            raise
        return self

    def tcp_uri(self, host: str) -> str:
        return self.labs[host].tcp_uri

    def hosts_block(self) -> list[tuple[str, str]]:
        """``(host, qemu+tcp URI)`` for a multi-libvirt config."""
        return [(h, self.tcp_uri(h)) for h in self.host_names]

    def daemon(self, name: str, config_text: str, namespace: str | None = None,
               debug: int = 1) -> OurDaemon:
        """Write ``config_text`` and start guestfenced in ``namespace`` (default: ``name``)."""
        assert self.net is not None
        conf = self.scratch / f"{name}.conf"
        conf.write_text(config_text)
        conf.chmod(0o600)
        daemon = OurDaemon(conf, namespace=self.net[namespace or name], debug=debug,
                           extra_args=("--admin-socket", str(self.admin_socket(name))))
        self.daemons[name] = daemon
        daemon.start(timeout=30.0)
        return daemon

    def admin_socket(self, name: str) -> Path:
        """Each daemon's own admin socket (``guestfence status --socket``)."""
        return self.scratch / f"{name}.admin"

    def fence_xvm(self, key: str | os.PathLike[str], *args: str, client: str = "g",
                  timeout: float = 30.0) -> tuple[int, str]:
        """Our fence_xvm from a client namespace, multicast on the LAN: (rc, stdout)."""
        assert self.net is not None
        r = self.net[client].run([venv_tool("fence_xvm"), "-k", str(key), *args],
                                 capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout.strip()

    def popen_fence_xvm(self, key: str | os.PathLike[str], *args: str,
                        client: str = "g") -> subprocess.Popen[str]:
        assert self.net is not None
        return self.net[client].popen([venv_tool("fence_xvm"), "-k", str(key), *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)

    def request_lines(self, guest: str, action: str | None = None) -> dict[str, list[str]]:
        """Each daemon's request log lines for ``guest`` (and ``action``)."""
        needle = f"target={guest} " + (f"action={action} " if action else "")
        return {n: [x for x in d.request_lines() if needle in x] for n, d in self.daemons.items()}

    def request_counts(self, guest: str, action: str | None = None, total: int | None = None,
                       timeout: float = 10.0) -> dict[str, int]:
        """Request lines per daemon, once ``total`` lines in all are logged (a daemon logs
        just after it answered, so the line may trail the client's exit)."""
        deadline = time.monotonic() + timeout
        while True:
            found = {n: len(x) for n, x in self.request_lines(guest, action).items()}
            if total is None or sum(found.values()) >= total or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def logs(self) -> str:
        """Every daemon's log and every libvirtd's tail, for a failure message."""
        parts = [f"--- guestfenced {n}\n{d.log_text()}" for n, d in self.daemons.items()]
        parts += [f"--- libvirtd {h}\n{lab.log_tail(15)}" for h, lab in self.labs.items()]
        return "\n".join(parts)

    def stop(self) -> None:
        errors: list[str] = []
        for daemon in self.daemons.values():
            with contextlib.suppress(Exception):
                daemon.stop()
        for lab in self.labs.values():
            try:
                lab.stop()
            except Exception as e:  # keep going: the namespaces must go anyway
                errors.append(str(e))
        if self.net is not None:
            self.net.destroy()
            self.net = None
        if errors:
            raise LabError("; ".join(errors))
