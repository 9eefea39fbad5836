"""fence_virt.conf: real configs, every grammar rule, every error message, and fuzzing."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfence.errors import ConfigError
from guestfence.host.config import (
    BackendConfig,
    Config,
    Group,
    MulticastListenerConfig,
    Node,
    SerialListenerConfig,
    TcpListenerConfig,
    VsockListenerConfig,
    load_config,
    parse_config,
    parse_tree,
)

# /etc/fence_virt.conf as installed by Debian's fence-virtd 4.12.1-1 (tabs and the
# trailing blank after "libvirt {" included).
DEBIAN_CONF = """\
fence_virtd {
\tlistener = "multicast";
\tbackend = "libvirt";
}

listeners {
\tmulticast {
\t\tkey_file = "/etc/fence_virt.key";
\t\taddress = "225.0.0.12";
\t\t# Needed on Fedora systems
\t\tinterface = "virbr0";
\t}
}

backends {
\tlibvirt {\x20
\t\turi = "qemu:///system";
\t}
}

"""

LAB_CONF = """\
fence_virtd {
\tlistener = "multicast";
\tbackend = "libvirt";
}
listeners {
\tmulticast {
\t\tkey_file = "/etc/cluster/fence_xvm.key";
\t\taddress = "225.0.0.12";
\t\tport = "1229";
\t\tfamily = "ipv4";
\t\tinterface = "lo";
\t}
}
backends {
\tlibvirt {
\t\turi = "test:///tmp/node-h1.xml";
\t}
}
"""

LIBVIRT = 'backends { libvirt { uri = "qemu:///system"; } }\n'


def conf(listener: str = "multicast", core: str = "", rest: str = "",
         backends: str = LIBVIRT) -> str:
    """A minimal valid config with extra text spliced in."""
    return (f'fence_virtd {{ listener = "{listener}"; backend = "libvirt"; {core}}}\n'
            f"{backends}{rest}")


def listener_of(text: str) -> object:
    return parse_config(text).listener


# ------------------------------------------------------------ real configs


def test_debian_shipped_config() -> None:
    assert parse_config(DEBIAN_CONF, "/etc/fence_virt.conf") == Config(
        path="/etc/fence_virt.conf",
        listener=MulticastListenerConfig(
            key_file="/etc/fence_virt.key", hash="sha256", auth="sha256", family="ipv4",
            address="225.0.0.12", port=1229, interface="virbr0"),
        backend=BackendConfig(name="libvirt", uris=("qemu:///system",), name_mode="name"),
        groups=(), debug=0, foreground=False, wait_for_init=False, warnings=(),
    )


def test_lab_config(tmp_path: Path) -> None:
    path = tmp_path / "fence_virt.conf"
    path.write_text(LAB_CONF)
    cfg = load_config(str(path))
    assert cfg.path == str(path)
    assert cfg.listener == MulticastListenerConfig(
        key_file="/etc/cluster/fence_xvm.key", hash="sha256", auth="sha256", family="ipv4",
        address="225.0.0.12", port=1229, interface="lo")
    assert cfg.backend == BackendConfig("libvirt", ("test:///tmp/node-h1.xml",), "name")
    assert cfg.warnings == ()


# ---------------------------------------------------------------- grammar


def test_comments_and_hash_inside_names_and_values() -> None:
    tree = parse_tree('# top\na#b = "x # not a comment"; # trailing\n#c = "y";\n', "f")
    assert tree == (Node("a#b", "x # not a comment", 2, ()),)


def test_multi_line_value_keeps_newlines_and_counts_lines() -> None:
    tree = parse_tree('a = "one\ntwo\nthree";\nb = "x";\n', "f")
    assert tree == (Node("a", "one\ntwo\nthree", 1, ()), Node("b", "x", 4, ()))


def test_block_with_value_and_empty_block() -> None:
    tree = parse_tree('group = "web" { ip = "10.0.0.1"; }\nempty { }\nv = "x" { }', "f")
    assert tree == (
        Node("group", "web", 1, (Node("ip", "10.0.0.1", 1, ()),), is_block=True),
        Node("empty", None, 2, (), is_block=True),
        Node("v", "x", 3, (), is_block=True),
    )


def test_tokens_need_no_whitespace() -> None:
    assert parse_tree('a{b="1";c="2";}', "f") == (
        Node("a", None, 1, (Node("b", "1", 1, ()), Node("c", "2", 1, ())), is_block=True),)


def test_keys_and_block_names_are_case_insensitive() -> None:
    text = ('FENCE_VIRTD { Listener = "TCP"; BACKEND = "LibVirt"; }\n'
            'Listeners { Tcp { Port = "4000"; HASH = "SHA512"; } }\n'
            'BACKENDS { LIBVIRT { URI = "qemu:///system"; Uri1 = "test:///default"; } }\n')
    cfg = parse_config(text)
    assert cfg.listener == TcpListenerConfig(
        "/etc/cluster/fence_xvm.key", "sha512", "sha256", "ipv4", "127.0.0.1", 4000)
    assert cfg.backend.uris == ("qemu:///system", "test:///default")
    assert cfg.warnings == ()


def test_last_duplicate_key_wins() -> None:
    cfg = parse_config(conf(rest='listeners { multicast { port = "1"; port = "2"; } }'))
    assert isinstance(cfg.listener, MulticastListenerConfig)
    assert cfg.listener.port == 2


def test_last_duplicate_block_wins_with_warning() -> None:
    cfg = parse_config(conf(rest='listeners { multicast { port = "1"; } }\n'
                                 'listeners { multicast { address = "239.1.1.1"; } }'), "f")
    assert isinstance(cfg.listener, MulticastListenerConfig)
    assert (cfg.listener.port, cfg.listener.address) == (1229, "239.1.1.1")
    assert cfg.warnings == ("f:3: block 'listeners' at top level is ignored: "
                            "the one at line 4 replaces it",)


def test_groups_keep_repeated_ip_and_uuid_in_order() -> None:
    cfg = parse_config(conf(rest="""groups {
        group { name = "a"; ip = "10.0.0.1"; uuid = "u1"; ip = "10.0.0.2"; uuid = "u2"; }
        group { uuid = "u3"; }
        group = "named-by-value" { name = "ignored"; ip = "10.0.0.3"; }
    }"""))
    assert cfg.groups == (
        Group("a", ("10.0.0.1", "10.0.0.2"), ("u1", "u2")),
        Group("unnamed-2", (), ("u3",)),
        Group("named-by-value", ("10.0.0.3",), ()),
    )


def test_defaults() -> None:
    cfg = parse_config(conf())
    assert cfg.listener == MulticastListenerConfig(
        "/etc/cluster/fence_xvm.key", "sha256", "sha256", "ipv4", "225.0.0.12", 1229, None)
    assert (cfg.debug, cfg.foreground, cfg.wait_for_init, cfg.groups) == (0, False, False, ())
    assert listener_of(conf("tcp")) == TcpListenerConfig(
        "/etc/cluster/fence_xvm.key", "sha256", "sha256", "ipv4", "127.0.0.1", 1229)
    assert listener_of(conf("vsock")) == VsockListenerConfig(
        "/etc/cluster/fence_xvm.key", "sha256", "sha256", 1229)
    assert listener_of(conf("serial")) == SerialListenerConfig(
        "/etc/cluster/fence_xvm.key", None, None, "serial")


def test_ipv6_defaults() -> None:
    ipv6 = 'listeners { multicast { family = "IPv6"; } tcp { family = "ipv6"; } }'
    mcast = listener_of(conf(rest=ipv6))
    tcp = listener_of(conf("tcp", rest=ipv6))
    assert isinstance(mcast, MulticastListenerConfig) and isinstance(tcp, TcpListenerConfig)
    assert (mcast.family, mcast.address, tcp.family, tcp.address) == (
        "ipv6", "ff05::3:1", "ipv6", "::1")


def test_core_settings() -> None:
    cfg = parse_config(conf(core='debug = "3"; foreground = "1"; wait_for_init = "1"; '
                                 'module_path = "/usr/lib/fence-virt"; '))
    assert (cfg.debug, cfg.foreground, cfg.wait_for_init, cfg.warnings) == (3, True, True, ())
    legacy = parse_config(conf(core='wait_for_init = "0"; wait_for_backend = "1"; '))
    assert legacy.wait_for_init is True


@pytest.mark.parametrize(("mode", "expected"), [
    ("serial", "serial"), ("VMChannel", "vmchannel"), ("0", "serial"), ("1", "vmchannel"),
    ("7", "vmchannel"), ("-1", "serial"),
])
def test_serial_mode(mode: str, expected: Literal["serial", "vmchannel"]) -> None:
    text = conf("serial", rest=f'listeners {{ serial {{ mode = "{mode}"; '
                               'path = "/var/run/fence"; uri = "qemu:///system"; } }')
    assert listener_of(text) == SerialListenerConfig(
        "/etc/cluster/fence_xvm.key", "qemu:///system", "/var/run/fence", expected)


def test_uri_numbering_stops_at_the_first_gap() -> None:
    backends = ('backends { libvirt { uri = "a"; uri1 = "b"; uri2 = "c"; uri4 = "e"; } }\n')
    cfg = parse_config(conf(backends=backends), "f")
    assert cfg.backend.uris == ("a", "b", "c")
    assert cfg.warnings == ("f:2: 'uri4' is ignored because 'uri3' is missing",)


def test_cpg_name_mode_overrides_the_legacy_key() -> None:
    text = ('fence_virtd { listener = "multicast"; backend = "cpg"; name_mode = "uuid"; }\n'
            'backends { cpg { uri = "qemu:///system"; name_mode = "name"; } }')
    assert parse_config(text).backend == BackendConfig("cpg", ("qemu:///system",), "name")
    legacy = text.replace(' name_mode = "name";', "")
    assert parse_config(legacy).backend.name_mode == "uuid"


# ------------------------------------------- deliberate differences from C


def test_tcp_and_vsock_auth_goes_to_auth_not_hash() -> None:
    for name in ("tcp", "vsock"):
        text = conf(name, rest=f'listeners {{ {name} {{ auth = "sha1"; }} }}')
        listener = listener_of(text)
        assert isinstance(listener, TcpListenerConfig | VsockListenerConfig)
        assert (listener.hash, listener.auth) == ("sha256", "sha1")


def test_empty_group_is_skipped_with_a_warning_and_others_kept() -> None:
    cfg = parse_config(conf(rest='groups {\n group { ip = "1.1.1.1"; }\n'
                                 ' group { name = "hollow"; }\n group { ip = "2.2.2.2"; }\n}'),
                       "f")
    assert [g.ips for g in cfg.groups] == [("1.1.1.1",), ("2.2.2.2",)]
    assert cfg.groups[1].name == "unnamed-3"
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith("f:5: group 'hollow' has no ip or uuid keys and is ignored")


def test_unknown_keys_warn_and_historical_backends_do_not() -> None:
    backends = ('backends { libvirt { uri = "qemu:///system"; } checkpoint { uri = "x"; }\n'
                ' null { } pm-fence { a { } } }\n')
    cfg = parse_config(conf(backends=backends, rest='listeners { multicast { prot = "1"; } }\n'
                                                    'extra { }'), "f")
    assert cfg.warnings == (
        "f:4: unknown key 'prot' in listeners/multicast (known: key_file, hash, auth, family, "
        "address, port, interface)",
        "f:5: unknown block 'extra' at top level (known: fence_virtd, listeners, backends, "
        "groups, clusters)",
    )


def test_key_where_a_block_belongs_warns() -> None:
    cfg = parse_config(conf(rest='listeners { tcp = "x"; multicast { port { } } }'), "f")
    assert cfg.warnings == (
        "f:3: 'tcp' in listeners is a key, which fence_virtd ignores; expected a block",
        "f:3: 'port' in listeners/multicast is a block, which fence_virtd ignores; "
        "expected a key",
    )


def test_interface_name_is_kept_unchecked() -> None:
    text = conf(rest='listeners { multicast { interface = "no-such-nic0"; } }')
    listener = listener_of(text)
    assert isinstance(listener, MulticastListenerConfig)
    assert listener.interface == "no-such-nic0"


def test_inactive_listener_blocks_are_not_validated() -> None:
    text = conf(rest='listeners { tcp { port = "0"; } multicast { port = "5000"; } }')
    listener = listener_of(text)
    assert isinstance(listener, MulticastListenerConfig)
    assert listener.port == 5000


# ------------------------------------------------------------------ errors

ERRORS = [
    ("", "f:1: no settings (the file is empty or only comments); expected at least one "
         "block such as fence_virtd { ... }"),
    ("# only\n# comments\n", "f:3: no settings"),
    ('fence_virtd {\n listener = "";\n}', "f:2: empty value \"\" after 'listener ='; "
                                          "expected a double-quoted value"),
    ("fence_virtd {\n listener = multicast;\n}",
     "f:2: unquoted value 'multicast' for key 'listener'; expected a double-quoted string "
     'like listener = "multicast";'),
    ('fence_virtd {\n listener = "multicast"\n backend = "libvirt";\n}',
     "f:2: listener = \"multicast\" followed by 'backend' on line 3; expected ';' after "
     "the value"),
    ('a = "x";\n}\n', "f:2: '}' with no block open; expected a key or block name"),
    ("listeners {\n multicast {\n }\n",
     "f:4: unexpected end of file; expected '}' to close block 'listeners' opened at line 1"),
    ('a { b = "x"; };', "f:1: ';'; expected a key or block name"),
    ('a = "unclosed;\n', "f:1: unterminated string"),
    ("a b;", "f:1: 'b' after 'a'; expected '=' or '{'"),
    ('a = "x";\r\nb = "y";\r\n', "f:2: 'b' after '\\r'; expected '=' or '{' (the file has "
                                  "Windows line endings?)"),
    ('a = "x\0";', "f:1: NUL character; expected text without NUL characters"),
    ("a {" * 65 + "}" * 65, "f:1: block 'a' nested 65 deep; expected at most 64 levels"),
    (conf(rest='listeners {\n multicast {\n port = "99999"; } }'),
     'f:5: port = "99999" in listeners/multicast; expected an integer 1..65535'),
    (conf("tcp", rest='listeners {\n tcp {\n port = "12abc"; } }'),
     'f:5: port = "12abc" in listeners/tcp; expected an integer 1..65535'),
    (conf(rest='listeners {\n multicast {\n hash = "md5"; } }'),
     'f:5: hash = "md5" in listeners/multicast; expected one of none, sha1, sha256, sha512'),
    (conf(rest='listeners {\n multicast {\n auth = "SHA3"; } }'),
     'f:5: auth = "SHA3" in listeners/multicast; expected one of none, sha1, sha256, sha512'),
    (conf(rest='listeners {\n multicast {\n family = "inet"; } }'),
     'f:5: family = "inet" in listeners/multicast; expected one of ipv4, ipv6'),
    (conf("serial", rest='listeners {\n serial {\n mode = "usb"; } }'),
     'f:5: mode = "usb" in listeners/serial; expected serial, vmchannel or a number'),
    (conf(core='debug = "yes"; '), 'f:1: debug = "yes" in fence_virtd; expected an integer'),
    (conf(core='foreground = "on"; '), 'f:1: foreground = "on" in fence_virtd; expected an '
                                        "integer (0 = off, anything else = on)"),
    (conf(core='name_mode = "id"; '), 'f:1: name_mode = "id" in fence_virtd; expected one '
                                       "of name, uuid"),
    ('listeners { }\n', "f: no 'fence_virtd' block; expected fence_virtd { listener = "
                        '"..."; backend = "..."; }'),
    ('fence_virtd = "x";\n', "f: no 'fence_virtd' block"),
    ('\nfence_virtd {\n backend = "libvirt";\n}\n' + LIBVIRT,
     "f:2: no 'listener' key in the fence_virtd block; expected listener = \"multicast\";"),
    ('fence_virtd {\n listener = "tcp";\n}\n' + LIBVIRT,
     "f:1: no 'backend' key in the fence_virtd block; expected backend = \"libvirt\";"),
    ('fence_virtd {\n listener = "udp";\n backend = "libvirt";\n}\n' + LIBVIRT,
     'f:2: listener = "udp" in fence_virtd; expected one of multicast, tcp, vsock, serial'),
    ('fence_virtd {\n listener = "tcp";\n backend = "xen";\n}\n' + LIBVIRT,
     'f:3: backend = "xen" in fence_virtd; expected one of libvirt, cpg'),
    ('fence_virtd {\n listener = "tcp";\n backend = "libvirt";\n}\n',
     'f:3: backend = "libvirt" but no backends/libvirt block; expected backends { libvirt { '
     'uri = "qemu:///system"; } }'),
    ('fence_virtd {\n listener = "tcp";\n backend = "libvirt";\n}\nbackends {\n libvirt {\n'
     ' uri1 = "qemu:///system";\n }\n}\n',
     "f:6: no 'uri' key in backends/libvirt (uri1, uri2, ... are read only after uri); "
     'expected a hypervisor URI such as uri = "qemu:///system";'),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_error_messages(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f")
    assert str(info.value).startswith(message)
    assert re.fullmatch(r"f(:\d+)?: .+; expected .+", str(info.value), re.DOTALL)


def test_load_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: cannot read the file (No such")):
        load_config(str(missing))
    latin1 = tmp_path / "latin1.conf"
    latin1.write_bytes(b'a = "x";\nb = "caf\xe9";\n')
    with pytest.raises(ConfigError, match=re.escape(f"{latin1}:2: bytes that are not UTF-8")):
        load_config(str(latin1))


# -------------------------------------------------------------- properties

GRAMMAR_CHARS = st.sampled_from([*'ab_ {};="#\n\t\r\0é', "fence_virtd", "listeners"])


def parse_or_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text, "f")


@settings(max_examples=300)
@given(st.one_of(st.text(), st.lists(GRAMMAR_CHARS, max_size=60).map("".join)))
def test_random_text_raises_only_config_error(text: str) -> None:
    parse_or_config_error(text)


def tokens_of(text: str) -> list[str]:
    return re.findall(r'"[^"]*"|[{};=]|[^\s{};="]+', text)


VALID_TOKENS = tokens_of(LAB_CONF) + tokens_of(
    'groups { group { name = "g"; ip = "1.2.3.4"; uuid = "u"; } }')
EXTRA_TOKENS = ['""', '"', "#", "\n", "{", "}", ";", "=", "tcp", "serial", "cpg", "uri1", "port",
                "hash", "ip", "\0"]
# Swapped in for a quoted value, these keep the syntax valid and reach the typed checks.
EXTRA_VALUES = ['"0"', '"-1"', '"1"', '"99999"', '"ipv6"', '"tcp"', '"vsock"', '"serial"',
                '"cpg"', '"none"', '"SHA1"', '"uuid"', '"x\ny"', '"é"', '"1" { }']


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    tokens = list(VALID_TOKENS)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(tokens)))
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "swap", "swap"]))
        if op == "insert":
            tokens.insert(i, draw(st.sampled_from(EXTRA_TOKENS + VALID_TOKENS)))
        elif op == "swap":
            quoted = [j for j, tok in enumerate(tokens) if tok.startswith('"')]
            if quoted:
                tokens[draw(st.sampled_from(quoted))] = draw(st.sampled_from(EXTRA_VALUES))
        elif tokens and i < len(tokens):
            if op == "delete":
                del tokens[i]
            else:
                tokens.insert(i, tokens[i])
    return " ".join(tokens)


@settings(max_examples=300)
@given(mutated_config())
def test_mutated_config_raises_only_config_error(text: str) -> None:
    parse_or_config_error(text)


NAMES = st.text(st.characters(exclude_characters=' \t\n{};="\0'), min_size=1, max_size=8).filter(
    lambda s: not s.startswith("#"))
VALUES = st.text(st.characters(exclude_characters='"\0'), min_size=1, max_size=12)


def nodes(depth: int = 3) -> st.SearchStrategy[Node]:
    assignment = st.builds(Node, NAMES, VALUES, st.just(0), st.just(()), st.just(False))
    if depth == 0:
        return assignment
    block = st.builds(Node, NAMES, st.none() | VALUES, st.just(0),
                      st.lists(nodes(depth - 1), max_size=3).map(tuple), st.just(True))
    return assignment | block


def render(items: tuple[Node, ...], indent: str = "") -> str:
    out = []
    for node in items:
        head = f'{indent}{node.name}' + ("" if node.value is None else f' = "{node.value}"')
        if node.is_block:
            inner = render(node.children, indent + "\t")
            out.append(f"{head} {{\n{inner}{indent}}}\n")
        else:
            out.append(f"{head};\n")
    return "".join(out)


def without_lines(items: tuple[Node, ...]) -> tuple[Node, ...]:
    return tuple(Node(n.name, n.value, 0, without_lines(n.children), n.is_block) for n in items)


def line_numbers_match(items: tuple[Node, ...], text: str) -> bool:
    """Each node's line is where its name starts in the rendered text."""
    lines = text.split("\n")
    return all(lines[n.line - 1].lstrip("\t").startswith(n.name + (" " if n.is_block or
               n.value is not None else "")) and line_numbers_match(n.children, text)
               for n in items)


@settings(max_examples=200)
@given(st.lists(nodes(), min_size=1, max_size=4).map(tuple))
def test_rendered_trees_parse_back_to_the_same_tree(tree: tuple[Node, ...]) -> None:
    text = render(tree)
    parsed = parse_tree(text, "f")
    assert without_lines(parsed) == tree
    assert line_numbers_match(parsed, text)


def test_groups_block_without_usable_group_fails_closed() -> None:
    """Review finding: a typo ("ips") must not turn the access map off."""
    text = LAB_CONF + 'groups {\n\tgroup {\n\t\tips = "10.0.0.1";\n\t}\n}\n'
    with pytest.raises(ConfigError, match="groups block without any usable group"):
        parse_config(text, "f.conf")
