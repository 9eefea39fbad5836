"""The serial listener against real peers: guestfenced, libvirt's test driver, the C fence_virt.

No qemu runs here, so the tests play qemu: for every guest serial port they
bind and listen on the UNIX socket named in the domain XML before the daemon
starts, accept the daemon's connection, and then write what the guest's
fence_virt would write into its serial port.

The test driver keeps its state per connection (``test:///path`` URIs): the
daemon's backend and its serial listener each see their own copy of the node,
and only the backend's copy changes when a guest is fenced. The test that
follows domains starting and stopping therefore runs the listener in this
process against ``test:///default``, whose state all connections of one
process share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from guestfence.host.acl import AccessMap
from guestfence.host.backends.libvirt import LibvirtBackend
from guestfence.host.config import Group, SerialListenerConfig
from guestfence.host.listeners.serial import SerialListener
from guestfence.host.server import FenceService
from guestfence.lab.cfence import FENCE_VIRT, write_key
from guestfence.lab.testdriver import Guest, write_node_xml
from guestfence.virt.wire import (
    HOST_RECORD_SIZE,
    HashType,
    HostRecord,
    Op,
    SerialRequest,
    find_serial_response,
    parse_host_record,
)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
GUESTFENCED = BIN / "guestfenced"
OUR_FENCE_VIRT = BIN / "fence_virt"
UUID1 = "5e7a0001-0000-4000-8000-000000000001"
UUID2 = "5e7a0002-0000-4000-8000-000000000002"
IO_TIMEOUT = 10.0

_seqno = iter(range(1000, 1 << 32))


def request(op: Op, domain: str) -> SerialRequest:
    return SerialRequest(op=op, domain=domain, seqno=next(_seqno))


# ---------------------------------------------------------------------------- qemu's side


class FakeSerialPort:
    """qemu's end of a ``<serial type='unix'><source mode='bind'>``: it binds, we connect."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.conn: socket.socket | None = None

    def accept(self, timeout: float = IO_TIMEOUT) -> socket.socket:
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        conn.settimeout(IO_TIMEOUT)
        if self.conn is not None:
            self.conn.close()
        self.conn = conn
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def read_answer(conn: socket.socket, buffer: bytearray) -> int:
    """Scan for magic + result byte as fence_virt does."""
    while True:
        code, used = find_serial_response(bytes(buffer))
        del buffer[:used]
        if code is not None:
            return code
        chunk = conn.recv(4096)
        if not chunk:
            raise EOFError("the daemon closed the serial socket")
        buffer += chunk


def ask(conn: socket.socket, req: SerialRequest) -> int:
    conn.sendall(req.pack())
    return read_answer(conn, bytearray())


def ask_list(conn: socket.socket, requester_view: str = "") -> tuple[list[HostRecord], int]:
    """A host list: 253, records, terminator, then the backend's result."""
    conn.sendall(request(Op.HOSTLIST, requester_view).pack())
    buffer = bytearray()
    assert read_answer(conn, buffer) == 253
    records: list[HostRecord] = []
    while True:
        while len(buffer) < HOST_RECORD_SIZE:
            buffer += conn.recv(4096)
        record = parse_host_record(bytes(buffer[:HOST_RECORD_SIZE]))
        del buffer[:HOST_RECORD_SIZE]
        if record is None:
            return records, read_answer(conn, buffer)
        records.append(record)


# ---------------------------------------------------------------------------- the daemon


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = IO_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"guestfenced exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log after {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class SerialLab:
    ports: dict[str, FakeSerialPort]
    conns: dict[str, socket.socket]
    daemon: Daemon


def _config_text(uri: str, key: Path, groups: str) -> str:
    return (
        'fence_virtd {\n\tlistener = "serial";\n\tbackend = "libvirt";\n}\n'
        f'listeners {{\n\tserial {{\n\t\turi = "{uri}";\n\t\tmode = "serial";\n'
        f'\t\tkey_file = "{key}";\n\t}}\n}}\n'
        f'backends {{\n\tlibvirt {{\n\t\turi = "{uri}";\n\t}}\n}}\n'
        f"{groups}"
    )


LabFactory = Callable[..., SerialLab]


