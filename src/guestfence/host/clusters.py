"""Guest clusters on one daemon: which key belongs to which cluster, and which guests it may fence.

The ``clusters`` block of fence_virt.conf (a guestfence addition; fence_virtd
ignores unknown blocks) names one key per guest cluster and binds it to that
cluster's guests::

    clusters {
        web {
            key_file = "/etc/guestfence/keys/web.key";
            guests = "web1 web2";            # domain names, exactly
            uuids = "3f0d...";               # domain UUIDs
            pattern = "web-*";               # fnmatch patterns on the domain name
            tag = "web";                     # <guestfence:cluster name="web"/> metadata
            # successor_key_file = "...";    # default: key_file + ".next"
        }
    }

A guest is the cluster's when any of its bindings matches. The list keys take
several values separated by blanks or commas and may be repeated. Mistakes
here would widen or narrow who may fence what, so unknown keys, an empty
binding, a bad UUID or pattern, two clusters with one name or one key file
are errors with file and line, not warnings.
"""

from __future__ import annotations

import fnmatch
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from guestfence.errors import ConfigError
from guestfence.host.keys import successor_path

if TYPE_CHECKING:
    from guestfence.host.config import Node

METADATA_NAMESPACE = "https://guestfence.dev/xmlns/1"
METADATA_ELEMENT = "cluster"  # <guestfence:cluster xmlns:guestfence="..." name="web"/>

_CLUSTER_KEYS = ("key_file", "successor_key_file", "guests", "uuids", "pattern", "tag")
_ALIASES = {"guest": "guests", "uuid": "uuids", "patterns": "pattern", "tags": "tag"}
_SPLIT = re.compile(r"[\s,]+")
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class GuestBinding:
    """The guests one cluster may fence and list."""

    names: frozenset[str] = frozenset()
    uuids: frozenset[str] = frozenset()  # canonical, lower case
    patterns: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()

    @property
    def uses_tags(self) -> bool:
        return bool(self.tags)

    @property
    def empty(self) -> bool:
        return not (self.names or self.uuids or self.patterns or self.tags)

    def matches(self, name: str, uuid: str, tag: str | None = None) -> bool:
        """Names and patterns are case-sensitive (libvirt names are); UUIDs are not."""
        if name in self.names or _canonical(uuid) in self.uuids:
            return True
        if tag is not None and tag in self.tags:
            return True
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    key_file: str
    successor_key_file: str
    binding: GuestBinding
    line: int = 0


