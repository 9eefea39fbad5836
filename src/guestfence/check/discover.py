"""Live discovery for ``guestfence check``: libvirt hosts, a Pacemaker CIB, and the merge.

* :func:`discover_libvirt` reads one host and its defined domains over a
  read-only libvirt connection (:func:`inspect_libvirt` also says which run).
* :func:`read_cib` reads the cluster name, the nodes and the stonith devices
  from a CIB (``cibadmin --query`` output or ``/var/lib/pacemaker/cib/cib.xml``).
* :func:`merge` lays discovery over a topology file and returns the merged
  topology together with notes about every conflict it resolved.

Merge rules, in short: what libvirt *observes* (where a guest runs, its vCPUs
and memory, a host's CPUs and memory) and what the CIB *configures* (cluster
members, fence agents, the fence_xvm key file) beat the file when they differ,
and every difference becomes a note. Everything discovery cannot see (host
versions, host clusters, fence_virtd, guest OS, storage, the hypervisor kind)
is taken from the file when the file states it. Discovery adds hosts and
guests the file does not mention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libvirt

from guestfence.check.model import (
    Guest,
    GuestCluster,
    Host,
    HypervisorKind,
    Origin,
    Topology,
)
from guestfence.errors import ConfigError


class DiscoveryError(ConfigError):
    """Live discovery failed; the message names the source (URI or file) and the cause."""


# --------------------------------------------------------------------- libvirt

# virConnectGetType() -> the model's hypervisor kind. The QEMU driver runs KVM
# guests (RHEV hosts also answer "QEMU": a file that says rhev is kept). The
# test driver stands in for a KVM host unless the caller says otherwise.
_DRIVER_KINDS: dict[str, HypervisorKind] = {
    "qemu": "kvm",
    "kvm": "kvm",
    "test": "kvm",
    "xen": "xen",
    "libxl": "xen",
    "esx": "vmware",
    "vmware": "vmware",
    "hyper-v": "hyperv",
    "hyperv": "hyperv",
}


def _silence_libvirt_stderr() -> None:
    # libvirt prints every error on stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _libvirt_message(e: Any) -> str:
    msg = e.get_error_message() if hasattr(e, "get_error_message") else None
    return str(msg or e).strip()


@dataclass(frozen=True)
class LibvirtHost:
    """What one libvirt connection showed: the host, every defined domain, which run."""

    uri: str
    host: Host
    guests: tuple[Guest, ...]
    running: frozenset[str]  # names of the domains that are active
    driver: str  # virConnectGetType(), e.g. "QEMU", "TEST"

    def pair(self) -> tuple[Host, list[Guest]]:
        return self.host, list(self.guests)


def _test_driver_host_name(uri: str) -> str:
    """``test:///dir/kvm1.xml`` -> ``kvm1``; ``test:///default`` -> ``default``.

    The test driver's getHostname() is the name of the machine running the
    test, the same for every node file, so the node file's name is used.
    """
    path = urlsplit(uri).path
    return Path(path).stem or "test"


def inspect_libvirt(
    uri: str, *, name: str | None = None, hypervisor: HypervisorKind | None = None
) -> LibvirtHost:
    """Read a host and all its defined domains (running or not) over a read-only connection.

    ``name`` overrides the host name libvirt reports; ``hypervisor`` overrides the
    kind derived from the driver (see ``_DRIVER_KINDS``). Raises DiscoveryError.
    """
    _silence_libvirt_stderr()
    origin = Origin(f"libvirt:{uri}")
    parts = urlsplit(uri)
    # a missing node file: libxml2 would print its own warning on stderr
    if (parts.scheme == "test" and parts.path not in ("", "/default")
            and not Path(parts.path).is_file()):
        raise DiscoveryError(f"libvirt:{uri}: cannot connect: the test driver's node file "
                             f"{parts.path} does not exist")
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as e:
        raise DiscoveryError(f"libvirt:{uri}: cannot connect: {_libvirt_message(e)}") from None
    if conn is None:  # old bindings returned None instead of raising
        raise DiscoveryError(f"libvirt:{uri}: cannot connect")
    try:
        driver = str(conn.getType())
        if name is None:
            name = (_test_driver_host_name(uri) if driver.lower() == "test"
                    else str(conn.getHostname()))
        info = conn.getInfo()  # [model, memory MiB, active CPUs, MHz, nodes, sockets, ...]
        host = Host(
            name=name,
            hypervisor=hypervisor or _DRIVER_KINDS.get(driver.lower()),
            version=None,  # libvirt knows the hypervisor's version, not the OS release
            cpus=int(info[2]) or None,
            memory_mib=int(info[1]) or None,
            origin=origin,
        )
        guests: list[Guest] = []
        running: set[str] = set()
        domains = sorted(conn.listAllDomains(0), key=lambda d: str(d.name()))
        for dom in domains:
            dom_name = str(dom.name())
            try:
                _state, max_kib, _mem_kib, vcpus, _cpu_time = dom.info()
                memory_kib = int(dom.maxMemory() or max_kib)
                active = bool(dom.isActive())
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined while we were listing
                raise
            guests.append(Guest(
                name=dom_name,
                host=name,
                vcpus=int(vcpus) or None,
                memory_mib=memory_kib // 1024 or None,
                origin=origin,
            ))
            if active:
                running.add(dom_name)
    except libvirt.libvirtError as e:
        raise DiscoveryError(f"libvirt:{uri}: cannot read the host and its domains: "
                             f"{_libvirt_message(e)}") from None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    return LibvirtHost(uri, host, tuple(guests), frozenset(running), driver)


def discover_libvirt(
    uri: str, *, name: str | None = None, hypervisor: HypervisorKind | None = None
) -> tuple[Host, list[Guest]]:
    """The host behind ``uri`` and every domain defined on it, sorted by name.

    Host: name (getHostname(); for the test driver the node file's stem),
    hypervisor kind (from getType(): QEMU/KVM -> kvm, Xen/libxl -> xen,
    ESX -> vmware, Hyper-V -> hyperv, Test -> kvm, other drivers -> None),
    CPUs and memory (getInfo()), version None. Guests: vCPUs and maximum memory
    (KiB -> MiB, rounded down) of every defined domain, running or shut off; use
    :func:`inspect_libvirt` to know which run. Origin is ``libvirt:URI``.
    Raises DiscoveryError naming the URI and libvirt's message.
    """
    return inspect_libvirt(uri, name=name, hypervisor=hypervisor).pair()


# ------------------------------------------------------------------------- CIB

# Parameters that select what a fence device powers off (node -> VM/plug).
_PLUG_PARAMS = ("port", "plug")
_NODE_TYPES = (None, "member", "normal")  # <node type="remote"> nodes carry no vote


def parse_host_map(text: str) -> dict[str, str]:
    """``pcmk_host_map``: ``node1:vm1;node2:vm2`` (also ``=`` and blank-separated) -> dict.

    Parsed as Pacemaker's fencer does: entries split on ``;``, blanks and tabs,
    node and plug on the first ``:`` or ``=``; malformed entries are skipped.
    A plug list such as ``node2:2,3`` is kept as the string ``2,3``.
    """
    out: dict[str, str] = {}
    for entry in re.split(r"[;\s]+", text.strip()):
        node, sep, plug = _split_first(entry, ":=")
        if sep and node and plug:
            out[node] = plug
    return out


def _split_first(text: str, seps: str) -> tuple[str, str, str]:
    for i, ch in enumerate(text):
        if ch in seps:
            return text[:i], ch, text[i + 1:]
    return text, "", ""


def parse_host_list(text: str) -> tuple[str, ...]:
    """``pcmk_host_list``: names separated by blanks, commas or semicolons."""
    return tuple(n for n in re.split(r"[\s,;]+", text.strip()) if n)


@dataclass(frozen=True)
class StonithDevice:
    """A ``<primitive class="stonith">`` of the CIB."""

    id: str
    agent: str  # the type attribute, e.g. "fence_xvm"
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    # nodes the device can fence, when the CIB says (pcmk_host_list, pcmk_host_map
    # keys); None when the fencer must ask the agent (dynamic-list) or it is unstated
    hosts: tuple[str, ...] | None = None
    host_map: Mapping[str, str] = field(default_factory=dict, hash=False)  # node -> plug
    enabled: bool = True  # False when meta target-role is Stopped

    def plug_for(self, node: str) -> str | None:
        """The plug (VM name for fence_xvm/fence_virt) this device powers off for ``node``.

        pcmk_host_map wins (node names match case-insensitively, as in the fencer);
        else a fixed ``port``/``plug`` parameter for a device that fences listed
        nodes; else None (the fencer passes the node name itself).
        """
        folded = {k.lower(): v for k, v in self.host_map.items()}
        if node.lower() in folded:
            return folded[node.lower()]
        if self.hosts is not None and node in self.hosts:
            for p in _PLUG_PARAMS:
                if self.params.get(p):
                    return self.params[p]
        return None


@dataclass(frozen=True)
class CibCluster:
    """What a CIB says about a guest cluster."""

    name: str | None  # the cluster-name property
    nodes: tuple[str, ...]  # <nodes><node uname=...> (cluster members, not remote nodes)
    stonith: tuple[StonithDevice, ...]
    stonith_enabled: bool | None = None  # the stonith-enabled property; None: unset (true)
    source: str = "<cib>"  # the file read

    @property
    def fence_agents(self) -> tuple[str, ...]:
        """Agent names of the enabled stonith devices, first-seen order, no duplicates."""
        return tuple(dict.fromkeys(d.agent for d in self.stonith if d.enabled))

    def vm_name(self, node: str) -> str:
        """The VM a node runs in: the plug of the first device mapping it, else the node name."""
        for d in self.stonith:
            plug = d.plug_for(node)
            if plug:
                return plug
        return node

    @property
    def key_file(self) -> str | None:
        """The key_file of the first fence_xvm/fence_virt device that sets one."""
        for d in self.stonith:
            if d.agent in ("fence_xvm", "fence_virt") and d.params.get("key_file"):
                return d.params["key_file"]
        return None


def _nvpairs(parent: ET.Element | None) -> dict[str, str]:
    """name -> value of the nvpairs under ``parent``'s attribute sets; the first set wins."""
    out: dict[str, str] = {}
    if parent is None:
        return out
    for nv in parent.iter("nvpair"):
        name, value = nv.get("name"), nv.get("value")
        if name is not None and value is not None:
            out.setdefault(name, value)
    return out


def _boolean(text: str | None) -> bool | None:
    if text is None:
        return None
    t = text.strip().lower()
    if t in ("true", "yes", "on", "y", "1"):
        return True
    if t in ("false", "no", "off", "n", "0"):
        return False
    return None


def _stonith_device(prim: ET.Element) -> StonithDevice:
    params: dict[str, str] = {}
    for ia in prim.findall("instance_attributes"):
        for k, v in _nvpairs(ia).items():
            params.setdefault(k, v)
    meta: dict[str, str] = {}
    for ma in prim.findall("meta_attributes"):
        for k, v in _nvpairs(ma).items():
            meta.setdefault(k, v)
    host_map = parse_host_map(params.get("pcmk_host_map", ""))
    hosts: tuple[str, ...] | None = None
    if "pcmk_host_list" in params:
        hosts = parse_host_list(params["pcmk_host_list"])
    if host_map:
        hosts = tuple(dict.fromkeys((*(hosts or ()), *host_map)))
    return StonithDevice(
        id=prim.get("id", "?"),
        agent=prim.get("type", "?"),
        params=params,
        hosts=hosts,
        host_map=host_map,
        enabled=meta.get("target-role", "").lower() != "stopped",
    )


def parse_cib(text: str | bytes, path: str = "<cib>") -> CibCluster:
    """Parse CIB XML text; errors name ``path`` (and the line for XML syntax errors)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line, _col = e.position
        reason = str(e).split(":", 1)[0]
        raise DiscoveryError(f"{path}:{line}: not valid XML ({reason}); expected a Pacemaker "
                             "CIB, the output of 'cibadmin --query'") from None
    if root.tag != "cib":
        raise DiscoveryError(f"{path}: not a Pacemaker CIB: the root element is <{root.tag}>, "
                             "expected <cib> (the output of 'cibadmin --query')")
    conf = root.find("configuration")
    if conf is None:
        raise DiscoveryError(f"{path}: not a Pacemaker CIB: <cib> has no <configuration>")
    props = _nvpairs(conf.find("crm_config"))
    nodes: list[str] = []
    for node in conf.findall("nodes/node"):
        uname = node.get("uname")
        if uname and node.get("type") in _NODE_TYPES and uname not in nodes:
            nodes.append(uname)
    resources = conf.find("resources")
    devices: list[StonithDevice] = []
    if resources is not None:
        # .iter() also finds devices inside groups and clones
        for prim in resources.iter("primitive"):
            if prim.get("class") == "stonith":
                devices.append(_stonith_device(prim))
    return CibCluster(
        name=props.get("cluster-name") or None,
        nodes=tuple(nodes),
        stonith=tuple(devices),
        stonith_enabled=_boolean(props.get("stonith-enabled")),
        source=path,
    )


def read_cib(path: str) -> CibCluster:
    """Read a CIB file (``cibadmin --query > FILE``). Raises DiscoveryError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DiscoveryError(f"{path}: cannot read: {e.strerror}") from None
    return parse_cib(data, path)


# ----------------------------------------------------------------------- merge

def _mib(v: object) -> str:
    return f"{v} MiB"


def _is_test_driver(origin: Origin) -> bool:
    return origin.source.startswith("libvirt:test:")


class _Merger:
    """Merge state: the discovered hosts and guests, and the notes written so far."""

    def __init__(self, hosts: Sequence[tuple[Host, Sequence[Guest]]]) -> None:
        self.notes: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.guests: dict[str, list[Guest]] = {}  # domain name -> where it is defined
        for host, guests in hosts:
            if host.name in self.hosts:
                raise DiscoveryError(
                    f"{host.origin} and {self.hosts[host.name].origin} report the same host "
                    f"name {host.name!r}; expected one connection per host"
                )
            self.hosts[host.name] = host
            for g in guests:
                placed = g if g.host == host.name else dataclasses.replace(g, host=host.name)
                self.guests.setdefault(g.name, []).append(placed)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def observed(self, what: str, attr: str, file_value: object, live_value: object,
                 source: Origin, fmt: Callable[[object], str] = str) -> Any:
        """A value libvirt observes: live wins, with a note when the file says otherwise."""
        if live_value is None:
            return file_value
        if file_value is not None and file_value != live_value:
            self.note(f"{what}: {attr}: the file says {fmt(file_value)}, {source} reports "
                      f"{fmt(live_value)}; using {fmt(live_value)}")
        return live_value

    def host(self, file_host: Host) -> Host:
        live = self.hosts.get(file_host.name)
        if live is None:
            return file_host
        what = f"host {file_host.name}"
        fk, lk = file_host.hypervisor, live.hypervisor
        if (fk and lk and fk != lk and not _is_test_driver(live.origin)
                and (fk, lk) != ("rhev", "kvm")):
            self.note(f"{what}: hypervisor: the file says {fk}, {live.origin} suggests {lk}; "
                      f"keeping the file's {fk}")
        return dataclasses.replace(
            file_host,
            hypervisor=fk or lk,
            version=file_host.version or live.version,
            cpus=self.observed(what, "cpus", file_host.cpus, live.cpus, live.origin),
            memory_mib=self.observed(what, "memory", file_host.memory_mib, live.memory_mib,
                                     live.origin, _mib),
        )

    def find(self, name: str, prefer_host: str | None = None) -> Guest | None:
        """The discovered domain ``name``; one defined on several hosts is counted once."""
        found = self.guests.get(name)
        if not found:
            return None
        chosen = next((g for g in found if g.host == prefer_host), found[0])
        if len(found) > 1:
            self.note(f"guest {name}: defined on several hosts "
                      f"({', '.join(str(g.host) for g in found)}); counting it once, "
                      f"on {chosen.host}")
        return chosen

    def guest(self, file_guest: Guest | None, live: Guest | None) -> Guest:
        """A guest of the file completed by its discovered domain (either may be missing)."""
        if file_guest is None:
            assert live is not None
            return live
        if live is None:
            if file_guest.host is not None and file_guest.host in self.hosts:
                self.note(f"guest {file_guest.name}: the file places it on {file_guest.host}, "
                          f"but {self.hosts[file_guest.host].origin} has no such domain; "
                          "keeping the file's entry")
            return file_guest
        what = f"guest {file_guest.name}"
        host = file_guest.host
        if live.host is not None and host != live.host:
            where = "bare metal" if host is None else f"on {host}"
            self.note(f"{what}: host: the file says {where}, {live.origin} finds it on "
                      f"{live.host}; using {live.host}")
            host = live.host
        return dataclasses.replace(
            file_guest,
            name=live.name,
            host=host,
            vcpus=self.observed(what, "vcpus", file_guest.vcpus, live.vcpus, live.origin),
            memory_mib=self.observed(what, "memory", file_guest.memory_mib, live.memory_mib,
                                     live.origin, _mib),
        )

    def complete(self, file_guest: Guest) -> Guest:
        return self.guest(file_guest, self.find(file_guest.name, file_guest.host))

    def cib_cluster(self, cib: CibCluster, cluster_name: str | None, base: Topology
                    ) -> tuple[GuestCluster, GuestCluster | None, list[Guest]]:
        """The CIB's cluster, the file's cluster it completes (or None), the members it drops."""
        vm_of = {node: cib.vm_name(node) for node in cib.nodes}
        name = cluster_name or cib.name
        target = next((c for c in base.clusters if c.name == name), None) if name else None
        if target is None:
            # the file's cluster that shares members with the CIB (by VM or node name)
            wanted = set(vm_of) | set(vm_of.values())
            target = next((c for c in base.clusters
                           if wanted & {g.name for g in c.members}), None)
            if target is not None and name is not None:
                self.note(f"cluster {target.name}: the CIB ({cib.source}) calls it {name!r}; "
                          "keeping the file's name")
        if target is not None:
            name = target.name
        elif name is None:
            name = "pacemaker"
            self.note(f"{cib.source}: the CIB has no cluster-name property; calling the "
                      f"cluster {name!r}")

        file_guests = {g.name: g for c in base.clusters for g in c.members}
        file_guests.update({g.name: g for g in base.other_guests})
        if target is not None:  # the target's own members first
            file_guests.update({g.name: g for g in target.members})
        members: list[Guest] = []
        for node, vm in vm_of.items():
            file_g = file_guests.get(vm) or file_guests.get(node)
            prefer = file_g.host if file_g is not None else None
            live = self.find(vm, prefer) or self.find(node, prefer)
            if file_g is None and live is None:
                self.note(f"cluster {name}: node {node} (VM {vm}) is on no discovered host "
                          "and not in the file; its host is unknown")
                members.append(Guest(name=vm, host=None, origin=Origin(cib.source)))
            else:
                members.append(self.guest(file_g, live))

        agents = cib.fence_agents
        key_file = cib.key_file
        dropped: list[Guest] = []
        if target is not None:
            known = {g.name for g in members} | set(vm_of) | set(vm_of.values())
            for g in target.members:
                if g.name not in known:
                    self.note(f"cluster {name}: the file lists member {g.name}, the CIB "
                              f"({cib.source}) has no such node; counting it as another "
                              "guest")
                    dropped.append(g)
            if target.fence_agents and set(target.fence_agents) != set(agents):
                self.note(f"cluster {name}: fence_agents: the file says "
                          f"{', '.join(target.fence_agents)}, the CIB ({cib.source}) "
                          f"configures {', '.join(agents) or 'none'}; using the CIB's")
            if target.key_file and key_file and target.key_file != key_file:
                self.note(f"cluster {name}: key_file: the file says {target.key_file}, the "
                          f"CIB ({cib.source}) uses {key_file}; using the CIB's")
            key_file = key_file or target.key_file
        if cib.stonith_enabled is False:
            self.note(f"cluster {name}: the CIB ({cib.source}) sets stonith-enabled=false")
        merged = GuestCluster(
            name=name,
            members=tuple(members),
            os=target.os if target is not None else None,
            fence_agents=agents,
            storage=target.storage if target is not None else (),
            fence_virtd_mode=target.fence_virtd_mode if target is not None else None,
            key_file=key_file,
            origin=target.origin if target is not None else Origin(cib.source),
            key_fingerprint=target.key_fingerprint if target is not None else None,
        )
        return merged, target, dropped


def merge(
    base: Topology | None,
    hosts: Sequence[tuple[Host, Sequence[Guest]]],
    cib: CibCluster | None,
    cluster_name: str | None = None,
) -> tuple[Topology, list[str]]:
    """Merge a topology file (``base``), discovered hosts and a CIB into one topology.

    Returns ``(topology, notes)``: ``notes`` lists, in order, every conflict
    resolved and every gap discovery met, each naming the object, both values
    and the one used. Raises DiscoveryError when two connections report the
    same host name.

    * Hosts: the file's, in file order, then discovered hosts it does not name.
      CPUs and memory: libvirt's value wins (note when the file differs).
      Hypervisor kind, version, host cluster and fence_virtd: the file's when it
      states them (libvirt's kind is a guess: a RHEV host's driver says QEMU,
      the test driver stands in for kvm), else discovery's.
    * Guests: a guest libvirt finds is placed on the host it is found on, with
      libvirt's vCPUs and memory (note when the file differs). A domain defined
      on several hosts is counted once, preferring the file's host (note).
      Guests libvirt does not find are kept as the file states them (note when
      the file places them on a discovered host).
    * The CIB adds or completes ONE guest cluster: the file's cluster named
      ``cluster_name`` or the CIB's cluster-name, else the file's cluster that
      shares members with the CIB, else a new cluster (named ``cluster_name``,
      the CIB's cluster-name, or 'pacemaker'). Members = the CIB's nodes, each
      mapped to its VM through the stonith devices (pcmk_host_map; port/plug
      with pcmk_host_list; else the node name) and matched by VM name, then
      node name, against discovered and file guests; a member is named after
      its VM when libvirt finds it. File members the CIB lacks become other
      guests (note). fence_agents = the enabled stonith devices' agents, key_file =
      the fence_xvm/fence_virt device's (the CIB wins, note on difference);
      OS, storage and fence_virtd_mode come from the file.
    * Other guests: the file's, then the file members the CIB dropped, then
      every discovered domain that is no cluster member, in discovery order.
    * sources: the file's, then ``libvirt:URI`` of each host, then the CIB file.
    """
    base = base or Topology()
    m = _Merger(hosts)
    file_hosts = {h.name for h in base.hosts}
    merged_hosts = [m.host(h) for h in base.hosts]
    merged_hosts += [h for n, h in m.hosts.items() if n not in file_hosts]

    cib_cluster: GuestCluster | None = None
    target: GuestCluster | None = None
    dropped: list[Guest] = []
    if cib is not None:
        cib_cluster, target, dropped = m.cib_cluster(cib, cluster_name, base)
    clusters: list[GuestCluster] = []
    for c in base.clusters:
        if c is target and cib_cluster is not None:
            clusters.append(cib_cluster)
        else:
            clusters.append(dataclasses.replace(c, members=tuple(m.complete(g)
                                                                 for g in c.members)))
    if cib_cluster is not None and target is None:
        clusters.append(cib_cluster)

    seen = {g.name for c in clusters for g in c.members}
    if cib is not None:  # a file guest named after a CIB node is that member, not another
        seen |= set(cib.nodes) | {cib.vm_name(n) for n in cib.nodes}
    others: list[Guest] = []
    for g in (*base.other_guests, *dropped):
        if g.name not in seen:
            seen.add(g.name)
            others.append(m.complete(g))
    for name in m.guests:
        if name not in seen:
            seen.add(name)
            live = m.find(name)
            assert live is not None
            others.append(live)

    sources = [*base.sources, *(str(h.origin) for h, _ in hosts)]
    if cib is not None:
        sources.append(cib.source)
    topology = Topology(
        hosts=tuple(merged_hosts),
        clusters=tuple(clusters),
        other_guests=tuple(others),
        sources=tuple(dict.fromkeys(sources)),
    )
    return topology, m.notes