@pytest.fixture
def serial_lab(tmp_path: Path) -> Iterator[LabFactory]:
    """``serial_lab(groups="") -> SerialLab``: two running guests, their ports, guestfenced."""
    ports: list[FakeSerialPort] = []
    daemons: list[Daemon] = []

    def make(groups: str = "") -> SerialLab:
        guests = [Guest("guest1", UUID1, serial_socket=str(tmp_path / "guest1.sock")),
                  Guest("guest2", UUID2, serial_socket=str(tmp_path / "guest2.sock"))]
        uri = write_node_xml(tmp_path / "node.xml", guests)
        lab_ports = {}
        for g in guests:
            assert g.serial_socket is not None
            lab_ports[g.name] = FakeSerialPort(Path(g.serial_socket))
            ports.append(lab_ports[g.name])
        conf = tmp_path / "fence_virt.conf"
        conf.write_text(_config_text(uri, write_key(tmp_path / "key"), groups))
        conf.chmod(0o600)
        log_path = tmp_path / "guestfenced.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(GUESTFENCED), "-F", "-d", "1", "-f", str(conf),
                 "-p", str(tmp_path / "guestfenced.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        daemon = Daemon(proc, log_path)
        daemons.append(daemon)
        daemon.wait_for_log("guestfenced ready")
        conns = {name: port.accept() for name, port in lab_ports.items()}
        return SerialLab(lab_ports, conns, daemon)

    try:
        yield make
    finally:
        for daemon in daemons:
            daemon.stop()
        for port in ports:
            port.close()


# ---------------------------------------------------------------------------- tests


def test_status_off_list_and_unknown(serial_lab: LabFactory) -> None:
    lab = serial_lab()
    g1, g2 = lab.conns["guest1"], lab.conns["guest2"]
    assert ask(g1, request(Op.STATUS, "guest1")) == 0
    assert ask(g1, request(Op.OFF, "guest2")) == 0
    assert ask(g1, request(Op.STATUS, "guest2")) == 2
    assert ask(g2, request(Op.STATUS, UUID1)) == 0  # guest2's socket still served
    records, final = ask_list(g1)
    assert [(r.name, r.uuid, r.is_on) for r in records] == [
        ("guest1", UUID1, True), ("guest2", UUID2, False)]
    assert final == 0
    assert ask(g1, request(Op.STATUS, "no-such-vm")) == 1
    log = lab.daemon.log()
    assert f"requester={UUID1} target=guest2 action=off" in log
    assert f"requester={UUID2} target={UUID1} action=status" in log


def test_duplicate_request_is_dropped(serial_lab: LabFactory) -> None:
    lab = serial_lab()
    g1 = lab.conns["guest1"]
    first = request(Op.STATUS, "guest1")
    assert ask(g1, first) == 0
    g1.sendall(first.pack())  # same op, seqno and domain: no second answer
    lab.daemon.wait_for_log(f"duplicate of seqno {first.seqno}")
    assert ask(g1, request(Op.STATUS, "no-such-vm")) == 1


def test_groups_identify_the_guest_by_its_socket(serial_lab: LabFactory) -> None:
    groups = f'groups {{\n\tgroup {{\n\t\tuuid = "{UUID1}";\n\t\tuuid = "guest1";\n\t}}\n}}\n'
    lab = serial_lab(groups)
    g1, g2 = lab.conns["guest1"], lab.conns["guest2"]
    assert ask(g1, request(Op.STATUS, "guest1")) == 0
    assert ask(g1, request(Op.STATUS, UUID1)) == 0
    assert ask(g1, request(Op.STATUS, "guest2")) == 3  # not in guest1's group
    assert ask(g2, request(Op.OFF, "guest1")) == 3  # guest2 is in no group
    assert ask(g2, request(Op.STATUS, "guest1")) == 3
    assert ask(g1, request(Op.STATUS, "guest1")) == 0  # the refused off did nothing
    records, _ = ask_list(g1)
    assert [r.name for r in records] == ["guest1"]
    records, _ = ask_list(g2)
    assert records == []


class PtyBridge:
    """A pseudo-terminal whose master end is wired to the daemon's socket connection.

    The guest's serial device is the pty slave; the bridge thread copies bytes
    both ways. The slave stays open here too, so clients can come and go.
    """

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop_r, self._stop_w = os.pipe()
        conn.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self.master, self.conn.fileno(), self._stop_r], [], [])
            if self._stop_r in ready:
                return
            if self.master in ready:
                self.conn.sendall(os.read(self.master, 4096))
            if self.conn.fileno() in ready:
                data = self.conn.recv(4096)
                if not data:
                    return
                os.write(self.master, data)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self.master, self.slave, self._stop_r, self._stop_w):
            os.close(fd)


