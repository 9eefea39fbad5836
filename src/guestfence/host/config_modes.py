"""fence_virt.conf blocks of guestfence's tracked host modes (static, cpg, multi-libvirt).

These backends do not exist in fence_virtd; the blocks follow its syntax::

    fence_virtd { backend = "static"; ... }
    backends {
        static {
            uri = "qemu:///system";          # this host's libvirt
            host_name = "host1";             # default: the short hostname (at start-up)
            map {                            # host = "guests (names or UUIDs)";
                host1 = "vm1 vm2";
                host2 = "vm3";
            }
        }
        multi-libvirt {
            host_name = "host1";             # unset: one daemon answering for all hosts
            hosts {
                host1 = "qemu+tls://host1.example.com/system";
                host2 = "qemu+ssh://root@host2.example.com/system";
            }
        }
        cpg {
            uri = "qemu:///system";
            host_name = "host1";             # default: the short hostname
            group = "guestfence";            # never the C daemon's "fence-agents"
            fenced_confirm = "stonith-history";   # or "command" with:
            confirm_command = "/usr/local/bin/host-fenced {host}";   # exit 0 = fenced
        }
    }

Guests in a map value are separated by blanks or commas. Every problem is a
ConfigError "file:line: what was found; expected what".
"""

from __future__ import annotations

import dataclasses
import re
import socket
from typing import TYPE_CHECKING

from guestfence.host.config import (
    CPG_GROUP_OF_C,
    BackendConfig,
    FencedConfirm,
    NameMode,
    Node,
    _fail,
    _find,
    _short,
    _text,
)

if TYPE_CHECKING:
    from guestfence.host.config import _Builder

_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
_GUEST_SPLIT = re.compile(r"[\s,]+")
CPG_NAME_MAX = 128  # struct cpg_name value[128]


def short_hostname() -> str:
    """This machine's host name without its domain: the default ``host_name``."""
    return socket.gethostname().split(".")[0]


def _host_name(b: _Builder, block: Node | None, where: str, default: str | None) -> str | None:
    node = b.get(block, "host_name")
    if node is None:
        return default
    if not _HOST_NAME.fullmatch(_text(node)):
        b.bad(node, where, "a host name (letters, digits, '.', '-', '_'; at most 63)")
    return _text(node)


def _entries(b: _Builder, block: Node, where: str) -> list[Node]:
    """The ``key = "value";`` children of a map or hosts block; nested blocks are errors."""
    out: list[Node] = []
    for child in block.children:
        if child.is_block:
            _fail(b.path, child.line, f"block {child.name!r} in {where}",
                  f'entries like {child.name} = "...";')
        if not _HOST_NAME.fullmatch(child.name):
            _fail(b.path, child.line, f"host name {_short(child.name)!r} in {where}",
                  "a host name (letters, digits, '.', '-', '_'; at most 63)")
        out.append(child)
    return out


def tracked_static(b: _Builder, block: Node | None, base: BackendConfig) -> BackendConfig:
    where = "backends/static"
    assert block is not None  # backend() requires the block before it gets here
    me = _host_name(b, block, where, None)  # None: the short hostname, at start-up
    map_block = _find(block.children, "map", block=True)
    if map_block is None:
        _fail(b.path, block.line, "no 'map' block in backends/static",
              'map { host1 = "vm1 vm2"; host2 = "vm3"; } (which host runs which guests)')
    hosts: dict[str, list[str]] = {}
    first_seen: dict[str, tuple[str, int]] = {}  # guest key -> (host, line)
    for entry in _entries(b, map_block, f"{where}/map"):
        guests = [g for g in _GUEST_SPLIT.split(_text(entry)) if g]
        if not guests:
            b.bad(entry, f"{where}/map", "guest names or UUIDs separated by blanks or commas")
        host = next((h for h in hosts if h.casefold() == entry.name.casefold()), entry.name)
        for guest in guests:
            key = guest.casefold()
            seen = first_seen.get(key)
            if seen is not None and seen[0] != host:
                _fail(b.path, entry.line, f"guest {guest!r} mapped to {host} and to {seen[0]} "
                      f"(line {seen[1]})", "each guest under one host")
            first_seen.setdefault(key, (host, entry.line))
            if guest not in hosts.setdefault(host, []):
                hosts[host].append(guest)
    if not hosts:
        _fail(b.path, map_block.line, "an empty map in backends/static",
              'at least one entry such as host1 = "vm1 vm2";')
    me_or_default = me or short_hostname()
    if not any(h.casefold() == me_or_default.casefold() for h in hosts):
        b.warn(map_block, f"host_name {me_or_default!r} has no entry in the map: this daemon "
               f"acts for no guest (hosts in the map: {', '.join(hosts)})")
    return dataclasses.replace(
        base, host_name=me, static_map=tuple((h, tuple(g)) for h, g in hosts.items()))


