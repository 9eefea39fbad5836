"""guestfenced --configure: answers -> fence_virt.conf text, validation, the conversation."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from guestfence.host.config import (
    MulticastListenerConfig,
    SerialListenerConfig,
    TcpListenerConfig,
    load_config,
    parse_tree,
)
from guestfence.host.config_writer import render_tree, set_key
from guestfence.host.configure import (
    Answers,
    Detected,
    answer,
    config_text,
    default_route_interface,
    defaults,
    detect,
    questions,
)
from guestfence.host.configure_prompt import run_configure
from guestfence.host.keys import fingerprint
from guestfence.host.main import main as guestfenced_main

ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
)


def write_and_load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "fence_virt.conf"
    path.write_text(text)
    return load_config(str(path))


def test_default_answers_round_trip_through_the_reader(tmp_path: Path) -> None:
    detected = Detected(interfaces=("eth0", "virbr0"), default_route_interface="eth0")
    config = write_and_load(tmp_path, config_text(defaults(detected)))
    assert config.listener == MulticastListenerConfig(  # type: ignore[attr-defined]
        key_file="/etc/cluster/fence_xvm.key", hash="sha256", auth="sha256", family="ipv4",
        address="225.0.0.12", port=1229, interface="virbr0")
    assert config.backend.name == "libvirt"  # type: ignore[attr-defined]
    assert config.backend.uris == ("qemu:///system",)  # type: ignore[attr-defined]


def test_default_interface_is_the_default_route_one_without_virbr0() -> None:
    detected = Detected(interfaces=("eth0", "eth1"), default_route_interface="eth0")
    assert defaults(detected).interface == "eth0"
    assert defaults(Detected()).interface == "none"


def test_tcp_on_ipv6_sets_the_family(tmp_path: Path) -> None:
    answers = Answers(listener="tcp", address="::1", port="4444", key_file="/k",
                      uri="test:///default")
    config = write_and_load(tmp_path, config_text(answers))
    assert config.listener == TcpListenerConfig(  # type: ignore[attr-defined]
        key_file="/k", hash="sha256", auth="sha256", family="ipv6", address="::1", port=4444)


def test_serial_and_cpg(tmp_path: Path) -> None:
    answers = Answers(listener="serial", serial_path="none", serial_mode="vmchannel",
                      backend="cpg", uri="qemu:///system", name_mode="uuid")
    config = write_and_load(tmp_path, config_text(answers))
    assert config.listener == SerialListenerConfig(  # type: ignore[attr-defined]
        key_file="/etc/cluster/fence_xvm.key", uri=None, path=None, mode="vmchannel")
    assert config.backend.name_mode == "uuid"  # type: ignore[attr-defined]


EXISTING = """# hand-written
fence_virtd { listener = "tcp"; backend = "libvirt"; module_path = "/usr/lib/fence-virt"; }
listeners {
    multicast { key_file = "/etc/old.key"; interface = "br0"; port = "1229"; port = "1300"; }
    tcp { address = "127.0.0.1"; }
}
backends { libvirt { uri = "qemu:///system"; uri1 = "qemu+ssh://h2/system"; } }
groups { group = "web" { ip = "192.0.2.1"; uuid = "vm1"; } }
"""


def test_existing_blocks_and_keys_survive_and_duplicates_collapse(tmp_path: Path) -> None:
    tree = parse_tree(EXISTING, "old")
    detected = Detected(interfaces=("br0", "eth0"), existing=tree)
    answers = defaults(detected)
    # the existing file's values are the defaults
    assert answers.listener == "tcp" and answers.address == "127.0.0.1"
    answers = answer(next(q for q in questions(detected) if q.key == "listener"), "multicast",
                     answers)
    for q in questions(detected)[1:]:
        if q.asked(answers):
            answers = answer(q, "", answers)
    assert (answers.interface, answers.port, answers.key_file) == ("br0", "1300", "/etc/old.key")
    text = config_text(answers, tree)
    config = write_and_load(tmp_path, text)
    assert config.groups[0].name == "web"  # type: ignore[attr-defined]
    assert config.backend.uris == ("qemu:///system",  # type: ignore[attr-defined]
                                   "qemu+ssh://h2/system")
    assert 'module_path = "/usr/lib/fence-virt";' in text
    assert text.count("port =") == 1
    assert not config.warnings  # type: ignore[attr-defined]


def test_an_existing_multicast_block_without_interface_keeps_listening_on_all() -> None:
    tree = parse_tree('fence_virtd { listener = "multicast"; backend = "libvirt"; }\n'
                      'listeners { multicast { port = "1229"; } }', "old")
    assert defaults(Detected(interfaces=("virbr0",), existing=tree)).interface == "none"


@pytest.mark.parametrize(("key", "text", "message"), [
    ("listener", "udp", "not one of: multicast, tcp, vsock, serial"),
    ("address", "10.0.0.1", "is not a multicast address"),
    ("address", "not-an-ip", "not an IPv4 or IPv6 address"),
    ("port", "0", "not a port number 1..65535"),
    ("port", "70000", "not a port number 1..65535"),
    ("interface", "virbr9", "there is no interface 'virbr9' here"),
    ("interface", "a b", "not an interface name"),
    ("key_file", "relative.key", "not an absolute path"),
    ("key_file", '/etc/a"b', "double quote"),
    ("key_file", "/etc", "is a directory"),
    ("uri", "no uri here", "not a libvirt URI"),
])
def test_bad_answers_are_refused_with_what_is_expected(key: str, text: str,
                                                       message: str) -> None:
    detected = Detected(interfaces=("eth0", "virbr0"))
    question = next(q for q in questions(detected) if q.key == key)
    with pytest.raises(ValueError, match=message):
        answer(question, text, Answers())


def test_vsock_ports_are_32_bit() -> None:
    question = next(q for q in questions(Detected()) if q.key == "port")
    assert answer(question, "4294967294", Answers(listener="vsock")).port == "4294967294"


def test_detection_reads_interfaces_routes_and_the_libvirt_socket(tmp_path: Path) -> None:
    net = tmp_path / "net"
    for name in ("lo", "eth0", "virbr0"):
        (net / name).mkdir(parents=True)
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    sock = tmp_path / "libvirt-sock"
    sock.touch()
    found = detect(sys_class_net=str(net), proc_route=str(routes), libvirt_sockets=[str(sock)])
    assert found.interfaces == ("eth0", "virbr0")
    assert found.default_route_interface == "eth0"
    assert found.libvirt_socket == str(sock) and not found.notes
    missing = detect(sys_class_net=str(net), proc_route=str(routes),
                     libvirt_sockets=[str(tmp_path / "nothing")])
    assert "libvirt does not seem to run here" in missing.notes[0]
    assert default_route_interface(ROUTES.splitlines()[0]) is None


def test_writer_refuses_values_the_format_cannot_hold() -> None:
    from guestfence.errors import ConfigError

    with pytest.raises(ConfigError, match="double quote"):
        set_key((), ("a",), "b", 'x"y')
    with pytest.raises(ConfigError, match="empty value"):
        set_key((), ("a",), "b", "")
    tree = set_key(parse_tree('a { b = "1"; c = "2"; }', "t"), ("a",), "b", None)
    assert render_tree(tree) == 'a {\n\tc = "2";\n}\n\n'


# ------------------------------------------------------------- the conversation


def asker(lines: list[str], prompts: list[str]) -> Callable[[str], str | None]:
    it = iter(lines)

    def ask(prompt: str) -> str | None:
        prompts.append(prompt)
        return next(it, None)
    return ask


def key_path(tmp_path: Path) -> str:
    return str(tmp_path / "keys" / "fence_xvm.key")


def test_conversation_reasks_then_writes_atomically_with_a_backup_and_a_key(
        tmp_path: Path) -> None:
    conf = tmp_path / "fence_virt.conf"
    conf.write_text(EXISTING)
    prompts: list[str] = []
    out = io.StringIO()
    lines = ["multicast", "224.0.0.300", "239.1.2.3", "", "none", key_path(tmp_path),
             "", "test:///default", "maybe", "y", "y"]
    assert run_configure(str(conf), ask=asker(lines, prompts), out=out, err=out) == 0
    text = out.getvalue()
    assert "'224.0.0.300' is not an IPv4 or IPv6 address. Please try again." in text
    assert "Interface [br0]: " in prompts  # the existing file's value is the default
    assert (tmp_path / "fence_virt.conf.bak").read_text() == EXISTING
    config = load_config(str(conf))
    assert config.listener.address == "239.1.2.3"  # type: ignore[union-attr]
    assert config.listener.interface is None  # type: ignore[union-attr]
    assert config.backend.uris == ("test:///default", "qemu+ssh://h2/system")  # uri1 kept
    assert config.groups[0].name == "web"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    key = Path(key_path(tmp_path))
    assert key.stat().st_size == 4096 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"fingerprint {fingerprint(key.read_bytes())}" in text
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_declining_or_running_out_of_answers_writes_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "fence_virt.conf"
    out = io.StringIO()
    answers = ["", "", "", "none", key_path(tmp_path), "", "test:///default", "n"]
    assert run_configure(str(conf), ask=asker(answers, []), out=out, err=out) == 1
    assert "Nothing was written." in out.getvalue()
    assert run_configure(str(conf), ask=asker(["tcp"], []), out=out, err=out) == 1
    assert "no answer for 'Address' (end of input); nothing was written" in out.getvalue()
    assert os.listdir(tmp_path) == []


def test_guestfenced_configure_defaults_keeps_the_existing_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "fence_virt.conf"
    old = EXISTING.replace("/etc/old.key", key_path(tmp_path)).replace('"tcp"', '"multicast"')
    old = old.replace('interface = "br0";', "")
    conf.write_text(old)
    with pytest.raises(SystemExit) as stop:
        guestfenced_main(["--configure", "--defaults", "-f", str(conf)])
    assert stop.value.code == 0, capsys.readouterr()
    config = load_config(str(conf))
    assert config.listener.port == 1300  # type: ignore[union-attr]
    assert config.listener.interface is None  # type: ignore[union-attr]
    assert Path(key_path(tmp_path)).exists()
    assert (tmp_path / "fence_virt.conf.bak").read_text() == old


def test_defaults_without_configure_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        guestfenced_main(["--defaults"])
    assert stop.value.code == 2
    assert "--defaults goes with --configure" in capsys.readouterr().err