@pytest.fixture
def pty_bridge() -> Iterator[Callable[[socket.socket], PtyBridge]]:
    bridges: list[PtyBridge] = []

    def make(conn: socket.socket) -> PtyBridge:
        bridges.append(PtyBridge(conn))
        return bridges[-1]

    try:
        yield make
    finally:
        for bridge in bridges:
            bridge.close()


def run_client(binary: Path | str, device: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), "-D", device, "-t", "10", *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("client", [FENCE_VIRT, OUR_FENCE_VIRT], ids=["c-client", "our-client"])
def test_fence_virt_on_a_pty(
    serial_lab: LabFactory, pty_bridge: Callable[[socket.socket], PtyBridge], client: str
) -> None:
    lab = serial_lab()
    bridge = pty_bridge(lab.conns["guest1"])
    status = run_client(client, bridge.path, "-o", "status", "-H", "guest1")
    assert status.returncode == 0, status
    assert status.stdout == "Status: ON\n"
    # A pty has no modem lines: the C client's TIOCMGET fails with ENOTTY, it prints
    # "ioctl1: Inappropriate ioctl for device", skips the DTR/RTS pulse and carries on.
    assert status.stderr in ("", "ioctl1: Inappropriate ioctl for device\n"), status
    listing = run_client(client, bridge.path, "-o", "list")
    assert listing.returncode == 0, listing
    lines = listing.stdout.splitlines()
    assert [line.split() for line in lines] == [["guest1", UUID1, "on"], ["guest2", UUID2, "on"]]
    off = run_client(client, bridge.path, "-o", "off", "-H", "guest2")
    assert off.returncode == 0, off
    status = run_client(client, bridge.path, "-o", "status", "-H", "guest2")
    assert status.returncode == 2, status
    assert f"requester={UUID1} target=guest2 action=off" in lab.daemon.log()


def test_garbage_and_stalls_do_not_delay_other_guests(serial_lab: LabFactory) -> None:
    lab = serial_lab()
    g1, g2 = lab.conns["guest1"], lab.conns["guest2"]
    stop = threading.Event()

    def flood() -> None:
        junk = bytes(range(256)) * 16 + b"abb" + b"\xff" * 100 + b"abba" + b"\x01" * 200
        while not stop.is_set():
            try:
                g2.sendall(junk)
            except OSError:
                return

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        for _ in range(5):
            started = time.monotonic()
            assert ask(g1, request(Op.STATUS, "guest1")) == 0
            assert time.monotonic() - started < 0.5
    finally:
        stop.set()
        flooder.join(5)
    # A request begun but never finished: the C daemon would wait 1 s for its rest
    g2.sendall(b"abba\x04\x00guest")
    started = time.monotonic()
    assert ask(g1, request(Op.STATUS, "guest1")) == 0
    assert time.monotonic() - started < 0.5
    # guest2 resynchronises: its next request is answered
    lab.daemon.wait_for_log("sends bytes that are not a request")
    assert ask(g2, request(Op.STATUS, "guest2")) == 0


# ---------------------------------------------------------------------------- lifecycle


def _domain_xml(name: str, uuid: str, sock: Path) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory>262144</memory><os><type>hvm</type></os><devices>"
            f"<serial type='unix'><source mode='bind' path='{sock}'/><target port='0'/></serial>"
            "</devices></domain>")


def test_follows_domains_starting_and_stopping(tmp_path: Path) -> None:
    """In-process, on test:///default, where the test's own connection changes what the
    listener's connection sees and libvirt sends lifecycle events to it."""
    asyncio.run(asyncio.wait_for(_follow_domains(tmp_path), 40))


