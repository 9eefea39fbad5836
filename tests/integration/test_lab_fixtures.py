"""The lab helpers work against the real C fence-virt tools (Debian fence-virt 4.12.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from guestfence.lab.cfence import (
    CDaemon,
    missing_tools,
    run_c_client,
    write_c_config,
    write_key,
)
from guestfence.lab.netns import (
    TEST_PREFIX,
    LabError,
    Lan,
    Namespace,
    list_namespaces,
    run_prefix,
)
from guestfence.lab.testdriver import (
    VIR_DOMAIN_RUNNING,
    VIR_DOMAIN_SHUTOFF,
    Guest,
    default_guests,
    write_node_xml,
)

pytestmark = pytest.mark.integration

DaemonFactory = Callable[..., CDaemon]
LanFactory = Callable[..., Lan]
OWN_PREFIX = f"{TEST_PREFIX}{os.getpid()}-"

GUESTS = ["guest1", "guest2", "guest3"]


def xvm(ns: Namespace, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_c_client(ns, ["fence_xvm", "-k", str(key), "-t", "10", *args], timeout=20)


def listing(stdout: str) -> dict[str, str]:
    """``fence_xvm -o list`` output -> {name: "on"|"off"}."""
    rows = [line.split() for line in stdout.splitlines() if line.strip()]
    return {row[0]: row[-1] for row in rows}


def test_tools_present() -> None:
    assert missing_tools() == []


def test_multicast_listener_list_status_off(
    netns: Namespace, tmp_path: Path, tmp_key: Path, c_daemon: DaemonFactory
) -> None:
    uri = write_node_xml(tmp_path / "node.xml", default_guests())
    conf = write_c_config(tmp_path / "fence_virt.conf", "multicast", tmp_key, uri)
    assert (conf.path.stat().st_mode & 0o777) == 0o600
    c_daemon(conf, netns)

    r = xvm(netns, tmp_key, "-o", "list")
    assert r.returncode == 0, r.stderr
    assert listing(r.stdout) == dict.fromkeys(GUESTS, "on")

    r = xvm(netns, tmp_key, "-o", "status", "-H", "guest1")
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")

    r = xvm(netns, tmp_key, "-o", "off", "-H", "guest2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = xvm(netns, tmp_key, "-o", "status", "-H", "guest2")
    assert (r.returncode, r.stdout.strip()) == (2, "Status: OFF")


def test_shut_off_guest_is_listed_off(
    netns: Namespace, tmp_path: Path, tmp_key: Path, c_daemon: DaemonFactory
) -> None:
    guests = [
        *default_guests(),
        Guest("stopped1", "11111111-1111-1111-1111-000000000004", running=False),
    ]
    uri = write_node_xml(tmp_path / "node.xml", guests)
    c_daemon(write_c_config(tmp_path / "fv.conf", "multicast", tmp_key, uri), netns)

    r = xvm(netns, tmp_key, "-o", "list")
    assert r.returncode == 0, r.stderr
    assert listing(r.stdout) == {**dict.fromkeys(GUESTS, "on"), "stopped1": "off"}
    r = xvm(netns, tmp_key, "-o", "status", "-H", "stopped1")
    assert (r.returncode, r.stdout.strip()) == (2, "Status: OFF")


def test_ipv6_multicast_listener(
    netns: Namespace, tmp_path: Path, tmp_key: Path, c_daemon: DaemonFactory
) -> None:
    uri = write_node_xml(tmp_path / "node.xml", default_guests())
    conf = write_c_config(tmp_path / "fv6.conf", "multicast", tmp_key, uri, family="ipv6")
    assert conf.address == "ff05::3:1"
    c_daemon(conf, netns)

    r = xvm(netns, tmp_key, "-i", "ipv6", "-o", "list")
    assert r.returncode == 0, r.stderr
    assert listing(r.stdout) == dict.fromkeys(GUESTS, "on")


def test_tcp_listener_with_fence_virt(
    netns: Namespace, tmp_path: Path, tmp_key: Path, c_daemon: DaemonFactory
) -> None:
    uri = write_node_xml(tmp_path / "node.xml", default_guests())
    conf = write_c_config(
        tmp_path / "fvt.conf", "tcp", tmp_key, uri, port=1300, hash="sha256", auth="sha256"
    )
    c_daemon(conf, netns)

    r = run_c_client(
        netns,
        [
            "fence_virt",
            "-T",
            "127.0.0.1",
            "-p",
            "1300",
            "-o",
            "status",
            "-H",
            "guest1",
            "-k",
            str(tmp_key),
        ],
        timeout=20,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr


def test_two_host_lan(
    tmp_path: Path, tmp_key: Path, lan: LanFactory, c_daemon: DaemonFactory
) -> None:
    net = lan(["host1", "host2", "vm1"])
    assert net.addresses == {"host1": "10.231.7.1", "host2": "10.231.7.2", "vm1": "10.231.7.3"}
    expected: dict[str, set[str]] = {}
    daemons: list[CDaemon] = []
    for n, host in enumerate(["host1", "host2"], start=1):
        base = f"2222222{n}-0000-0000-0000-"
        guests = default_guests(prefix=f"{host}-g", count=2, uuid_base=base)
        expected[host] = {g.name for g in guests}
        uri = write_node_xml(tmp_path / f"{host}.xml", guests)
        conf = write_c_config(
            tmp_path / f"{host}.conf", "multicast", tmp_key, uri, interface="eth0"
        )
        daemons.append(c_daemon(conf, net[host]))
    assert all(d.running and d.is_ready() for d in daemons)

    # Both daemons answer; whichever connects first wins, so accept either host's view.
    r = xvm(net["vm1"], tmp_key, "-o", "list")
    assert r.returncode == 0, r.stderr
    assert set(listing(r.stdout)) in expected.values()
    r = xvm(net["vm1"], tmp_key, "-o", "status", "-H", "host1-g1")
    assert r.stdout.strip() in ("Status: ON", "Status: OFF")


def test_lan_hosts_are_separate_hosts(lan: LanFactory) -> None:
    net = lan(["a", "b"], subnet="10.231.9")
    client = (
        "import socket,sys;"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5);"
        "s.sendall(b'ping');s.close()"
    )
    server = net["a"].popen(
        [
            sys.executable,
            "-c",
            "import socket;l=socket.create_server(('0.0.0.0',4444));print('listening',flush=True);"
            "c,p=l.accept();print(p[0],c.recv(4).decode(),flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        r = net["b"].run(
            [sys.executable, "-c", client, "10.231.9.1", "4444"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert r.returncode == 0, r.stderr
        out, _ = server.communicate(timeout=10)
        assert out.split() == ["10.231.9.2", "ping"]
    finally:
        server.kill()
        server.wait()
    # lo of a LAN host is not the other host's lo: nothing listens on a's port there.
    r = net["b"].run(
        [sys.executable, "-c", client, "127.0.0.1", "4444"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode != 0


MCAST_PROBE = """
import socket, struct, sys
family, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
idx = socket.if_nametoindex("lo")
if family == "6":
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::", port))
    rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                  socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", idx))
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
else:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("0.0.0.0", port))
    rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                  socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.settimeout(5)
