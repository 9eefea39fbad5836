"""Two guest clusters on one host, each with its own key, both using the Debian C fence_xvm.

Namespace ``h`` runs guestfenced on libvirt's test driver with a clusters
block: cluster A's key is bound to web1 (by name) and web2 (by the
guestfence metadata tag in its domain XML), cluster B's to db* (a pattern).
Namespaces ``ga`` and ``gb`` are a guest of each cluster, holding only their
own key, on one LAN with the host (multicast over a bridge).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guestfence.host.clusters import METADATA_NAMESPACE
from guestfence.host.keys import fingerprint
from guestfence.lab.cfence import write_key
from guestfence.lab.netns import Lan
from guestfence.lab.ourdaemon import OurDaemon, venv_tool
from guestfence.lab.testdriver import Guest, node_element, node_uri, write_node_xml
from guestfence.virt.wire import Op, SerialRequest, find_serial_response

pytestmark = pytest.mark.integration

C_FENCE_XVM = "/usr/sbin/fence_xvm"
C_FENCE_VIRT = "/usr/sbin/fence_virt"
TCP_PORT = 1230
UUID = "11111111-1111-1111-1111-0000000000{:02d}"
RELOAD_LINE = "keys reloaded"


@dataclass
class TwoClusters:
    net: Lan
    daemon: OurDaemon
    keys: Path  # the host's key directory
    guest_keys: dict[str, Path]  # the key file each guest namespace holds

    def fence_xvm(self, guest: str, *args: str, key: Path | None = None,
                  timeout: int = 10) -> subprocess.CompletedProcess[str]:
        """The C fence_xvm in guest namespace ``guest`` with that guest's key."""
        k = key or self.guest_keys[guest]
        return self.net[guest].run([C_FENCE_XVM, "-k", str(k), "-t", str(timeout), *args],
                                   capture_output=True, text=True, timeout=timeout + 20)

    def listed(self, guest: str) -> list[str]:
        r = self.fence_xvm(guest, "-o", "list")
        assert r.returncode == 0, r.stderr
        return [line.split()[0] for line in r.stdout.splitlines()]

    def reloads(self) -> int:
        return self.daemon.log_text().count(RELOAD_LINE)

    def wait_reload(self, before: int, timeout: float) -> float:
        """Seconds until the daemon logged a key reload after ``before`` reloads."""
        started = time.monotonic()
        while self.reloads() <= before:
            assert time.monotonic() - started < timeout, \
                f"no key reload within {timeout} s; log:\n{self.daemon.log_text()}"
            time.sleep(0.02)
        return time.monotonic() - started


def node_with_tags(path: Path, guests: list[Guest], tags: dict[str, str]) -> None:
    """A test-driver node file; ``tags`` puts <guestfence:cluster name=.../> into domains."""
    node = node_element(guests)
    for dom in node.findall("domain"):
        tag = tags.get(dom.findtext("name") or "")
        if tag is not None:
            metadata = ET.SubElement(dom, "metadata")
            ET.SubElement(metadata, f"{{{METADATA_NAMESPACE}}}cluster", {"name": tag})
    ET.register_namespace("guestfence", METADATA_NAMESPACE)
    path.write_text(ET.tostring(node, encoding="unicode"))


def daemon_config(uri: str, keys: Path, listener: str = "multicast") -> str:
    settings = 'interface = "eth0";' if listener == "multicast" else \
        f'address = "127.0.0.1"; port = "{TCP_PORT}";'
    return f"""
fence_virtd {{ listener = "{listener}"; backend = "libvirt"; }}
listeners {{ {listener} {{ {settings} }} }}
backends {{ libvirt {{ uri = "{uri}"; }} }}
clusters {{
    A {{
        key_file = "{keys}/a.key";
        guests = "web1";
        tag = "A";
    }}
    B {{
        key_file = "{keys}/b.key";
        pattern = "db*";
    }}
}}
"""


@pytest.fixture
def two_clusters(lan: Callable[..., Lan], tmp_path: Path) -> Iterator[TwoClusters]:
    net = lan(["h", "ga", "gb"])
    keys = tmp_path / "host-keys"
    keys.mkdir(mode=0o700)
    write_key(keys / "a.key")
    write_key(keys / "b.key")
    guest_keys = {}
    for guest, name in (("ga", "a.key"), ("gb", "b.key")):  # each guest gets its own copy
        guest_keys[guest] = tmp_path / f"{guest}-fence_xvm.key"
        shutil.copy(keys / name, guest_keys[guest])
        guest_keys[guest].chmod(0o600)
    guests = [Guest(name=n, uuid=UUID.format(i))
              for i, n in enumerate(["web1", "web2", "db1", "db2", "other"], 1)]
    node_with_tags(tmp_path / "node.xml", guests, {"web2": "A"})
    conf = tmp_path / "guestfenced.conf"
    conf.write_text(daemon_config(node_uri(tmp_path / "node.xml"), keys))
    conf.chmod(0o600)
    daemon = OurDaemon(conf, namespace=net["h"], debug=1).start()
    try:
        yield TwoClusters(net, daemon, keys, guest_keys)
    finally:
        daemon.stop()