async def _follow_domains(tmp_path: Path) -> None:
    uri = "test:///default"
    ports = {n: FakeSerialPort(tmp_path / f"{n}.sock") for n in ("sa", "sb")}
    conn = libvirt.open(uri)
    doms = {n: conn.defineXML(_domain_xml(f"gf-serial-{n}", u, ports[n].path))
            for n, u in (("sa", UUID1), ("sb", UUID2))}
    backend = LibvirtBackend([uri], power_timeout=5)
    service = FenceService(backend, AccessMap(()), b"", HashType.NONE, HashType.NONE)
    listener = SerialListener(SerialListenerConfig("", uri, None, "serial"), service)

    async def accept(name: str) -> socket.socket:
        return await asyncio.to_thread(ports[name].accept)

    async def eof(sock: socket.socket) -> None:
        assert await asyncio.to_thread(sock.recv, 100) == b""

    try:
        doms["sa"].create()
        await listener.start()
        sa = await accept("sa")
        assert await asyncio.to_thread(ask, sa, request(Op.STATUS, "gf-serial-sb")) == 2
        doms["sb"].create()  # started: the listener connects to its socket
        sb = await accept("sb")
        assert await asyncio.to_thread(ask, sb, request(Op.STATUS, "gf-serial-sb")) == 0
        # sa fences sb; sb's stop event makes the listener leave sb's socket
        assert await asyncio.to_thread(ask, sa, request(Op.OFF, "gf-serial-sb")) == 0
        await eof(sb)
        doms["sb"].create()
        sb = await accept("sb")
        assert await asyncio.to_thread(ask, sb, request(Op.STATUS, "gf-serial-sa")) == 0
        # qemu side closed while the domain runs: the listener reconnects
        sa.close()
        sa = await accept("sa")
        assert await asyncio.to_thread(ask, sa, request(Op.STATUS, "gf-serial-sa")) == 0
    finally:
        await listener.stop()
        await service.drain()
        backend.close()
        for dom in doms.values():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        for port in ports.values():
            port.close()


def test_vmchannel_mode_takes_channels_in_the_configured_directory(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_vmchannel(tmp_path), 30))


async def _vmchannel(tmp_path: Path) -> None:
    uri = "test:///default"
    (tmp_path / "fence").mkdir()
    channel = FakeSerialPort(tmp_path / "fence" / "vmc.sock")  # a qemu guestfwd channel
    agent = FakeSerialPort(tmp_path / "agent.sock")  # e.g. the guest agent's channel
    serial = FakeSerialPort(tmp_path / "fence" / "serial.sock")
    targets = {"vmc": "<target type='guestfwd' address='10.0.2.179' port='1229'/>",
               "agent": "<target type='virtio' name='org.qemu.guest_agent.0'/>",
               "serial": "<target port='0'/>"}
    devices = "".join(
        f"<{tag} type='unix'><source mode='bind' path='{port.path}'/>{targets[port.path.stem]}"
        f"</{tag}>"
        for tag, port in (("channel", channel), ("channel", agent), ("serial", serial)))
    conn = libvirt.open(uri)
    dom = conn.defineXML(f"<domain type='test'><name>gf-vmchannel</name><uuid>{UUID1}</uuid>"
                         "<memory>262144</memory><os><type>hvm</type></os>"
                         f"<devices>{devices}</devices></domain>")
    backend = LibvirtBackend([uri], power_timeout=5)
    service = FenceService(backend, AccessMap(()), b"", HashType.NONE, HashType.NONE)
    config = SerialListenerConfig("", uri, str(tmp_path / "fence"), "vmchannel")
    listener = SerialListener(config, service)
    try:
        dom.create()
        await listener.start()
        sock = await asyncio.to_thread(channel.accept)
        assert await asyncio.to_thread(ask, sock, request(Op.STATUS, "gf-vmchannel")) == 0
        # all connections were started by the same scan, before that answer
        for port in (agent, serial):
            port.listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                port.listener.accept()
    finally:
        await listener.stop()
        await service.drain()
        backend.close()
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()
        for port in (channel, agent, serial):
            port.close()


# ---------------------------------------------------------------------------- safety


