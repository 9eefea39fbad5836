"""`guestfenced --configure`: the role of `fence_virtd -c`, in three layers.

1. What the machine suggests (`detect`): interfaces, the default-route
   interface, whether libvirt's socket exists, and the values of an existing
   configuration, which win over everything else.
2. The pure part (`questions`, `Answers`, `config_text`): each question has a
   default and a validator that either returns the normalised answer or
   raises ValueError with a message saying what is expected; `config_text`
   turns the answers (and the existing file's tree, so that groups, keys and
   any other block survive) into fence_virt.conf text.
3. The conversation (`configure_prompt.run_configure`): asking, re-asking,
   confirming, writing atomically.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from guestfence.host.config import DEFAULT_KEY_FILE, DEFAULT_PORT, Node, parse_config
from guestfence.host.config_writer import find_block, get_key, render_tree, set_key

LISTENERS = ("multicast", "tcp", "vsock", "serial")
BACKENDS = ("libvirt", "cpg")
DEFAULT_URI = "qemu:///system"
LIBVIRT_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")
_MULTICAST_DEFAULT = {"ipv4": "225.0.0.12", "ipv6": "ff05::3:1"}
_TCP_DEFAULT = {"ipv4": "127.0.0.1", "ipv6": "::1"}
_IFNAME = re.compile(r"[^\s/:\"]{1,15}")  # the kernel's IFNAMSIZ and forbidden characters
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\"]*")


@dataclass(frozen=True)
class Answers:
    """Everything the wizard decides; the field names are the question keys."""

    listener: str = "multicast"
    address: str = _MULTICAST_DEFAULT["ipv4"]
    port: str = str(DEFAULT_PORT)
    interface: str = "none"
    key_file: str = DEFAULT_KEY_FILE
    serial_path: str = "none"
    serial_mode: str = "serial"
    backend: str = "libvirt"
    uri: str = DEFAULT_URI
    name_mode: str = "name"


@dataclass(frozen=True)
class Detected:
    """What the machine and an existing configuration suggest."""

    interfaces: tuple[str, ...] = ()
    default_route_interface: str | None = None
    libvirt_socket: str | None = None
    existing: tuple[Node, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Question:
    key: str
    prompt: str
    explain: str
    default: Callable[[Answers], str]
    validate: Callable[[str, Answers], str]
    asked: Callable[[Answers], bool] = lambda answers: True


# ------------------------------------------------------------- detection


def default_route_interface(route_table: str) -> str | None:
    """The interface of the IPv4 default route in /proc/net/route text."""
    for line in route_table.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            return cols[0]
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def detect(existing: tuple[Node, ...] = (), *, sys_class_net: str = "/sys/class/net",
           proc_route: str = "/proc/net/route",
           libvirt_sockets: Sequence[str] = LIBVIRT_SOCKETS) -> Detected:
    try:
        interfaces = tuple(sorted(n for n in os.listdir(sys_class_net) if n != "lo"))
    except OSError:
        interfaces = ()
    socket_path = next((p for p in libvirt_sockets if os.path.exists(p)), None)
    notes = [] if socket_path else [
        f"libvirt does not seem to run here (none of {', '.join(libvirt_sockets)} exists); "
        f"the URI {DEFAULT_URI} is proposed anyway"]
    return Detected(interfaces, default_route_interface(_read(proc_route)), socket_path,
                    existing, tuple(notes))


# ------------------------------------------------------------- defaults


def _existing(detected: Detected, answers: Answers, key: str, where: str = "") -> str | None:
    """A value of the existing file, read where the reader would read it."""
    if where == "listener":
        return get_key(detected.existing, ("listeners", answers.listener), key)
    if where == "backend":
        return get_key(detected.existing, ("backends", answers.backend), key)
    return get_key(detected.existing, ("fence_virtd",), key)


def _family(detected: Detected, answers: Answers) -> str:
    family = (_existing(detected, answers, "family", "listener") or "ipv4").lower()
    return family if family in _MULTICAST_DEFAULT else "ipv4"


def _default_interface(detected: Detected, answers: Answers) -> str:
    if find_block(detected.existing, ("listeners", "multicast")) is not None:
        # an existing multicast block without an interface means "any": keep that
        return _existing(detected, answers, "interface", "listener") or "none"
    if "virbr0" in detected.interfaces:  # guests on libvirt's default NAT network
        return "virbr0"
    return detected.default_route_interface or "none"


def _default_address(detected: Detected, answers: Answers) -> str:
    table = _MULTICAST_DEFAULT if answers.listener == "multicast" else _TCP_DEFAULT
    return (_existing(detected, answers, "address", "listener")
            or table[_family(detected, answers)])


# ------------------------------------------------------------- validation


def _one_of(choices: Sequence[str]) -> Callable[[str, Answers], str]:
    def validate(text: str, answers: Answers) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text.strip()!r} is not one of: {', '.join(choices)}")
        return value
    return validate


def _address(text: str, answers: Answers) -> str:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an IPv4 or IPv6 address") from None
    if answers.listener == "multicast" and not address.is_multicast:
        raise ValueError(f"{address} is not a multicast address (IPv4 224.0.0.0/4, IPv6 ff00::/8;"
                         " fence_xvm's default is 225.0.0.12)")
    return str(address)


def _port(text: str, answers: Answers) -> str:
    highest = 0xFFFFFFFE if answers.listener == "vsock" else 65535
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= highest:
        raise ValueError(f"{value!r} is not a port number 1..{highest}")
    return str(int(value))


def _interface_check(interfaces: tuple[str, ...]) -> Callable[[str, Answers], str]:
    def validate(text: str, answers: Answers) -> str:
        value = text.strip()
        if value.lower() in ("none", "any"):
            return "none"
        if not _IFNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an interface name (at most 15 characters, "
                             "no spaces, '/' or ':')")
        if interfaces and value not in interfaces:
            raise ValueError(f"there is no interface {value!r} here (there are: "
                             f"{', '.join(interfaces)}; or none for all interfaces)")
        return value
    return validate


def _path(what: str, *, optional: bool = False) -> Callable[[str, Answers], str]:
    def validate(text: str, answers: Answers) -> str:
        value = text.strip()
        if optional and value.lower() == "none":
            return "none"
        if not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path; expected the {what} "
                             "starting with '/'" + (" (or none)" if optional else ""))
        if os.path.isdir(value) and not optional:
            raise ValueError(f"{value} is a directory; expected the {what}")
        if '"' in value:
            raise ValueError(f"{value!r} contains a double quote, which fence_virt.conf "
                             "cannot express")
        return os.path.normpath(value)
    return validate


def _uri(text: str, answers: Answers) -> str:
    value = text.strip()
    if not _URI.fullmatch(value):
        raise ValueError(f"{value!r} is not a libvirt URI such as {DEFAULT_URI}, "
                         "qemu+ssh://root@host/system or test:///default")
    return value


def questions(detected: Detected) -> list[Question]:
    """The questions, in order; `asked` skips those that do not apply to the listener."""
    def listener_is(*names: str) -> Callable[[Answers], bool]:
        return lambda answers: answers.listener in names

    return [
        Question("listener", "Listener", "multicast: fence_xvm from the guests; tcp, vsock, "
                 "serial: fence_virt -T, -S, -D.",
                 lambda a: _existing(detected, a, "listener") or "multicast",
                 _one_of(LISTENERS)),
        Question("address", "Address", "multicast: the group to join; tcp: the address to "
                 "listen on (an IPv6 address selects IPv6).",
                 lambda a: _default_address(detected, a), _address,
                 listener_is("multicast", "tcp")),
        Question("port", "Port", "", lambda a: _existing(detected, a, "port", "listener")
                 or str(DEFAULT_PORT), _port, listener_is("multicast", "tcp", "vsock")),
        Question("interface", "Interface", "Listen on this interface only (needed when the "
                 "guests use this host as their gateway, typically virbr0); none = all.",
                 lambda a: _default_interface(detected, a),
                 _interface_check(detected.interfaces), listener_is("multicast")),
        Question("key_file", "Key file", "The shared key the guests sign requests with.",
                 lambda a: _existing(detected, a, "key_file", "listener") or DEFAULT_KEY_FILE,
                 _path("key file"), listener_is("multicast", "tcp", "vsock")),
        Question("serial_path", "Socket directory", "Serve only VM channels whose socket is "
                 "in this directory; none = all.",
                 lambda a: _existing(detected, a, "path", "listener") or "none",
                 _path("socket directory", optional=True), listener_is("serial")),
        Question("serial_mode", "Serial mode", "serial or vmchannel (as the guests' "
                 "fence_virt is set up).",
                 lambda a: _existing(detected, a, "mode", "listener") or "serial",
                 _one_of(("serial", "vmchannel")), listener_is("serial")),
        Question("backend", "Backend", "libvirt: this host's hypervisor; cpg: libvirt plus a "
                 "corosync host cluster.",
                 lambda a: _existing(detected, a, "backend") or "libvirt", _one_of(BACKENDS)),
        Question("uri", "Libvirt URI", "", lambda a: _existing(detected, a, "uri", "backend")
                 or DEFAULT_URI, _uri),
        Question("name_mode", "Track VMs by", "name or uuid (uuid when VM names may repeat "
                 "across hosts).",
                 lambda a: _existing(detected, a, "name_mode", "backend") or "name",
                 _one_of(("name", "uuid")), lambda a: a.backend == "cpg"),
    ]


def answer(question: Question, text: str, answers: Answers) -> Answers:
    """`answers` with `question` answered by `text` (blank = the default); ValueError if bad."""
    value = text.strip() or question.default(answers)
    return replace(answers, **{question.key: question.validate(value, answers)})


def defaults(detected: Detected) -> Answers:
    """Every question answered with its default."""
    answers = Answers()
    for question in questions(detected):
        if question.asked(answers):
            answers = answer(question, "", answers)
    return answers


# ------------------------------------------------------------- answers -> text


def _optional(value: str) -> str | None:
    return None if value == "none" else value


def config_text(answers: Answers, existing: Sequence[Node] = ()) -> str:
    """fence_virt.conf text: `existing` (parsed) with the answers set; other blocks kept."""
    tree = tuple(existing)
    tree = set_key(tree, ("fence_virtd",), "listener", answers.listener)
    tree = set_key(tree, ("fence_virtd",), "backend", answers.backend)
    listener = ("listeners", answers.listener)
    if answers.listener == "serial":
        tree = set_key(tree, listener, "path", _optional(answers.serial_path))
        tree = set_key(tree, listener, "mode", answers.serial_mode)
    else:
        tree = set_key(tree, listener, "key_file", answers.key_file)
        tree = set_key(tree, listener, "port", answers.port)
    if answers.listener in ("multicast", "tcp"):
        family = "ipv6" if ":" in answers.address else "ipv4"
        tree = set_key(tree, listener, "family", family)
        tree = set_key(tree, listener, "address", answers.address)
    if answers.listener == "multicast":
        tree = set_key(tree, listener, "interface", _optional(answers.interface))
    backend = ("backends", answers.backend)
    tree = set_key(tree, backend, "uri", answers.uri)
    if answers.backend == "cpg":
        tree = set_key(tree, backend, "name_mode", answers.name_mode)
    text = "# written by guestfenced --configure\n" + render_tree(tree)
    parse_config(text, "<generated configuration>")  # never write what we could not read back
    return text
