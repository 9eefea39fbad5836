"""Node files for libvirt's **test driver** (``test:///path/node.xml``).

A connection to ``test:///ABSOLUTE/PATH`` loads the node described in that
file into memory: its domains are persistent and, unless told otherwise,
running.  Every connection gets its own copy, so a daemon that opens the URI
sees its own guests and can change their state without touching the file.

A domain starts shut off when it carries the test driver's own metadata,
``<test:runstate>5</test:runstate>`` (5 = ``VIR_DOMAIN_SHUTOFF``) in namespace
``http://libvirt.org/schemas/domain/test/1.0``.
"""

from __future__ import annotations

import os
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_SHUTOFF = 5

ET.register_namespace("test", TEST_NS)


@dataclass(frozen=True)
class Guest:
    """One domain of a test-driver node."""

    name: str
    uuid: str
    memory_kib: int = 262144
    vcpus: int = 1
    running: bool = True
    serial_socket: str | None = None
    """Path of a unix socket the domain's serial port 0 binds (``mode='bind'``)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a guest needs a name")
        # Canonical form: libvirt echoes UUIDs lower-case with dashes.
        object.__setattr__(self, "uuid", str(uuidlib.UUID(self.uuid)))
        if self.memory_kib <= 0 or self.vcpus <= 0:
            raise ValueError(f"guest {self.name}: memory and vcpus must be positive")


def default_guests(
    prefix: str = "guest",
    count: int = 3,
    uuid_base: str = "11111111-1111-1111-1111-",
) -> list[Guest]:
    """``guest1..guestN`` with UUIDs ``<uuid_base><12-digit index>``, all running."""
    return [Guest(name=f"{prefix}{i}", uuid=f"{uuid_base}{i:012d}") for i in range(1, count + 1)]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def node_element(guests: list[Guest], cpus: int = 4, memory_kib: int = 8388608) -> ET.Element:
    """The ``<node>`` element describing a host with ``cpus`` CPUs and ``guests``."""
    names = [g.name for g in guests]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate guest names in {names}")
    uuids = [g.uuid for g in guests]
    if len(set(uuids)) != len(uuids):
        raise ValueError("duplicate guest UUIDs")
    if cpus <= 0 or memory_kib <= 0:
        raise ValueError("cpus and memory must be positive")

    node = ET.Element("node")
    cpu = _sub(node, "cpu")
    for tag, value in (
        ("mhz", "2000"),
        ("model", "i686"),
        ("active", str(cpus)),
        ("nodes", "1"),
        ("sockets", "1"),
        ("cores", str(cpus)),
        ("threads", "1"),
    ):
        _sub(cpu, tag, value)
    _sub(node, "memory", str(memory_kib))

    for g in guests:
        dom = _sub(node, "domain", type="test")
        _sub(dom, "name", g.name)
        _sub(dom, "uuid", g.uuid)
        _sub(dom, "memory", str(g.memory_kib))
        _sub(dom, "vcpu", str(g.vcpus))
        os_el = _sub(dom, "os")
        _sub(os_el, "type", "hvm", arch="i686")
        if g.serial_socket is not None:
            devices = _sub(dom, "devices")
            serial = _sub(devices, "serial", type="unix")
            _sub(serial, "source", mode="bind", path=g.serial_socket)
            _sub(serial, "target", port="0")
        if not g.running:
            _sub(dom, f"{{{TEST_NS}}}runstate", str(VIR_DOMAIN_SHUTOFF))
    return node


def node_xml(guests: list[Guest], cpus: int = 4, memory_kib: int = 8388608) -> str:
    """The node file's text."""
    node = node_element(guests, cpus, memory_kib)
    ET.indent(node, space="  ")
    return ET.tostring(node, encoding="unicode") + "\n"


def write_node_xml(
    path: str | os.PathLike[str],
    guests: list[Guest],
    cpus: int = 4,
    memory_kib: int = 8388608,
) -> str:
    """Write the node file to ``path`` and return its ``test:///...`` URI."""
    p = Path(path).resolve()
    p.write_text(node_xml(guests, cpus, memory_kib), encoding="utf-8")
    return node_uri(p)


def node_uri(path: str | os.PathLike[str]) -> str:
    """``test:///abs/path`` for a node file."""
    return "test://" + str(Path(path).resolve())