class StallingBackend:
    """A backend whose requests for ``slow`` block until released; others answer at once."""

    name = "stalling"

    def __init__(self, results: dict[str, int]) -> None:
        self.results = results
        self.calls: list[tuple[int, str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def lookup(self, target: str) -> object | None:
        return None

    def owns(self, target: str) -> bool:
        return True

    def execute(self, op: int, target: str) -> int:
        self.calls.append((op, target))
        if target == "slow":
            self.entered.set()
            self.release.wait(IO_TIMEOUT)
        return self.results[target]

    def host_list(self) -> list[HostRecord]:
        return []

    def close(self) -> None:
        pass


def test_a_later_request_supersedes_the_older_ones_on_its_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers carry no seqno: a late answer to a request whose client gave up must not be
    read by the next client as its own, and a superseded request not started yet must not
    run at all."""
    caplog.set_level(logging.INFO, logger="guestfenced")
    asyncio.run(asyncio.wait_for(_supersede(tmp_path, caplog), 40))


async def _supersede(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = "test:///default"
    port = FakeSerialPort(tmp_path / "g.sock")
    conn = libvirt.open(uri)
    dom = conn.defineXML(_domain_xml("gf-supersede", UUID1, port.path))
    backend = StallingBackend({"slow": 0, "b": 1, "c": 2})
    service = FenceService(backend, AccessMap(()), b"", HashType.NONE, HashType.NONE)
    listener = SerialListener(SerialListenerConfig("", uri, None, "serial"), service)

    def request_lines(seqno: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("request ") and f" seqno={seqno} " in r.getMessage()]

    try:
        dom.create()
        await listener.start()
        sock = await asyncio.to_thread(port.accept)
        r1, r2 = request(Op.STATUS, "slow"), request(Op.OFF, "slow")
        sock.sendall(r1.pack())  # its client will give up: the backend is stalled
        assert await asyncio.to_thread(backend.entered.wait, IO_TIMEOUT)
        sock.sendall(r2.pack())  # waits for the domain's lock, behind r1
        # the third client gets its own answer, not r1's 0 nor r2's
        assert await asyncio.to_thread(ask, sock, request(Op.STATUS, "c")) == 2
        backend.release.set()
        for r in (r1, r2):
            while not request_lines(r.seqno):
                await asyncio.sleep(0.02)
        assert "outcome=disconnected" in request_lines(r1.seqno)[0]  # ran, answer withheld
        assert "outcome=abandoned" in request_lines(r2.seqno)[0]  # never ran
        assert (Op.OFF, "slow") not in backend.calls
        superseded = [r.getMessage() for r in caplog.records
                      if "outcome=superseded" in r.getMessage()]
        assert [f"seqno={r1.seqno} " in m for m in superseded] == [True, False]
        assert f"seqno={r2.seqno} " in superseded[1]
        # nothing of r1 nor r2 came after: the next answer read is the next request's
        assert await asyncio.to_thread(ask, sock, request(Op.STATUS, "b")) == 1
    finally:
        backend.release.set()
        await listener.stop()
        await service.drain()
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()
        port.close()


def test_a_socket_path_named_by_two_running_domains_is_served_for_neither(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clone that kept the original's socket path: whoever writes there cannot be told,
    so nobody is served (the requester UUID feeds the ACL) until one of them stops."""
    caplog.set_level(logging.INFO, logger="guestfenced")
    asyncio.run(asyncio.wait_for(_same_path(tmp_path, caplog), 40))


async def _same_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = "test:///default"
    port = FakeSerialPort(tmp_path / "shared.sock")
    conn = libvirt.open(uri)
    doms = [conn.defineXML(_domain_xml(name, uuid, port.path))
            for name, uuid in (("gf-original", UUID1), ("gf-clone", UUID2))]
    backend = StallingBackend({"gf-original": 0})
    access = AccessMap([Group("g", (), (UUID1, "gf-original"))])
    service = FenceService(backend, access, b"", HashType.NONE, HashType.NONE)
    listener = SerialListener(SerialListenerConfig("", uri, None, "serial"), service)
    try:
        for dom in doms:
            dom.create()
        await listener.start()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert str(port.path) in errors[0]
        assert "gf-original" in errors[0] and "gf-clone" in errors[0]
        with pytest.raises(TimeoutError):  # no connection: no request is read, none answered
            port.accept(timeout=1.5)
        # the clone stops: the path is the original's again
        doms[1].destroy()
        sock = await asyncio.to_thread(port.accept)
        assert await asyncio.to_thread(ask, sock, request(Op.OFF, "gf-original")) == 0
        assert backend.calls == [(Op.OFF, "gf-original")]
        while not any(f"requester={UUID1} target=gf-original action=off" in r.getMessage()
                      for r in caplog.records):  # logged just after the answer
            await asyncio.sleep(0.02)
        assert any("no longer named by several running domains" in r.getMessage()
                   for r in caplog.records)
    finally:
        await listener.stop()
        await service.drain()
        for dom in doms:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        port.close()