def test_each_cluster_fences_and_lists_only_its_own_guests(two_clusters: TwoClusters) -> None:
    w = two_clusters
    assert w.listed("ga") == ["web1", "web2"]
    assert w.listed("gb") == ["db1", "db2"]

    r = w.fence_xvm("ga", "-o", "off", "-H", "web1")
    assert r.returncode == 0, r.stderr
    r = w.fence_xvm("ga", "-o", "status", "-H", "web1")
    assert (r.returncode, r.stdout.strip()) == (2, "Status: OFF")
    r = w.fence_xvm("ga", "-o", "status", "-H", "web2")  # bound by its metadata tag
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")
    r = w.fence_xvm("ga", "-o", "status", "-H", UUID.format(2))  # by UUID as well
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")

    for guest, target in (("ga", "db1"), ("ga", "other"), ("gb", "web2"),
                          ("gb", UUID.format(2))):
        r = w.fence_xvm(guest, "-o", "off", "-H", target)
        assert r.returncode == 3, (guest, target, r.stdout, r.stderr)
        assert "Permission denied" in r.stdout + r.stderr
    r = w.fence_xvm("gb", "-o", "off", "-H", "db2")
    assert r.returncode == 0, r.stderr

    # nothing of the other cluster was touched
    r = w.fence_xvm("ga", "-o", "status", "-H", "web2")
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")
    r = w.fence_xvm("gb", "-o", "status", "-H", "db1")
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")
    lines = w.daemon.request_lines()
    assert any("target=db1 action=off" in x and "outcome=denied" in x and "cluster=A" in x
               for x in lines)
    assert any("target=web1 action=off" in x and "outcome=success" in x and "cluster=A" in x
               for x in lines)
    for key in ("a.key", "b.key"):  # the fingerprints are logged, the keys never
        data = (w.keys / key).read_bytes()
        assert fingerprint(data) in w.daemon.log_text()
        assert data.hex()[:32] not in w.daemon.log_text()


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([venv_tool("guestfence"), "keys", *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r


def test_rotation_old_and_new_key_then_only_the_new_one(two_clusters: TwoClusters,
                                                        tmp_path: Path) -> None:
    w = two_clusters
    pid = w.daemon.proc.pid if w.daemon.proc else None
    old_copy = w.guest_keys["ga"]

    before = w.reloads()
    out = keys_cli("rotate", str(w.keys / "a.key")).stdout
    successor = w.keys / "a.key.next"
    assert fingerprint(successor.read_bytes()) in out
    w.wait_reload(before, timeout=5.0)
    new_copy = tmp_path / "ga-new-fence_xvm.key"  # "copy the successor to the guest"
    shutil.copy(successor, new_copy)
    new_copy.chmod(0o600)

    for key in (old_copy, new_copy):  # during the rotation both keys work
        r = w.fence_xvm("ga", "-o", "status", "-H", "web1", key=key)
        assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr
    assert w.listed("gb") == ["db1", "db2"]  # B is not affected

    before = w.reloads()
    keys_cli("retire", str(w.keys / "a.key"))  # the rename is done when it returns
    took = w.wait_reload(before, timeout=5.0)
    assert took < 1.0, f"the daemon reloaded the keys {took:.2f} s after retire"

    r = w.fence_xvm("ga", "-o", "off", "-H", "web1", key=old_copy, timeout=4)
    assert r.returncode == 1 and "Timed out" in r.stdout + r.stderr, r.stdout + r.stderr
    r = w.fence_xvm("ga", "-o", "status", "-H", "web1", key=new_copy)
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr  # old key did nothing
    r = w.fence_xvm("ga", "-o", "off", "-H", "db1", key=new_copy)
    assert r.returncode == 3  # the new key is still bound to A's guests only
    assert w.daemon.proc is not None and w.daemon.proc.pid == pid and \
        w.daemon.proc.poll() is None  # no restart

    before = w.reloads()  # SIGHUP reloads at once, changed or not
    os.kill(w.daemon.proc.pid, signal.SIGHUP)
    assert w.wait_reload(before, timeout=5.0) < 1.0
    assert "keys reloaded (SIGHUP)" in w.daemon.log_text()
    r = w.fence_xvm("ga", "-o", "status", "-H", "web1", key=new_copy)
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr


def test_tcp_listener_tells_clusters_apart_too(two_clusters: TwoClusters, tmp_path: Path) -> None:
    """fence_virt -T: the block's signature names the cluster; the challenge/response that
    follows on the same connection must then succeed with that cluster's key."""
    w = two_clusters
    conf = tmp_path / "tcp.conf"
    conf.write_text(daemon_config(node_uri(tmp_path / "node.xml"), w.keys, listener="tcp"))
    conf.chmod(0o600)
    daemon = OurDaemon(conf, namespace=w.net["h"], debug=1).start()
    try:
        def virt(key: Path, *args: str) -> subprocess.CompletedProcess[str]:
            return w.net["h"].run([C_FENCE_VIRT, "-T", "127.0.0.1", "-p", str(TCP_PORT),
                                   "-k", str(key), *args], capture_output=True, text=True,
                                  timeout=30)

        a, b = w.guest_keys["ga"], w.guest_keys["gb"]
        r = virt(a, "-o", "list")
        assert r.returncode == 0 and [x.split()[0] for x in r.stdout.splitlines()] == \
            ["web1", "web2"], r.stdout + r.stderr
        r = virt(b, "-o", "list")
        assert [x.split()[0] for x in r.stdout.splitlines()] == ["db1", "db2"]
        r = virt(a, "-o", "status", "-H", "web2")
        assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr
        r = virt(b, "-o", "off", "-H", "web2")
        assert r.returncode == 3, r.stdout + r.stderr
        unknown = tmp_path / "stranger.key"
        write_key(unknown)
        r = virt(unknown, "-o", "status", "-H", "web2")
        assert r.returncode != 0 and "Status" not in r.stdout
        assert any("cluster=B" in x and "outcome=denied" in x for x in daemon.request_lines())
    finally:
        daemon.stop()


# ---------------------------------------------------------------------------- serial


def serial_ask(conn: socket.socket, op: Op, domain: str, seqno: int) -> int:
    """Write a serial request as the guest's fence_virt would; the daemon's result byte."""
    conn.sendall(SerialRequest(op=op, domain=domain, seqno=seqno).pack())
    buffer = b""
    while True:
        code, used = find_serial_response(buffer)
        buffer = buffer[used:]
        if code is not None:
            return code
        chunk = conn.recv(4096)
        assert chunk, "the daemon closed the serial socket"
        buffer += chunk


def test_serial_requests_belong_to_the_requesting_guests_cluster(tmp_path: Path) -> None:
    """No key on the serial path: the guest a request comes from (its socket) names the
    cluster. Here we play qemu: bind each guest's serial socket, accept the daemon. (The
    clusters' key files are not read for the serial listener.)"""
    names = ["web1", "db1", "stray"]
    guests = [Guest(name=n, uuid=UUID.format(i), serial_socket=str(tmp_path / f"{n}.sock"))
              for i, n in enumerate(names, 1)]
    uri = write_node_xml(tmp_path / "node.xml", guests)
    listeners: dict[str, socket.socket] = {}
    conns: dict[str, socket.socket] = {}
    conf = tmp_path / "serial.conf"
    conf.write_text(f"""
fence_virtd {{ listener = "serial"; backend = "libvirt"; }}
listeners {{ serial {{ uri = "{uri}"; mode = "serial"; }} }}
backends {{ libvirt {{ uri = "{uri}"; }} }}
clusters {{
    A {{ key_file = "{tmp_path}/a.key"; guests = "web1"; }}
    B {{ key_file = "{tmp_path}/b.key"; pattern = "db*"; }}
}}
""")
    conf.chmod(0o600)
    daemon = OurDaemon(conf, debug=1)
    try:
        for g in guests:
            assert g.serial_socket is not None
            listeners[g.name] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listeners[g.name].bind(g.serial_socket)
            listeners[g.name].listen(1)
            listeners[g.name].settimeout(15)
        daemon.start()
        for name, sock in listeners.items():
            conns[name], _ = sock.accept()
            conns[name].settimeout(15)
        assert serial_ask(conns["web1"], Op.STATUS, "web1", 1) == 0
        assert serial_ask(conns["web1"], Op.OFF, "db1", 2) == 3
        assert serial_ask(conns["db1"], Op.STATUS, "db1", 3) == 0
        assert serial_ask(conns["db1"], Op.OFF, "web1", 4) == 3
        assert serial_ask(conns["stray"], Op.STATUS, "web1", 5) == 3  # bound to no cluster
        assert serial_ask(conns["web1"], Op.STATUS, "web1", 6) == 0  # nothing was fenced
        lines = daemon.request_lines()
        assert any("target=db1 action=off" in x and "cluster=A" in x and "outcome=denied" in x
                   for x in lines)
    finally:
        daemon.stop()
        for s in [*conns.values(), *listeners.values()]:
            s.close()
