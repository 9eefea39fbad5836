"""Running guestfenced as a child process (in a namespace or not) and knowing when it is ready.

Readiness is the daemon's own "guestfenced ready" log line, read from its
stderr pipe as it is written; everything it logs is kept for inspection.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from guestfence.lab.cluster import ClusterNode
from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError, Namespace

READY_LINE = "guestfenced ready"


def venv_tool(name: str) -> str:
    """A console script installed beside the running interpreter (the project's .venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class OurDaemon(StartStop):
    def __init__(
        self,
        config: str | os.PathLike[str],
        namespace: Namespace | ClusterNode | None = None,
        pidfile: str | os.PathLike[str] | None = None,
        debug: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config = str(config)
        self.namespace = namespace
        self.pidfile = str(pidfile or Path(self.config).with_suffix(".pid"))
        self.debug = debug
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "guestfence.host.main",
            "-F",
            "-f",
            self.config,
            "-p",
            self.pidfile,
            "-d",
            str(self.debug),
            *self.extra_args,
        ]
        return self.namespace.exec_argv(argv) if self.namespace else argv

    def start(self, timeout: float = 15.0) -> OurDaemon:
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        buffer = b""
        try:
            while READY_LINE not in self.log_text():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LabError(
                        f"guestfenced not ready after {timeout:.0f} s; log:\n{self.log_text()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    rc = self.proc.wait()
                    raise LabError(
                        f"guestfenced exited with rc {rc} before it was ready; "
                        f"log:\n{self.log_text()}{buffer.decode(errors='replace')}"
                    )
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                with self._lock:
                    self._lines += [c.decode(errors="replace") for c in complete]
        finally:
            sel.close()
        if buffer:
            with self._lock:
                self._lines.append(buffer.decode(errors="replace"))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self._lines) + ("\n" if self._lines else "")

    def request_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if " request listener=" in line]

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        """The first log line containing ``needle``; waits for the drain thread to see it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise LabError(
                    f"no log line with {needle!r} after {timeout} s; log:\n{self.log_text()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(2.0)
        return self.proc.returncode



def daemon_config_text(
    key_file: str,
    uris: Sequence[str],
    listener: str = "multicast",
    interface: str | None = "lo",
    address: str | None = None,
    port: int = 1229,
    family: str = "ipv4",
    hash_name: str = "sha256",
    auth: str = "sha256",
    groups: Sequence[tuple[Sequence[str], Sequence[str]]] = (),
    claim_shut_off: bool = True,
    backend: str = "libvirt",
    host_name: str | None = None,
    hosts: Sequence[tuple[str, str]] = (),
    static_map: Sequence[tuple[str, Sequence[str]]] = (),
) -> str:
    """A fence_virt.conf that both guestfenced and fence_virtd read.

    guestfence's tracked modes: ``backend="static"`` (``uris[0]``, ``host_name``,
    ``static_map`` host -> guests) and ``backend="multi-libvirt"`` (``hosts`` host ->
    URI, optional ``host_name``); fence_virtd knows neither."""
    lines = [
        "fence_virtd {",
        f'\tlistener = "{listener}";',
        f'\tbackend = "{backend}";',
        "}",
        "listeners {",
        f"\t{listener} {{",
        f'\t\tkey_file = "{key_file}";',
        f'\t\tport = "{port}";',
        f'\t\thash = "{hash_name}";',
        f'\t\tauth = "{auth}";',
    ]
    if listener in ("multicast", "tcp"):
        lines.append(f'\t\tfamily = "{family}";')
    if address:
        lines.append(f'\t\taddress = "{address}";')
    if interface and listener == "multicast":
        lines.append(f'\t\tinterface = "{interface}";')
    lines += ["\t}", "}", "backends {", f"\t{backend} {{"]
    if backend != "multi-libvirt":
        lines += [f'\t\t{"uri" if i == 0 else f"uri{i}"} = "{u}";' for i, u in enumerate(uris)]
    if host_name is not None:
        lines.append(f'\t\thost_name = "{host_name}";')
    if hosts:
        lines += ["\t\thosts {", *(f'\t\t\t{h} = "{u}";' for h, u in hosts), "\t\t}"]
    if static_map:
        lines += ["\t\tmap {", *(f'\t\t\t{h} = "{" ".join(g)}";' for h, g in static_map),
                  "\t\t}"]
    if not claim_shut_off:  # guestfence only; fence_virtd would warn about an unknown key
        lines.append('\t\tclaim_shut_off = "no";')
    lines += ["\t}", "}"]
    if groups:
        lines.append("groups {")
        for requesters, targets in groups:
            lines.append("\tgroup {")
            lines += [f'\t\tip = "{r}";' for r in requesters]
            lines += [f'\t\tuuid = "{t}";' for t in targets]
            lines.append("\t}")
        lines.append("}")
    return "\n".join(lines) + "\n"
