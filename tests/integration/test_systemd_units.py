"""dist/systemd: systemd's own checker accepts the unit, its command line is one guestfenced
accepts, the paths the daemon writes are writable under its hardening, and guestfenced
speaks the readiness protocol Type=notify relies on, including the -w wait."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.host.main import build_parser
from guestfence.lab.ourdaemon import daemon_config_text
from guestfence.lab.testdriver import default_guests, node_uri, write_node_xml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "dist" / "systemd" / "guestfenced.service"
CPG_DROPIN = ROOT / "dist" / "systemd" / "cpg.conf"
MAX_EXPOSURE = 4.0  # systemd-analyze security: below 4 is "OK"


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: install the Debian package systemd (make test-deps)"
    return tool


def unit_sections(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def exec_start() -> list[str]:
    return shlex.split(unit_sections(UNIT)["Service"]["ExecStart"])


def venv_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's guestfenced (it must exist)."""
    binary = exec_start()[0]
    ours = Path(sys.executable).parent / Path(binary).name
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    copy = unit_dir / UNIT.name
    copy.write_text(UNIT.read_text().replace(binary, str(ours)))
    dropins = unit_dir / f"{UNIT.name}.d"
    dropins.mkdir()
    shutil.copy(CPG_DROPIN, dropins / CPG_DROPIN.name)
    return copy


def man_path(tmp_path: Path) -> str:
    """A MANPATH holding our generated guestfenced(8), so Documentation= resolves."""
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True)
    shutil.copy(ROOT / "man" / "guestfenced.8", man8)
    return str(tmp_path / "man")


def test_exec_start_names_our_daemon_with_options_it_accepts() -> None:
    argv = exec_start()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(Path(argv[0]).name) == "guestfence.host.main:main", argv[0]
    args = build_parser().parse_args(argv[1:])  # SystemExit (test error) on an unknown option
    assert args.foreground, "Type=notify needs -F: the daemon must stay the main process"
    assert args.wait, "-w: wait for libvirt instead of failing at boot"
    service = unit_sections(UNIT)["Service"]
    assert service["Type"] == "notify"
    runtime = Path("/run") / service["RuntimeDirectory"]
    assert Path(args.pidfile).parent == runtime, "the pid file must be in the RuntimeDirectory"
    assert service["ExecReload"].endswith("-HUP $MAINPID")


def test_paths_the_daemon_writes_are_writable_under_protect_system() -> None:
    service = unit_sections(UNIT)["Service"]
    assert service["ProtectSystem"] == "strict"
    writable = [Path("/run") / service["RuntimeDirectory"]]
    writable += [Path(p) for p in service.get("ReadWritePaths", "").split()]
    args = build_parser().parse_args(exec_start()[1:])
    written = [Path(args.pidfile)]
    # options whose default is a file under /run or /var (pid files, sockets) are written
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if isinstance(value, str) and re.match(r"/(run|var)/", value) and action.dest != "config":
            written.append(Path(value))
    try:
        from guestfence.host.admin import DEFAULT_ADMIN_SOCKET
        written.append(Path(DEFAULT_ADMIN_SOCKET))
    except ImportError:
        pass
    for path in written:
        assert any(path.is_relative_to(w) for w in writable), (
            f"{path} is read-only under ProtectSystem=strict; writable: {writable}")


def test_families_the_daemon_uses_are_allowed() -> None:
    families = set(unit_sections(UNIT)["Service"]["RestrictAddressFamilies"].split())
    # multicast/tcp listeners, vsock listener, libvirt and corosync IPC, interface lookups
    assert {"AF_INET", "AF_INET6", "AF_VSOCK", "AF_UNIX", "AF_NETLINK"} <= families


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    unit = venv_unit(tmp_path)
    env = dict(os.environ, MANPATH=man_path(tmp_path),
               SYSTEMD_UNIT_PATH=f"{unit.parent}:")  # our dir first, then the defaults
    r = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True,
                       text=True, timeout=120, env=env)
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if "guestfenced" in line or "cpg.conf" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_systemd_analyze_security_exposure_is_ok(tmp_path: Path) -> None:
    unit = venv_unit(tmp_path)
    r = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


# --------------------------------------------------------------- Type=notify, for real


class NotifySocket:
    """What systemd listens on: a datagram socket, one message per notify call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float, proc: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if needle in message:
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"no notification with {needle!r} (daemon rc "
                                     f"{proc.poll()}); got {self.messages}")
            self.sock.settimeout(min(left, 0.5))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        yield ns
    finally:
        ns.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_notify_ready_after_waiting_for_the_backend_then_stopping(
        tmp_path: Path, tmp_key: Path, notify_socket: NotifySocket) -> None:
    node = tmp_path / "node.xml"  # not there yet: the backend cannot start
    conf = tmp_path / "gf.conf"
    conf.write_text(daemon_config_text(str(tmp_key), [node_uri(node)], listener="tcp",
                                       port=free_port(), interface=None))
    argv = [sys.executable, "-m", "guestfence.host.main", *exec_start()[1:],
            "-f", str(conf), "-p", str(tmp_path / "gf.pid")]
    options = {o for a in build_parser()._actions for o in a.option_strings}
    if "--admin-socket" in options:  # keep the test's daemon off the host's /run
        argv += ["--admin-socket", str(tmp_path / "admin.sock")]
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_socket.path))
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        waiting = notify_socket.wait_for("STATUS=waiting for the backend", 60, proc)
        assert "READY=1" in waiting.splitlines(), "-w must not hold the boot up"
        write_node_xml(node, default_guests(count=1))
        serving = notify_socket.wait_for("STATUS=serving", 60, proc)
        assert "READY=1" in serving.splitlines()
        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", 30, proc)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