def tracked_multi_libvirt(b: _Builder, node: Node, block: Node | None) -> BackendConfig:
    where = "backends/multi-libvirt"
    if block is None:
        _fail(b.path, node.line, 'backend = "multi-libvirt" but no backends/multi-libvirt block',
              'backends { multi-libvirt { hosts { host1 = "qemu+tls://host1/system"; } } }')
    hosts_block = _find(block.children, "hosts", block=True)
    if hosts_block is None:
        _fail(b.path, block.line, "no 'hosts' block in backends/multi-libvirt",
              'hosts { host1 = "qemu+tls://host1/system"; host2 = "qemu+ssh://host2/system"; }')
    hosts: dict[str, tuple[str, int]] = {}
    for entry in _entries(b, hosts_block, f"{where}/hosts"):
        same = next((h for h in hosts if h.casefold() == entry.name.casefold()), None)
        if same is not None:
            _fail(b.path, entry.line, f"host {entry.name!r} listed twice (first at line "
                  f"{hosts[same][1]})", "each host once")
        if "://" not in _text(entry):
            b.bad(entry, f"{where}/hosts", "a libvirt URI such as qemu+tls://host1/system")
        hosts[entry.name] = (_text(entry), entry.line)
    if not hosts:
        _fail(b.path, hosts_block.line, "an empty hosts block in backends/multi-libvirt",
              'at least one entry such as host1 = "qemu+tls://host1/system";')
    me = _host_name(b, block, where, None)
    if me is not None and not any(h.casefold() == me.casefold() for h in hosts):
        named = b.get(block, "host_name")
        assert named is not None
        b.bad(named, where, f"one of the hosts: {', '.join(hosts)}")
    mode: NameMode = b.choice(block, "name_mode", where, {"name": "name", "uuid": "uuid"},
                              "name")
    return BackendConfig("multi-libvirt", tuple(uri for uri, _ in hosts.values()), mode,
                         host_name=me, hosts=tuple((h, uri) for h, (uri, _) in hosts.items()))


def tracked_cpg(b: _Builder, block: Node | None, base: BackendConfig) -> BackendConfig:
    where = "backends/cpg"
    me = _host_name(b, block, where, None)  # None: the short hostname, at start-up
    group = base.group
    node = b.get(block, "group")
    if node is not None:
        group = _text(node)
        if group.casefold() == CPG_GROUP_OF_C:
            b.bad(node, where, "a group of our own such as \"guestfence\" (fence_virtd's "
                  "cpg messages are not ours to speak)")
        if len(group.encode()) > CPG_NAME_MAX:
            b.bad(node, where, f"a group name of at most {CPG_NAME_MAX} bytes")
    command_node = b.get(block, "confirm_command")
    command = None if command_node is None else _text(command_node)
    confirm: FencedConfirm = b.choice(block, "fenced_confirm", where,
                       {"stonith-history": "stonith-history", "command": "command"},
                       "command" if command is not None else "stonith-history")
    if confirm == "command" and command is None:
        node = b.get(block, "fenced_confirm")
        assert node is not None
        b.bad(node, where, 'a confirm_command = "CMD {host}"; next to it (exit 0 = fenced)')
    if command_node is not None and "{host}" not in (command or ""):
        b.bad(command_node, where, 'a command with {host} where the host name goes, such as '
              '"/usr/local/bin/host-fenced {host}"')
    return dataclasses.replace(base, host_name=me, group=group, fenced_confirm=confirm,
                               confirm_command=command)
