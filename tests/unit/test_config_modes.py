"""fence_virt.conf blocks of the tracked host modes: static, multi-libvirt, cpg."""

from __future__ import annotations

import pytest

from guestfence.errors import ConfigError
from guestfence.host.config import parse_config

HEAD = 'fence_virtd {{ listener = "multicast"; backend = "{backend}"; }}\n'


def conf(backend: str, body: str) -> str:
    return HEAD.format(backend=backend) + "backends {\n" + body + "\n}\n"


STATIC = """\tstatic {
\t\turi = "qemu:///system";
\t\thost_name = "host1";
\t\tmap {
\t\t\thost1 = "vm1 vm2, 6f1c1e0a-2b4d-4c1e-9f00-000000000001";
\t\t\thost2 = "vm3";
\t\t}
\t}"""


def test_static_map_is_read_in_file_order() -> None:
    b = parse_config(conf("static", STATIC), "f").backend
    assert b.name == "static" and b.uris == ("qemu:///system",) and b.host_name == "host1"
    assert b.static_map == (("host1", ("vm1", "vm2", "6f1c1e0a-2b4d-4c1e-9f00-000000000001")),
                            ("host2", ("vm3",)))


def test_static_guest_under_two_hosts_names_both_lines() -> None:
    body = STATIC.replace('host2 = "vm3";', 'host2 = "vm3 VM1";')
    with pytest.raises(ConfigError, match=r"^f:8: guest 'VM1' mapped to host2 and to host1 "
                       r"\(line 7\); expected each guest under one host"):
        parse_config(conf("static", body), "f")


@pytest.mark.parametrize(("body", "message"), [
    ('\tstatic { uri = "qemu:///system"; }', r"^f:3: no 'map' block in backends/static"),
    ('\tstatic { uri = "qemu:///system"; map { } }', r"^f:3: an empty map"),
    ('\tstatic { uri = "qemu:///system"; map { h1 = ","; } }',
     r'^f:3: h1 = "," in backends/static/map; expected guest names'),
    ('\tstatic { uri = "qemu:///system"; map { h1 { } } }', r"^f:3: block 'h1' in"),
    ('\tstatic { uri = "qemu:///system"; map { h/1 = "vm1"; } }', r"^f:3: host name 'h/1'"),
    ('\tstatic { map { h1 = "vm1"; } }', r"^f:3: no 'uri' key in backends/static"),
])
def test_static_bad_entries_name_file_and_line(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(conf("static", body), "f")


def test_static_host_without_entry_warns() -> None:
    c = parse_config(conf("static", STATIC.replace('"host1";', '"host9";', 1)), "f")
    assert any("host_name 'host9' has no entry in the map" in w for w in c.warnings)


MULTI = """\tmulti-libvirt {
\t\thost_name = "host2";
\t\thosts {
\t\t\thost1 = "qemu+tcp://10.0.0.1/system";
\t\t\thost2 = "qemu+ssh://root@10.0.0.2/system";
\t\t}
\t}"""


def test_multi_libvirt_hosts() -> None:
    b = parse_config(conf("multi-libvirt", MULTI), "f").backend
    assert b.name == "multi-libvirt" and b.host_name == "host2"
    assert b.hosts == (("host1", "qemu+tcp://10.0.0.1/system"),
                       ("host2", "qemu+ssh://root@10.0.0.2/system"))
    assert b.uris == ("qemu+tcp://10.0.0.1/system", "qemu+ssh://root@10.0.0.2/system")
    no_name = parse_config(conf("multi-libvirt", MULTI.replace('\t\thost_name = "host2";\n', "")))
    assert no_name.backend.host_name is None  # one management daemon


@pytest.mark.parametrize(("body", "message"), [
    (MULTI.replace('"host2";', '"host7";', 1), r'^f:4: host_name = "host7" in '
     r"backends/multi-libvirt; expected one of the hosts: host1, host2"),
    (MULTI.replace("host2 = ", "HOST1 = "), r"^f:7: host 'HOST1' listed twice \(first at line 6"),
    (MULTI.replace('"qemu+tcp://10.0.0.1/system"', '"10.0.0.1"'),
     r"^f:6: host1 = \"10.0.0.1\" .*a libvirt URI"),
    ('\tmulti-libvirt { host_name = "a"; }', r"^f:3: no 'hosts' block"),
    ('\tmulti-libvirt { hosts { } }', r"^f:3: an empty hosts block"),
])
def test_multi_libvirt_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(conf("multi-libvirt", body), "f")


def test_multi_libvirt_without_block() -> None:
    with pytest.raises(ConfigError, match=r'^f:1: backend = "multi-libvirt" but no '):
        parse_config(HEAD.format(backend="multi-libvirt"), "f")


def test_cpg_keys_and_defaults() -> None:
    b = parse_config(conf("cpg", '\tcpg { uri = "qemu:///system"; }'), "f").backend
    assert (b.group, b.fenced_confirm, b.confirm_command, b.host_name) == (
        "guestfence", "stonith-history", None, None)
    text = conf("cpg", '\tcpg { uri = "qemu:///system"; host_name = "h1"; '
                       'group = "gf2"; confirm_command = "/bin/ok {host}"; }')
    b = parse_config(text, "f").backend
    assert (b.group, b.fenced_confirm, b.confirm_command, b.host_name) == (
        "gf2", "command", "/bin/ok {host}", "h1")


@pytest.mark.parametrize(("body", "message"), [
    ('group = "fence-agents";', r"expected a group of our own"),
    ('fenced_confirm = "command";', r"expected a confirm_command"),
    ('confirm_command = "/bin/true";', r"expected a command with \{host\}"),
    ('fenced_confirm = "maybe";', r"expected one of stonith-history, command"),
])
def test_cpg_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^f:3: .*" + message):
        parse_config(conf("cpg", '\tcpg { uri = "qemu:///system"; ' + body + " }"), "f")