tx.sendto(b"probe", (group, port))
data, _ = rx.recvfrom(64)
print(data.decode())
"""


@pytest.mark.parametrize(("family", "group"), [("4", "225.0.0.12"), ("6", "ff05::3:1")])
def test_multicast_loops_back_on_lo(netns: Namespace, family: str, group: str) -> None:
    r = netns.run(
        [sys.executable, "-c", MCAST_PROBE, family, group, "40123"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "probe"), r.stderr


def test_testdriver_xml_via_libvirt(tmp_path: Path) -> None:
    sock = str(tmp_path / "guest9 <serial>.sock")
    guests = [
        Guest("on1", "33333333-0000-0000-0000-000000000001", memory_kib=131072, vcpus=2),
        Guest("off1", "33333333-0000-0000-0000-000000000002", running=False, serial_socket=sock),
    ]
    uri = write_node_xml(tmp_path / "node.xml", guests, cpus=8)
    conn = libvirt.open(uri)
    try:
        on1, off1 = conn.lookupByName("on1"), conn.lookupByName("off1")
        assert on1.state()[0] == VIR_DOMAIN_RUNNING
        assert off1.state()[0] == VIR_DOMAIN_SHUTOFF
        assert on1.isPersistent() and off1.isPersistent()
        assert on1.maxMemory() == 131072
        assert on1.info()[3] == 2
        assert on1.UUIDString() == "33333333-0000-0000-0000-000000000001"
        assert conn.getInfo()[2] == 8
        xml = off1.XMLDesc()
        assert "<serial type='unix'>" in xml
        assert f"path='{sock.replace('<', '&lt;').replace('>', '&gt;')}'" in xml
    finally:
        conn.close()


def test_namespace_destroy_kills_and_recreate_replaces(tmp_path: Path) -> None:
    name = run_prefix() + "x"
    ns = Namespace.create(name)
    try:
        proc = ns.popen(["sleep", "300"])
        ns.wait_entered(proc.pid)
        assert proc.pid in ns.pids()
        # A stale namespace of the same name (a crashed run) is replaced.
        ns2 = Namespace.create(name)
        assert proc.wait(timeout=5) == -9
        assert ns2.exists() and ns2.pids() == []
    finally:
        ns.destroy()
    assert not ns.exists()
    ns.destroy()  # idempotent


def test_daemon_failure_reports_log(netns: Namespace, tmp_path: Path, tmp_key: Path) -> None:
    conf = write_c_config(
        tmp_path / "bad.conf", "multicast", tmp_key, "test:///nonexistent/node.xml"
    )
    daemon = CDaemon(conf, netns)
    with pytest.raises(LabError, match="exited with rc") as info:
        daemon.start()
    assert "Could not connect to any hypervisors" in str(info.value)
    assert not daemon.running


def test_multicast_daemon_refused_in_root_namespace(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k")
    assert (key.stat().st_mode & 0o777) == 0o600 and key.stat().st_size == 4096
    conf = write_c_config(tmp_path / "c.conf", "multicast", key, "test:///default")
    with pytest.raises(LabError):
        CDaemon(conf)
    with pytest.raises(LabError):
        run_c_client(None, ["fence_xvm", "-o", "list"])


def test_zz_no_namespace_of_this_run_remains() -> None:
    """Runs last in this file: every fixture above has been torn down by now."""
    assert OWN_PREFIX.startswith(f"gft-{os.getpid()}-")
    assert [n for n in list_namespaces() if n.startswith(OWN_PREFIX)] == []
