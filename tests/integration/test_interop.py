"""Interoperability both ways with the Debian 4.12.1 C tools, over the real protocol.

Each test builds a private namespace with multicast on ``lo``, a libvirt
test-driver hypervisor, a key, and one daemon (ours or the C fence_virtd);
then drives it with one client (ours or the C fence_xvm / fence_virt).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guestfence.lab.cfence import CDaemon, write_c_config
from guestfence.lab.netns import Namespace
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool
from guestfence.lab.testdriver import Guest, default_guests, node_uri, write_node_xml

pytestmark = pytest.mark.integration

C_TOOLS = {"fence_xvm": "/usr/sbin/fence_xvm", "fence_virt": "/usr/sbin/fence_virt"}
TCP_PORT = 1230


@dataclass
class World:
    ns: Namespace
    key: Path
    guests: list[Guest]
    tmp: Path

    def agent(self, impl: str, tool: str, *args: str, timeout: float = 40) -> \
            subprocess.CompletedProcess[str]:
        exe = C_TOOLS[tool] if impl == "c" else venv_tool(tool)
        return self.ns.run([exe, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def world(netns: Namespace, tmp_path: Path, tmp_key: Path) -> World:
    guests = [*default_guests(count=3),
              Guest(name="stopped1", uuid="11111111-1111-1111-1111-000000000099", running=False)]
    write_node_xml(tmp_path / "node.xml", guests)
    return World(netns, tmp_key, guests, tmp_path)


DaemonStarter = Callable[..., object]


@pytest.fixture
def start_daemon(world: World) -> Iterator[DaemonStarter]:
    """start_daemon(impl, listener='multicast', family='ipv4', hash='sha256', auth='sha256')."""
    running: list[OurDaemon | CDaemon] = []

    def start(impl: str, listener: str = "multicast", family: str = "ipv4",
              hash_name: str = "sha256", auth: str = "sha256") -> object:
        uri = node_uri(world.tmp / "node.xml")
        port = TCP_PORT if listener == "tcp" else 1229
        address = None
        if listener == "tcp":
            address = "::1" if family == "ipv6" else "127.0.0.1"
        conf = world.tmp / f"{impl}-{listener}.conf"
        daemon: OurDaemon | CDaemon
        if impl == "ours":
            conf.write_text(daemon_config_text(
                str(world.key), [uri], listener=listener, port=port, family=family,
                address=address, hash_name=hash_name, auth=auth,
                interface="lo" if listener == "multicast" else None))
            conf.chmod(0o600)
            daemon = OurDaemon(conf, namespace=world.ns)
            daemon.start()
        else:
            cfg = write_c_config(conf, listener, world.key, uri, port=port, family=family,
                                 address=address, hash=hash_name, auth=auth,
                                 interface="lo" if listener == "multicast" else None)
            daemon = CDaemon(cfg, world.ns)
            daemon.start()
        running.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for d in running:
            d.stop()


PAIRINGS = [("c", "ours"), ("ours", "c"), ("ours", "ours")]


@pytest.mark.parametrize(("client", "daemon"), PAIRINGS)
def test_multicast_power_cycle(world: World, start_daemon: DaemonStarter, client: str,
                               daemon: str) -> None:
    start_daemon(daemon)
    k = ("-k", str(world.key))
    listed = world.agent(client, "fence_xvm", *k, "-o", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["guest1", "guest2", "guest3", "stopped1"]
    assert lines[0] == f"{'guest1':<32} 11111111-1111-1111-1111-000000000001 on"
    assert lines[3].endswith(" off")

    def status(vm: str) -> tuple[int, str]:
        r = world.agent(client, "fence_xvm", *k, "-o", "status", "-H", vm)
        return r.returncode, r.stdout.strip()

    assert status("guest1") == (0, "Status: ON")
    assert world.agent(client, "fence_xvm", *k, "-o", "off", "-H", "guest1").returncode == 0
    assert status("guest1") == (2, "Status: OFF")
    assert world.agent(client, "fence_xvm", *k, "-o", "off", "-H", "guest1").returncode == 0
    assert world.agent(client, "fence_xvm", *k, "-o", "on", "-H", "guest1").returncode == 0
    assert status("guest1") == (0, "Status: ON")
    assert world.agent(client, "fence_xvm", *k, "-o", "reboot", "-H", "guest2").returncode == 0
    assert status("guest2") == (0, "Status: ON")
    # reboot does not power on a VM that is off, in both implementations
    assert world.agent(client, "fence_xvm", *k, "-o", "reboot", "-H", "stopped1").returncode == 0
    assert status("stopped1") == (2, "Status: OFF")
    # by UUID as well as by name
    assert status("11111111-1111-1111-1111-000000000003") == (0, "Status: ON")
    assert world.agent(client, "fence_xvm", *k, "-o", "monitor").returncode == 0


@pytest.mark.parametrize(("client", "daemon"), PAIRINGS)
def test_multicast_stdin_interface(world: World, start_daemon: DaemonStarter, client: str,
                                   daemon: str) -> None:
    """How Pacemaker calls the agent: no arguments, key=value lines on stdin."""
    start_daemon(daemon)
    exe = C_TOOLS["fence_xvm"] if client == "c" else venv_tool("fence_xvm")
    r = world.ns.run([exe], input=f"action=status\nport=guest3\nkey_file={world.key}\n"
                     "nodename=node3\n", capture_output=True, text=True, timeout=40)
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")


@pytest.mark.parametrize(("client", "daemon"), [("c", "ours"), ("ours", "c")])
@pytest.mark.parametrize("digest", ["none", "sha1", "sha256", "sha512"])
def test_every_hash_type(world: World, start_daemon: DaemonStarter, client: str, daemon: str,
                         digest: str) -> None:
    start_daemon(daemon, hash_name=digest, auth=digest)
    r = world.agent(client, "fence_xvm", "-k", str(world.key), "-c", digest, "-C", digest,
                    "-o", "status", "-H", "guest1", "-t", "10")
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr


@pytest.mark.parametrize("daemon", ["ours", "c"])
def test_weaker_hash_is_refused(world: World, start_daemon: DaemonStarter, daemon: str) -> None:
    start_daemon(daemon, hash_name="sha256")
    r = world.agent("ours", "fence_xvm", "-k", str(world.key), "-c", "sha1",
                    "-o", "off", "-H", "guest1", "-t", "3")
    assert r.returncode == 1
    assert "Timed out waiting for response" in r.stderr
    check = world.agent("ours", "fence_xvm", "-k", str(world.key), "-o", "status", "-H", "guest1")
    assert check.stdout.strip() == "Status: ON"  # nothing was executed


@pytest.mark.parametrize(("client", "daemon"), PAIRINGS)
def test_multicast_ipv6(world: World, start_daemon: DaemonStarter, client: str,
                        daemon: str) -> None:
    start_daemon(daemon, family="ipv6")
    r = world.agent(client, "fence_xvm", "-k", str(world.key), "-i", "ipv6",
                    "-o", "status", "-H", "guest2", "-t", "10")
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stderr


@pytest.mark.parametrize(("client", "daemon"), PAIRINGS)
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_listener(world: World, start_daemon: DaemonStarter, client: str, daemon: str,
                      family: str) -> None:
    start_daemon(daemon, listener="tcp", family=family)
    addr = "::1" if family == "ipv6" else "127.0.0.1"
    base = ("-T", addr, "-p", str(TCP_PORT), "-k", str(world.key))
    r = world.agent(client, "fence_virt", *base, "-o", "list")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4
    assert world.agent(client, "fence_virt", *base, "-o", "off", "-H", "guest3").returncode == 0
    r = world.agent(client, "fence_virt", *base, "-o", "status", "-H", "guest3")
    assert (r.returncode, r.stdout.strip()) == (2, "Status: OFF")
    assert world.agent(client, "fence_virt", *base, "-o", "on", "-H", "guest3").returncode == 0
    r = world.agent(client, "fence_virt", *base, "-o", "status", "-H", "guest3")
    assert (r.returncode, r.stdout.strip()) == (0, "Status: ON")


def test_unknown_vm_is_not_reported_off(world: World, start_daemon: DaemonStarter) -> None:
    """The C daemon answers OFF for a VM it does not have; ours must not."""
    start_daemon("ours", listener="tcp")
    base = ("-T", "127.0.0.1", "-p", str(TCP_PORT), "-k", str(world.key))
    r = world.agent("c", "fence_virt", *base, "-o", "status", "-H", "nosuch")
    assert r.returncode == 1
    assert "Status: OFF" not in r.stdout
    for action in ("off", "reboot", "on"):
        assert world.agent("c", "fence_virt", *base, "-o", action, "-H", "nosuch").returncode == 1


def test_multicast_unknown_vm_stays_silent(world: World, start_daemon: DaemonStarter) -> None:
    """With several hosts on one group only the owner may answer: a non-owner is silent."""
    daemon = start_daemon("ours")
    r = world.agent("ours", "fence_xvm", "-k", str(world.key), "-o", "status", "-H", "nosuch",
                    "-t", "2")
    assert r.returncode == 1
    assert "Timed out waiting for response" in r.stderr
    assert isinstance(daemon, OurDaemon)
    assert daemon.request_lines() == []  # nothing was served, so no request line


def test_groups_acl(world: World, start_daemon: DaemonStarter) -> None:
    uri = node_uri(world.tmp / "node.xml")
    conf = world.tmp / "acl.conf"
    conf.write_text(daemon_config_text(str(world.key), [uri], groups=[
        (["127.0.0.1"], ["guest1"]),
        (["10.9.9.9"], ["guest2"]),
    ]))
    with OurDaemon(conf, namespace=world.ns) as daemon:
        k = ("-k", str(world.key))
        ok = world.agent("c", "fence_xvm", *k, "-o", "status", "-H", "guest1")
        assert ok.returncode == 0
        denied = world.agent("c", "fence_xvm", *k, "-o", "off", "-H", "guest2")
        assert denied.returncode == 3
        assert "Permission denied" in denied.stdout + denied.stderr
        listed = world.agent("ours", "fence_xvm", *k, "-o", "list")
        assert [line.split()[0] for line in listed.stdout.splitlines()] == ["guest1"]
        status2 = world.agent("ours", "fence_xvm", *k, "-o", "status", "-H", "guest2")
        assert status2.returncode == 3
        assert any("outcome=denied" in line for line in daemon.request_lines())
