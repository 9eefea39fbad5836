"""Reader for fence_virtd's configuration file, fence_virt.conf.

It accepts the grammar and keys of the C fence_virtd 4.12.1 in three stages:
a tokenizer, a recursive-descent parser that builds a generic tree of `Node`s
(`parse_tree`), and a builder that turns the tree into frozen dataclasses
(`parse_config`, `load_config`). Every problem is a `ConfigError` whose message
reads "<path>:<line>: <what was found>; expected <what>".

Like the C daemon: keys and block names are case-insensitive; when a key or a
block is repeated the last one wins (an earlier block is then ignored whole,
which we report as a warning); only the active listener's and backend's blocks
are read, so a bad value in an unused block is not an error.

Deliberate differences from the C daemon:

1. The C tcp and vsock listeners store the `auth` key into the hash setting
   (a bug); we store it into `auth`.
2. C stops reading groups at the first group without any ip or uuid, silently
   dropping every group written above it; we skip only the empty group and
   report it in `Config.warnings`.
3. C reads an unknown `interface` name as "any interface"; we keep the name and
   leave it to the listener to resolve it and fail clearly.
4. C ignores unknown keys and blocks; so do we, with a warning such as
   "file:line: unknown key 'x' in listeners/multicast (known: ...)". The
   historical backend sections (checkpoint, libvirt-qmf, pm-fence, null) are
   ignored without a warning.
5. Values are checked: C reads numbers with atoi(), so "yes" becomes 0, and it
   ignores a bad name_mode; we raise. Ports must be 1..65535 (vsock: up to
   4294967294) where C rejects only values <= 0.
6. Line numbers count newlines inside quoted values (C's lexer does not).
7. NUL characters are rejected (C cuts the value short at them), `load_config`
   requires UTF-8, and blocks nest at most 64 deep (keeps recursion bounded).
8. A group's block value (`group = "web" { ... }`) names the group; C means to
   do the same but its lookup reads another group's value. Then the `name` key,
   then "unnamed-N" with N counting groups from 1 in file order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeAlias, TypeVar

from guestfence.errors import ConfigError
from guestfence.host.clusters import ClusterConfig, parse_clusters_block

HashName = Literal["none", "sha1", "sha256", "sha512"]
Family = Literal["ipv4", "ipv6"]
NameMode = Literal["name", "uuid"]

DEFAULT_KEY_FILE = "/etc/cluster/fence_xvm.key"
DEFAULT_PORT = 1229


@dataclass(frozen=True)
class MulticastListenerConfig:
    key_file: str
    hash: HashName
    auth: HashName
    family: Family
    address: str
    port: int
    interface: str | None


@dataclass(frozen=True)
class TcpListenerConfig:
    key_file: str
    hash: HashName
    auth: HashName
    family: Family
    address: str
    port: int


@dataclass(frozen=True)
class VsockListenerConfig:
    key_file: str
    hash: HashName
    auth: HashName
    port: int


@dataclass(frozen=True)
class SerialListenerConfig:
    key_file: str
    uri: str | None
    path: str | None
    mode: Literal["serial", "vmchannel"]


ListenerConfig = (
    MulticastListenerConfig | TcpListenerConfig | VsockListenerConfig | SerialListenerConfig
)


BackendName = Literal["libvirt", "cpg", "static", "multi-libvirt"]
FencedConfirm = Literal["stonith-history", "command"]
CPG_GROUP_DEFAULT = "guestfence"
CPG_GROUP_OF_C = "fence-agents"


@dataclass(frozen=True)
class BackendConfig:
    name: BackendName
    uris: tuple[str, ...]
    name_mode: NameMode
    # guestfence: does a shut-off definition make this host the domain's owner? "yes"
    # suits one host per multicast group; "no" is needed when several hosts share a
    # group and a domain may stay defined (shut off) on a host it migrated away from
    claim_shut_off: bool = True
    # guestfence, the tracked modes (tracking/): this host's name in the map, the CPG
    # group or the hosts block (static and cpg default to the short hostname; None in
    # multi-libvirt: one management daemon that answers for every host)
    host_name: str | None = None
    # cpg: our own group (we do not speak the C cpg messages), how a departed host is
    # confirmed fenced, and the command for fenced_confirm = "command" ("{host}" replaced)
    group: str = CPG_GROUP_DEFAULT
    fenced_confirm: FencedConfirm = "stonith-history"
    confirm_command: str | None = None
    # static: host -> guests (names or UUIDs), in file order
    static_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # multi-libvirt: host -> libvirt URI, in file order
    hosts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Group:
    name: str
    ips: tuple[str, ...]
    uuids: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    path: str
    listener: ListenerConfig
    backend: BackendConfig
    groups: tuple[Group, ...]
    debug: int
    foreground: bool
    wait_for_init: bool
    warnings: tuple[str, ...]
    # guestfence: one key per guest cluster, bound to its guests (host/clusters.py);
    # empty = the listener's single key_file, valid for every guest (fence_virtd's way)
    clusters: tuple[ClusterConfig, ...] = ()
    # guestfence day-2 operations: the admin socket (None: the default path; "off"),
    # the Prometheus endpoint (off unless metrics_port is set) and the log format
    admin_socket: str | None = None
    metrics_address: str = "127.0.0.1"
    metrics_port: int | None = None
    log_format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class Node:
    """One item of the file: `name = "value";` or a block `name [= "value"] { children }`.

    `is_block` tells `a = "v";` from the (rare) empty block with a value, `a = "v" { }`.
    """

    name: str
    value: str | None
    line: int
    children: tuple[Node, ...]
    is_block: bool = False


# ---------------------------------------------------------------- tokenizer

_MAX_DEPTH = 64

# One alternative per flex rule. At a '#' the comment wins (flex prefers the
# longer match), but inside a name '#' is an ordinary character: `a#b` is one
# name. Every character matches some alternative, so the scan never stalls.
_TOKEN_RE = re.compile(
    r"(?P<skip>[ \t]+|#[^\n]*)"
    r"|(?P<newline>\n)"
    r"|(?P<punct>[{};=])"
    r'|(?P<value>"[^"]*"?)'  # a missing closing quote is caught below
    r'|(?P<ident>[^ \t\n{};="]+)'
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident", "value", "eof", or the punctuation character itself
    text: str
    line: int


def _fail(path: str, line: int, found: str, expected: str) -> NoReturn:
    raise ConfigError(f"{path}:{line}: {found}; expected {expected}")


def _short(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "end of file"
    if tok.kind == "value":
        return f'"{_short(tok.text)}"' if tok.text else 'empty value ""'
    if tok.kind == "ident":
        return repr(_short(tok.text))  # repr shows stray control characters such as '\r'
    return f"'{tok.text}'"


def _tokenize(text: str, path: str) -> list[_Token]:
    nul = text.find("\0")
    if nul >= 0:
        _fail(path, text.count("\n", 0, nul) + 1, "NUL character", "text without NUL characters")
    tokens: list[_Token] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # unreachable: the last alternative takes anything else
            _fail(path, line, f"character {text[pos]!r}", "a name, a quoted value or { } ; =")
        kind, tok = m.lastgroup or "", m.group()
        pos = m.end()
        if kind == "newline":
            line += 1
        elif kind == "value":
            if len(tok) < 2 or not tok.endswith('"'):
                _fail(path, line, f"unterminated string {_short(tok)}", "a closing '\"'")
            tokens.append(_Token("value", tok[1:-1], line))
            line += tok.count("\n")
        elif kind != "skip":
            tokens.append(_Token(tok if kind == "punct" else "ident", tok, line))
    tokens.append(_Token("eof", "", line))
    return tokens


# ------------------------------------------------------------------- parser


class _Parser:
    """file := item+ ; item := NAME '=' VALUE ';' | NAME ['=' VALUE] '{' item* '}'."""

    def __init__(self, tokens: list[_Token], path: str) -> None:
        self._tokens, self._pos, self._path = tokens, 0, path

    def _next(self) -> _Token:
        tok = self._tokens[self._pos]
        if tok.kind != "eof":  # the eof token stays put however often it is read
            self._pos += 1
        return tok

    def parse(self) -> tuple[Node, ...]:
        items = self._items(None, 0)
        if not items:
            _fail(self._path, self._tokens[-1].line, "no settings (the file is empty or only "
                  "comments)", "at least one block such as fence_virtd { ... }")
        return items

    def _items(self, opener: _Token | None, depth: int) -> tuple[Node, ...]:
        items: list[Node] = []
        while True:
            tok = self._tokens[self._pos]
            if tok.kind == "eof":
                if opener is None:
                    return tuple(items)
                _fail(self._path, tok.line, "unexpected end of file", f"'}}' to close block "
                      f"{opener.text!r} opened at line {opener.line}")
            if tok.kind == "}":
                self._next()
                if opener is None:
                    _fail(self._path, tok.line, "'}' with no block open", "a key or block name")
                return tuple(items)
            items.append(self._item(depth))

    def _item(self, depth: int) -> Node:
        name = self._next()
        if name.kind != "ident":
            _fail(self._path, name.line, _describe(name), "a key or block name")
        tok = self._next()
        if tok.kind == "{":
            return self._block(name, None, depth)
        if tok.kind != "=":
            hint = " (the file has Windows line endings?)" if "\r" in name.text + tok.text else ""
            _fail(self._path, tok.line, f"{_describe(tok)} after {name.text!r}",
                  f"'=' or '{{'{hint}")
        value = self._next()
        if value.kind == "ident":
            _fail(self._path, value.line, f"unquoted value {value.text!r} for key {name.text!r}",
                  f'a double-quoted string like {name.text} = "{value.text}";')
        if value.kind != "value" or not value.text:
            _fail(self._path, value.line, f"{_describe(value)} after '{name.text} ='",
                  "a double-quoted value of at least one character")
        end = self._next()
        if end.kind == ";":
            return Node(name.text, value.text, name.line, ())
        if end.kind == "{":
            return self._block(name, value.text, depth)
        where = f" on line {end.line}" if end.line != name.line else ""
        _fail(self._path, name.line, f'{name.text} = "{_short(value.text)}" followed by '
              f"{_describe(end)}{where}", "';' after the value")

    def _block(self, name: _Token, value: str | None, depth: int) -> Node:
        if depth >= _MAX_DEPTH:
            _fail(self._path, name.line, f"block {name.text!r} nested {depth + 1} deep",
                  f"at most {_MAX_DEPTH} levels of blocks")
        return Node(name.text, value, name.line, self._items(name, depth + 1), is_block=True)


def parse_tree(text: str, path: str) -> tuple[Node, ...]:
    """Parse fence_virt.conf text into its top-level items, in file order."""
    return _Parser(_tokenize(text, path), path).parse()


# ------------------------------------------------------------------ builder

_Schema: TypeAlias = dict[str, "_Schema | str"]
_KEY, _OPAQUE = "key", "opaque"  # a plain key; a historical block we never read


def _keys(*names: str) -> _Schema:
    return {name: _KEY for name in names}


_NET_KEYS = ("key_file", "hash", "auth", "family", "address", "port")
# "uriN" stands for uri1, uri2, ...; it is capitalised so no lower-cased name matches it.
_SCHEMA: _Schema = {
    "fence_virtd": _keys("listener", "backend", "module_path", "foreground", "debug",
                         "wait_for_init", "wait_for_backend", "name_mode",
                         # guestfence's day-2 operations (admin socket, metrics, JSON logs)
                         "admin_socket", "metrics_address", "metrics_port", "log_format"),
    "listeners": {
        "multicast": _keys(*_NET_KEYS, "interface"),
        "tcp": _keys(*_NET_KEYS),
        "vsock": _keys("key_file", "hash", "auth", "port"),
        "serial": _keys("key_file", "uri", "path", "mode"),
    },
    "backends": {
        "libvirt": _keys("uri", "uriN", "claim_shut_off"),
        "cpg": _keys("uri", "uriN", "name_mode", "host_name", "group", "fenced_confirm",
                     "confirm_command"),
        # guestfence's tracked modes; their map and hosts blocks are read by tracked_*
        "static": {**_keys("uri", "uriN", "name_mode", "host_name"), "map": _OPAQUE},
        "multi-libvirt": {**_keys("name_mode", "host_name"), "hosts": _OPAQUE},
        **{name: _OPAQUE for name in ("checkpoint", "libvirt-qmf", "pm-fence", "null")},
    },
    "groups": {"group": _keys("name", "ip", "uuid")},
    "clusters": _OPAQUE,  # guestfence's per-cluster keys: checked by host/clusters.py
}
_REPEATABLE_BLOCKS = {"group"}
_URI_N = re.compile(r"uri([1-9][0-9]*)")
_INT = re.compile(r"[+-]?[0-9]{1,12}")  # bounded so int() stays cheap

_HASHES: dict[str, HashName] = {
    "none": "none", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512"}
_FAMILIES: dict[str, Family] = {"ipv4": "ipv4", "ipv6": "ipv6"}
_NAME_MODES: dict[str, NameMode] = {"name": "name", "uuid": "uuid"}
_BACKENDS: dict[str, BackendName] = {
    "libvirt": "libvirt", "cpg": "cpg", "static": "static", "multi-libvirt": "multi-libvirt"}
_SERIAL_MODES: dict[str, Literal["serial", "vmchannel"]] = {
    "serial": "serial", "vmchannel": "vmchannel"}
_LISTENERS = ("multicast", "tcp", "vsock", "serial")
_DEFAULT_ADDRESS = {("multicast", "ipv4"): "225.0.0.12", ("multicast", "ipv6"): "ff05::3:1",
                    ("tcp", "ipv4"): "127.0.0.1", ("tcp", "ipv6"): "::1"}

_T = TypeVar("_T", bound=str)


def _find(nodes: Sequence[Node], name: str, *, block: bool) -> Node | None:
    """The last key (or block) called `name`: the one the C lookup finds."""
    found = None
    for node in nodes:
        if node.is_block == block and node.name.lower() == name:
            found = node
    return found


def _text(node: Node) -> str:
    return node.value or ""


class _Builder:
    def __init__(self, tree: tuple[Node, ...], path: str) -> None:
        self.tree, self.path = tree, path
        self.warnings: list[str] = []

    def warn(self, node: Node, message: str) -> None:
        self.warnings.append(f"{self.path}:{node.line}: {message}")

    def bad(self, node: Node, where: str, expected: str) -> NoReturn:
        _fail(self.path, node.line, f'{node.name} = "{_short(_text(node))}" in {where}', expected)

    def get(self, block: Node | None, key: str) -> Node | None:
        return None if block is None else _find(block.children, key, block=False)

    def text(self, block: Node | None, key: str) -> str | None:
        node = self.get(block, key)
        return None if node is None else _text(node)

    def require(self, block: Node, key: str, example: str) -> Node:
        node = self.get(block, key)
        if node is None:
            _fail(self.path, block.line, f"no {key!r} key in the {block.name} block", example)
        return node

    def choose(self, node: Node, where: str, choices: Mapping[str, _T]) -> _T:
        value = choices.get(_text(node).lower())
        if value is None:
            self.bad(node, where, "one of " + ", ".join(choices))
        return value

    def choice(self, block: Node | None, key: str, where: str,
               choices: Mapping[str, _T], default: _T) -> _T:
        node = self.get(block, key)
        return default if node is None else self.choose(node, where, choices)

    def integer(self, block: Node | None, key: str, where: str, lo: int, hi: int,
                default: int, expected: str = "") -> int:
        node = self.get(block, key)
        if node is None:
            return default
        if not _INT.fullmatch(_text(node)) or not lo <= int(_text(node)) <= hi:
            self.bad(node, where, expected or f"an integer {lo}..{hi}")
        return int(_text(node))

    def flag(self, block: Node, key: str) -> int:
        return self.integer(block, key, block.name, -(2**31), 2**31 - 1, 0,
                            "an integer (0 = off, anything else = on)")

    def check(self, nodes: Sequence[Node], schema: _Schema, where: str) -> None:
        """Warn about what fence_virtd would silently ignore."""
        scope = f"in {where}" if where else "at top level"
        last: dict[str, Node] = {}
        for node in nodes:
            name = node.name.lower()
            spec = schema.get("uriN" if "uriN" in schema and _URI_N.fullmatch(name) else name)
            kind = "block" if node.is_block else "key"
            if spec is None:
                self.warn(node, f"unknown {kind} {node.name!r} {scope} (known: "
                          f"{', '.join(schema)})")
            elif node.is_block != (spec != _KEY):
                self.warn(node, f"{node.name!r} {scope} is a {kind}, which fence_virtd ignores; "
                          f"expected a {'key' if spec == _KEY else 'block'}")
            elif isinstance(spec, dict):
                self.check(node.children, spec, f"{where}/{name}" if where else name)
            if node.is_block and name not in _REPEATABLE_BLOCKS:
                if name in last:
                    earlier = last[name]
                    self.warn(earlier, f"block {earlier.name!r} {scope} is ignored: the one at "
                              f"line {node.line} replaces it")
                last[name] = node

    def build(self) -> Config:
        self.check(self.tree, _SCHEMA, "")
        core = _find(self.tree, "fence_virtd", block=True)
        if core is None:
            raise ConfigError(f"{self.path}: no 'fence_virtd' block; expected "
                              'fence_virtd { listener = "..."; backend = "..."; }')
        listener = self.choose(self.require(
            core, "listener", 'listener = "multicast"; (or tcp, vsock, serial)'),
            "fence_virtd", {n: n for n in _LISTENERS})
        wait = self.flag(core, "wait_for_init") or self.flag(core, "wait_for_backend")
        listener_config = self.listener(listener)
        return Config(
            path=self.path,
            listener=listener_config,
            backend=self.backend(core),
            groups=self.groups(),
            debug=self.integer(core, "debug", "fence_virtd", 0, 2**31 - 1, 0),
            foreground=self.flag(core, "foreground") != 0,
            wait_for_init=wait != 0,
            clusters=self.clusters(listener_config),
            **self.operations(core),
            warnings=tuple(self.warnings),
        )

    def operations(self, core: Node) -> dict[str, Any]:
        """guestfence's admin socket, metrics endpoint and log format (fence_virtd block)."""
        from guestfence.host.admin import socket_path_problem

        settings: dict[str, Any] = {}
        node = self.get(core, "admin_socket")
        if node is not None:
            problem = socket_path_problem(_text(node))
            if problem is not None:
                self.bad(node, "fence_virtd", problem)
            settings["admin_socket"] = _text(node)
        node = self.get(core, "metrics_address")
        if node is not None:
            try:
                settings["metrics_address"] = str(ipaddress.ip_address(_text(node)))
            except ValueError:
                self.bad(node, "fence_virtd", "an IPv4 or IPv6 address such as 127.0.0.1")
        if self.get(core, "metrics_port") is not None:
            settings["metrics_port"] = self.integer(core, "metrics_port", "fence_virtd", 1,
                                                    65535, 0)
        settings["log_format"] = self.choice(core, "log_format", "fence_virtd",
                                             {"text": "text", "json": "json"}, "text")
        return settings

    def clusters(self, listener: ListenerConfig) -> tuple[ClusterConfig, ...]:
        """Per-cluster keys (guestfence); they replace the listener's key_file."""
        top = _find(self.tree, "clusters", block=True)
        if top is None:
            return ()
        clusters = parse_clusters_block(top, self.path)
        if isinstance(listener, SerialListenerConfig):
            return clusters  # no keys on the serial path: the requesting guest's binding
        if listener.hash == "none":
            _fail(self.path, top.line, "per-cluster keys with hash = \"none\" on the listener",
                  'hash = "sha256"; (the signature of a request tells which cluster sent it)')
        block = self.section("listeners", _listener_name(listener))
        key_file = self.get(block, "key_file")
        if key_file is not None:
            self.warn(key_file, "key_file of the listener is not used: the clusters block "
                      "gives one key per cluster")
        return clusters

    def section(self, top: str, name: str) -> Node | None:
        parent = _find(self.tree, top, block=True)
        return None if parent is None else _find(parent.children, name, block=True)

    def listener(self, name: str) -> ListenerConfig:
        block, where = self.section("listeners", name), f"listeners/{name}"
        key_file = self.text(block, "key_file") or DEFAULT_KEY_FILE  # values are never empty
        if name == "serial":
            mode = self.get(block, "mode")
            return SerialListenerConfig(key_file, self.text(block, "uri"), self.text(block, "path"),
                                        "serial" if mode is None else self.serial_mode(mode))
        hash_ = self.choice(block, "hash", where, _HASHES, "sha256")
        auth = self.choice(block, "auth", where, _HASHES, "sha256")
        if name == "vsock":  # vsock ports are 32-bit; 0xFFFFFFFF means "any"
            port = self.integer(block, "port", where, 1, 0xFFFFFFFE, DEFAULT_PORT)
            return VsockListenerConfig(key_file, hash_, auth, port)
        family = self.choice(block, "family", where, _FAMILIES, "ipv4")
        addr = self.text(block, "address") or _DEFAULT_ADDRESS[name, family]
        port = self.integer(block, "port", where, 1, 65535, DEFAULT_PORT)
        if name == "tcp":
            return TcpListenerConfig(key_file, hash_, auth, family, addr, port)
        return MulticastListenerConfig(key_file, hash_, auth, family, addr, port,
                                       self.text(block, "interface"))

    def serial_mode(self, node: Node) -> Literal["serial", "vmchannel"]:
        value = _text(node).lower()
        if value in _SERIAL_MODES:
            return _SERIAL_MODES[value]
        if not _INT.fullmatch(value):
            self.bad(node, "listeners/serial", "serial, vmchannel or a number "
                     "(0 = serial, other = vmchannel)")
        return "vmchannel" if int(value) > 0 else "serial"  # C clamps negatives to 0

    def backend(self, core: Node) -> BackendConfig:
        node = self.require(core, "backend",
                            'backend = "libvirt"; (or cpg, static, multi-libvirt)')
        name = self.choose(node, "fence_virtd", _BACKENDS)
        block = self.section("backends", name)
        if name == "multi-libvirt":
            from guestfence.host.config_modes import tracked_multi_libvirt

            return tracked_multi_libvirt(self, node, block)
        uris: list[str] = []
        key = "uri"  # then uri1, uri2, ...: C stops at the first missing one
        while (uri := self.get(block, key)) is not None:
            uris.append(_text(uri))
            key = f"uri{len(uris)}"
        if block is None:
            _fail(self.path, node.line, f'backend = "{name}" but no backends/{name} block',
                  f'backends {{ {name} {{ uri = "qemu:///system"; }} }}')
        if not uris:
            numbered = any(_URI_N.fullmatch(c.name.lower()) for c in block.children)
            _fail(self.path, block.line, f"no 'uri' key in backends/{name}"
                  + (" (uri1, uri2, ... are read only after uri)" if numbered else ""),
                  'a hypervisor URI such as uri = "qemu:///system"; (there is no default)')
        for child in block.children:
            m = _URI_N.fullmatch(child.name.lower())
            if m and not child.is_block and int(m.group(1)) > len(uris):
                self.warn(child, f"{child.name!r} is ignored because {key!r} is missing")
        mode = self.choice(core, "name_mode", "fence_virtd", _NAME_MODES, "name")
        if name == "cpg":  # the cpg block overrides the legacy fence_virtd key
            mode = self.choice(block, "name_mode", "backends/cpg", _NAME_MODES, mode)
        claim = self.choice(block, "claim_shut_off", f"backends/{name}",
                            {"yes": "yes", "no": "no", "1": "yes", "0": "no"}, "yes")
        config = BackendConfig(name, tuple(uris), mode, claim_shut_off=claim == "yes")
        if name in ("cpg", "static"):  # the tracked modes' own keys (host/config_modes.py)
            from guestfence.host.config_modes import tracked_cpg, tracked_static

            return (tracked_cpg if name == "cpg" else tracked_static)(self, block, config)
        return config

    def groups(self) -> tuple[Group, ...]:
        top = _find(self.tree, "groups", block=True)
        children = top.children if top else ()
        blocks = [n for n in children if n.is_block and n.name.lower() == "group"]
        groups: list[Group] = []
        for index, block in enumerate(blocks, 1):
            ips, uuids = (tuple(_text(c) for c in block.children
                                if not c.is_block and c.name.lower() == key)
                          for key in ("ip", "uuid"))
            name = block.value or self.text(block, "name") or f"unnamed-{index}"
            if ips or uuids:
                groups.append(Group(name, ips, uuids))
            else:
                self.warn(block, f"group {name!r} has no ip or uuid keys and is ignored "
                          "(C fence_virtd would also ignore every group above it)")
        if top is not None and not groups:
            # a groups block means "restrict"; with every group unusable (a typo such as
            # "ips ="), falling back to "allow everything" would fail open
            _fail(self.path, top.line, "a groups block without any usable group",
                  'groups with ip = "..." and uuid = "..." entries, or no groups block at all')
        return tuple(groups)


def _listener_name(listener: ListenerConfig) -> str:
    if isinstance(listener, MulticastListenerConfig):
        return "multicast"
    return "tcp" if isinstance(listener, TcpListenerConfig) else "vsock"


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse fence_virt.conf text; `path` only names the file in messages."""
    return _Builder(parse_tree(text, path), path).build()


def load_config(path: str) -> Config:
    """Read and parse the fence_virt.conf at `path`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{path}: cannot read the file ({reason}); expected a readable "
                          "fence_virt.conf") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: bytes that are not UTF-8; expected UTF-8 text") from None
    return parse_config(text, path)
