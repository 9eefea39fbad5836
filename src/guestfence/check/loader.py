"""Reading a topology file (YAML) into the model, with errors that name file, line and field.

We walk PyYAML's node tree (``yaml.compose``) instead of the plain data, so
every value still knows its line. Unknown keys are errors: a typo such as
``fence_agent:`` would otherwise silently drop a rule's input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import yaml

from guestfence.check.model import (
    FENCE_VIRTD_MODES,
    HYPERVISOR_KINDS,
    KNOWN_AGENTS,
    FenceVirtdMode,
    Guest,
    GuestCluster,
    Host,
    HypervisorKind,
    KeyBinding,
    Origin,
    Storage,
    Topology,
    Version,
    parse_version,
)
from guestfence.errors import ConfigError

T = TypeVar("T")


class TopologyError(ConfigError):
    """The topology cannot be read; the message has file, line, field and what was expected."""


_UNITS = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024,
          "t": 1024 * 1024, "tb": 1024 * 1024, "tib": 1024 * 1024}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_FINGERPRINT = re.compile(r"(?:sha256:)?([0-9a-fA-F]{16,64})")


def parse_memory_mib(text: str) -> int:
    """'64GiB', '4096', '512 MiB' -> MiB. A bare number is MiB."""
    m = _MEMORY.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a memory size; expected e.g. 4096, 512MiB or 64GiB")
    return int(float(m.group(1)) * _UNITS[unit])


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(
        self, node: yaml.Node | None, field: str, expected: str, found: str = ""
    ) -> TopologyError:
        line = node.start_mark.line + 1 if node is not None else None
        where = f"{self.path}:{line}" if line else self.path
        got = f"found {found}; " if found else ""
        return TopologyError(f"{where}: {field}: {got}expected {expected}")

    def origin(self, node: yaml.Node) -> Origin:
        return Origin(self.path, node.start_mark.line + 1)

    # ---------------------------------------------------------------- shapes

    def mapping(self, node: yaml.Node, field: str, known: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, field, "a mapping (key: value lines)", _kind(node))
        out: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in known:
                raise self.fail(key_node, f"{field}.{key}", "one of: " + ", ".join(known),
                                "an unknown key")
            if key in out:
                raise self.fail(key_node, f"{field}.{key}", "each key once", "a second one")
            out[key] = value
        for key in required:
            if key not in out:
                raise self.fail(node, f"{field}.{key}", f"a '{key}:' entry", "none")
        return out

    def sequence(self, node: yaml.Node, field: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, field, "a list ('- ' items)", _kind(node))
        return list(node.value)

    def text(self, node: yaml.Node, field: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, field, "a value", _kind(node))
        value = str(node.value).strip()
        if not value:
            raise self.fail(node, field, "a non-empty value", "an empty one")
        return value

    def convert(self, node: yaml.Node, field: str, parse: Callable[[str], T]) -> T:
        raw = self.text(node, field)
        try:
            return parse(raw)
        except ValueError as e:
            raise self.fail(node, field, str(e).split("expected ", 1)[-1], repr(raw)) from None

    def integer(self, node: yaml.Node, field: str, low: int = 1) -> int:
        def parse(raw: str) -> int:
            value = int(raw)
            if value < low:
                raise ValueError(f"expected an integer >= {low}")
            return value

        try:
            return self.convert(node, field, parse)
        except TopologyError:
            raise
        except ValueError:
            raise self.fail(node, field, f"an integer >= {low}") from None

    def boolean(self, node: yaml.Node, field: str) -> bool:
        raw = self.text(node, field).lower()
        if raw in ("true", "yes", "on", "1"):
            return True
        if raw in ("false", "no", "off", "0"):
            return False
        raise self.fail(node, field, "true or false", repr(raw))

    def choice(self, node: yaml.Node, field: str, choices: tuple[T, ...]) -> T:
        raw = self.text(node, field).lower()
        for c in choices:
            if raw == c:
                return c
        raise self.fail(node, field, "one of: " + ", ".join(map(str, choices)), repr(raw))

    def version(self, node: yaml.Node, field: str) -> Version:
        return self.convert(node, field, parse_version)

    def memory(self, node: yaml.Node, field: str) -> int:
        return self.convert(node, field, parse_memory_mib)

    # ---------------------------------------------------------------- objects

    def host(self, node: yaml.Node, field: str) -> Host:
        m = self.mapping(node, field, ("name", "hypervisor", "version", "cpus", "memory",
                                       "host_cluster", "fence_virtd", "key_bindings"),
                         required=("name",))
        kind: HypervisorKind | None = None
        if "hypervisor" in m:
            kind = self.choice(m["hypervisor"], f"{field}.hypervisor", HYPERVISOR_KINDS)
        return Host(
            name=self.text(m["name"], f"{field}.name"),
            hypervisor=kind,
            version=self.version(m["version"], f"{field}.version") if "version" in m else None,
            cpus=self.integer(m["cpus"], f"{field}.cpus") if "cpus" in m else None,
            memory_mib=self.memory(m["memory"], f"{field}.memory") if "memory" in m else None,
            host_cluster=self.text(m["host_cluster"], f"{field}.host_cluster")
            if "host_cluster" in m else None,
            fence_virtd=self.boolean(m["fence_virtd"], f"{field}.fence_virtd")
            if "fence_virtd" in m else None,
            origin=self.origin(node),
            key_bindings=tuple(
                self.key_binding(b, f"{field}.key_bindings[{i}]") for i, b in
                enumerate(self.sequence(m["key_bindings"], f"{field}.key_bindings")
                          if "key_bindings" in m else [])),
        )

    def key_ref(self, node: yaml.Node, field: str) -> tuple[str | None, str | None]:
        """``key: {fingerprint: ...}`` and/or ``{file: ...}`` -> (fingerprint, file)."""
        m = self.mapping(node, field, ("fingerprint", "file"))
        if not m:
            raise self.fail(node, field, "fingerprint: (as 'guestfence keys fingerprint' "
                            "prints it) or file:", "neither")
        fp = None
        if "fingerprint" in m:
            raw = self.text(m["fingerprint"], f"{field}.fingerprint")
            found = _FINGERPRINT.fullmatch(raw)
            if found is None:
                raise self.fail(m["fingerprint"], f"{field}.fingerprint",
                                "16 or more hex digits (guestfence keys fingerprint FILE)",
                                repr(raw))
            fp = found.group(1)[:16].lower()
        path = self.text(m["file"], f"{field}.file") if "file" in m else None
        return fp, path

    def key_binding(self, node: yaml.Node, field: str) -> KeyBinding:
        m = self.mapping(node, field, ("cluster", "key", "guests"),
                         required=("cluster", "key", "guests"))
        fp, path = self.key_ref(m["key"], f"{field}.key")
        guests = tuple(self.text(g, f"{field}.guests[{i}]") for i, g in
                       enumerate(self.sequence(m["guests"], f"{field}.guests")))
        if not guests:
            raise self.fail(m["guests"], f"{field}.guests",
                            "the guest names or patterns this key may fence", "none")
        return KeyBinding(self.text(m["cluster"], f"{field}.cluster"), guests, fp, path,
                          self.origin(node))

    def guest(self, node: yaml.Node, field: str, member: bool) -> Guest:
        keys = ("name", "host", "vcpus", "memory", "os") + (("bare_metal",) if member else ())
        m = self.mapping(node, field, keys, required=("name",))
        bare = self.boolean(m["bare_metal"], f"{field}.bare_metal") if "bare_metal" in m else False
        if bare and "host" in m:
            raise self.fail(m["host"], f"{field}.host", "no host for a bare_metal member",
                            "both")
        if not bare and "host" not in m:
            raise self.fail(node, f"{field}.host", "the host it runs on (or bare_metal: true)",
                            "none")
        return Guest(
            name=self.text(m["name"], f"{field}.name"),
            host=None if bare else self.text(m["host"], f"{field}.host"),
            vcpus=self.integer(m["vcpus"], f"{field}.vcpus") if "vcpus" in m else None,
            memory_mib=self.memory(m["memory"], f"{field}.memory") if "memory" in m else None,
            os=self.version(m["os"], f"{field}.os") if "os" in m else None,
            origin=self.origin(node),
        )

    def storage(self, node: yaml.Node, field: str) -> Storage:
        m = self.mapping(node, field, ("iscsi", "native", "persistent_reservations",
                                       "preempt_and_abort", "software"))
        kinds = [k for k in ("iscsi", "native") if k in m]
        if len(kinds) != 1:
            raise self.fail(node, field, "exactly one of 'iscsi: URL' or 'native: DEVICE'",
                            f"{len(kinds)}")
        kind = kinds[0]
        target = self.text(m[kind], f"{field}.{kind}")
        if kind == "iscsi" and not target.startswith("iscsi://"):
            raise self.fail(m[kind], f"{field}.iscsi", "an iscsi://host[:port]/iqn/lun URL",
                            repr(target))

        def flag(name: str) -> bool | None:
            return self.boolean(m[name], f"{field}.{name}") if name in m else None

        return Storage(
            kind="iscsi" if kind == "iscsi" else "native",
            target=target,
            persistent_reservations=flag("persistent_reservations"),
            preempt_and_abort=flag("preempt_and_abort"),
            software=self.text(m["software"], f"{field}.software") if "software" in m else None,
            origin=self.origin(node),
        )

    def cluster(self, node: yaml.Node, field: str) -> GuestCluster:
        m = self.mapping(node, field, ("name", "os", "members", "fence_agents", "storage",
                                       "fence_virtd_mode", "key_file", "key"),
                         required=("name", "members"))
        fingerprint, key_file = self.key_ref(m["key"], f"{field}.key") if "key" in m \
            else (None, None)
        if "key_file" in m:
            stated = self.text(m["key_file"], f"{field}.key_file")
            if key_file is not None and key_file != stated:
                raise self.fail(m["key"], f"{field}.key.file", f"the key_file {stated}",
                                repr(key_file))
            key_file = stated
        agents = []
        for i, a in enumerate(self.sequence(m["fence_agents"], f"{field}.fence_agents")
                              if "fence_agents" in m else []):
            agents.append(self.choice(a, f"{field}.fence_agents[{i}]", KNOWN_AGENTS))
        mode: FenceVirtdMode | None = None
        if "fence_virtd_mode" in m:
            mode = self.choice(m["fence_virtd_mode"], f"{field}.fence_virtd_mode",
                               FENCE_VIRTD_MODES)
        members = tuple(self.guest(g, f"{field}.members[{i}]", member=True)
                        for i, g in enumerate(self.sequence(m["members"], f"{field}.members")))
        if not members:
            raise self.fail(m["members"], f"{field}.members", "at least one member", "none")
        return GuestCluster(
            name=self.text(m["name"], f"{field}.name"),
            members=members,
            os=self.version(m["os"], f"{field}.os") if "os" in m else None,
            fence_agents=tuple(agents),
            storage=tuple(self.storage(s, f"{field}.storage[{i}]") for i, s in
                          enumerate(self.sequence(m["storage"], f"{field}.storage")
                                    if "storage" in m else [])),
            fence_virtd_mode=mode,
            key_file=key_file,
            origin=self.origin(node),
            key_fingerprint=fingerprint,
        )

    def topology(self, root: yaml.Node) -> Topology:
        m = self.mapping(root, "topology", ("hosts", "clusters", "guests"))
        hosts = tuple(self.host(h, f"hosts[{i}]") for i, h in
                      enumerate(self.sequence(m["hosts"], "hosts") if "hosts" in m else []))
        clusters = tuple(self.cluster(c, f"clusters[{i}]") for i, c in
                         enumerate(self.sequence(m["clusters"], "clusters")
                                   if "clusters" in m else []))
        guests = tuple(self.guest(g, f"guests[{i}]", member=False) for i, g in
                       enumerate(self.sequence(m["guests"], "guests") if "guests" in m else []))
        topo = Topology(hosts, clusters, guests, sources=(self.path,))
        self._check_names(topo, m)
        return topo

    def _check_names(self, topo: Topology, m: dict[str, yaml.Node]) -> None:
        """Unique names, and every guest's host declared."""
        _unique([h.name for h in topo.hosts], "host", self.path, [h.origin for h in topo.hosts])
        _unique([c.name for c in topo.clusters], "cluster", self.path,
                [c.origin for c in topo.clusters])
        guests = [g for c in topo.clusters for g in c.members] + list(topo.other_guests)
        _unique([g.name for g in guests], "guest", self.path, [g.origin for g in guests])
        known = {h.name for h in topo.hosts}
        for g in guests:
            if g.host is not None and g.host not in known:
                raise TopologyError(
                    f"{g.origin}: host of guest {g.name!r}: found {g.host!r}; expected one of "
                    f"the hosts declared under 'hosts:' ({', '.join(sorted(known)) or 'none'})"
                )


def _unique(names: list[str], what: str, path: str, origins: list[Origin]) -> None:
    seen: dict[str, Origin] = {}
    for name, origin in zip(names, origins, strict=True):
        if name in seen:
            raise TopologyError(f"{origin}: {what} name {name!r}: found a second {what} of "
                                f"that name (first at line {seen[name].line}); expected "
                                "unique names")
        seen[name] = origin


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    return f"{node.value!r}"


# libyaml's composer is about five times faster than the pure-Python one (a
# 1,000-host topology: 0.6 s against 2.8 s); PyYAML's wheels include it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_topology(text: str, path: str = "<topology>") -> Topology:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TopologyError(f"{path}{line}: not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise TopologyError(f"{path}: not valid YAML: {e}") from None
    if root is None:
        raise TopologyError(f"{path}: the file is empty; expected 'hosts:' and 'clusters:'")
    return _Reader(path).topology(root)


def load_topology(path: str) -> Topology:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TopologyError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TopologyError(f"{path}: not UTF-8 text") from None
    return parse_topology(text, path)