def _canonical(text: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        return text.lower()


def parse_metadata_tag(xml: str | None) -> str | None:
    """The cluster name in a ``<guestfence:cluster name="..."/>`` metadata element, if any."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag in (f"{{{METADATA_NAMESPACE}}}{METADATA_ELEMENT}", METADATA_ELEMENT):
            return el.get("name") or None
    return None


def tag_from_domain_xml(xml: str) -> str | None:
    """The guestfence cluster tag inside a whole domain XML (its ``<metadata>`` element)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    metadata = root.find("metadata")
    if metadata is None:
        return None
    el = metadata.find(f"{{{METADATA_NAMESPACE}}}{METADATA_ELEMENT}")
    return None if el is None else (el.get("name") or None)


def clusters_of(clusters: Sequence[ClusterConfig], name: str, uuid: str,
                tag: str | None) -> list[str]:
    """The names of the clusters a guest belongs to (serial requests: who is asking)."""
    return [c.name for c in clusters if c.binding.matches(name, uuid, tag)]


# ------------------------------------------------------------------ config parsing


def _fail(path: str, line: int, found: str, expected: str) -> NoReturn:
    raise ConfigError(f"{path}:{line}: {found}; expected {expected}")


def _values(nodes: Iterable[Node]) -> list[str]:
    return [v for n in nodes for v in _SPLIT.split(n.value or "") if v]


def parse_clusters_block(block: Node, path: str) -> tuple[ClusterConfig, ...]:
    """The clusters of a ``clusters { NAME { ... } ... }`` block, in file order."""
    clusters: list[ClusterConfig] = []
    seen_names: dict[str, int] = {}
    seen_keys: dict[str, tuple[str, int]] = {}
    for node in block.children:
        if not node.is_block:
            _fail(path, node.line, f"key {node.name!r} directly in the clusters block",
                  "one block per guest cluster, such as web { key_file = \"...\"; ... }")
        cluster = _parse_cluster(node, path)
        folded = cluster.name.lower()
        if folded in seen_names:
            _fail(path, node.line, f"a second cluster named {cluster.name!r}",
                  f"unique cluster names (the first is at line {seen_names[folded]})")
        seen_names[folded] = node.line
        for key_path in (cluster.key_file, cluster.successor_key_file):
            if key_path in seen_keys and seen_keys[key_path][0] != cluster.name:
                other, line = seen_keys[key_path]
                _fail(path, node.line, f"key file {key_path} of cluster {cluster.name!r} is "
                      f"also used by cluster {other!r} (line {line})",
                      "one key per cluster: the key tells which cluster is asking")
            seen_keys[key_path] = (cluster.name, node.line)
        clusters.append(cluster)
    if not clusters:
        _fail(path, block.line, "a clusters block without any cluster",
              'clusters { NAME { key_file = "..."; guests = "..."; } }, or no clusters block')
    return tuple(clusters)


def _parse_cluster(block: Node, path: str) -> ClusterConfig:
    name = block.value or block.name
    if not _CLUSTER_NAME.fullmatch(name):
        _fail(path, block.line, f"cluster name {name!r}",
              "letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)")
    by_key: dict[str, list[Node]] = {}
    for child in block.children:
        key = _ALIASES.get(child.name.lower(), child.name.lower())
        if child.is_block or key not in _CLUSTER_KEYS:
            kind = "block" if child.is_block else "key"
            _fail(path, child.line, f"unknown {kind} {child.name!r} in clusters/{name}",
                  "one of " + ", ".join(_CLUSTER_KEYS))
        by_key.setdefault(key, []).append(child)
    for single in ("key_file", "successor_key_file"):
        if len(by_key.get(single, [])) > 1:
            _fail(path, by_key[single][1].line, f"a second {single} in clusters/{name}",
                  f"one {single} per cluster")
    if "key_file" not in by_key:
        _fail(path, block.line, f"no key_file in clusters/{name}",
              f'key_file = "/etc/guestfence/keys/{name}.key"; (create it with '
              f"guestfence keys new /etc/guestfence/keys/{name}.key)")
    key_file = by_key["key_file"][0].value or ""
    successor_nodes = by_key.get("successor_key_file")
    successor = successor_path(key_file, successor_nodes[0].value if successor_nodes else None)
    if successor == key_file:
        _fail(path, successor_nodes[0].line if successor_nodes else block.line,
              f"successor_key_file of clusters/{name} is its key_file",
              "a different file (the key that replaces key_file during a rotation)")
    uuids: set[str] = set()
    for node in by_key.get("uuids", []):
        for text in _values([node]):
            try:
                uuids.add(str(uuidlib.UUID(text)))
            except ValueError:
                _fail(path, node.line, f"uuid {text!r} in clusters/{name}",
                      "a UUID such as 3f0d1c2e-8a4b-4c1d-9e2f-0a1b2c3d4e5f")
    patterns: list[str] = []
    for node in by_key.get("pattern", []):
        for p in _values([node]):
            if not p.strip("*?"):
                _fail(path, node.line, f"pattern {p!r} in clusters/{name} matches every guest",
                      "a pattern naming this cluster's guests, such as web-*")
            patterns.append(p)
    binding = GuestBinding(
        names=frozenset(_values(by_key.get("guests", []))),
        uuids=frozenset(uuids),
        patterns=tuple(patterns),
        tags=frozenset(_values(by_key.get("tag", []))),
    )
    if binding.empty:
        _fail(path, block.line, f"clusters/{name} binds no guests",
              "at least one of guests, uuids, pattern or tag (a key that may fence nothing "
              "is a mistake)")
    return ClusterConfig(name, key_file, successor, binding, block.line)
