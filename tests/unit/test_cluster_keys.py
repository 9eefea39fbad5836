"""Per-cluster keys: the key ring, the guest bindings, the clusters block, the access decisions."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from guestfence.errors import AuthError, ConfigError, KeyFileError
from guestfence.host.acl import AccessMap
from guestfence.host.cluster_access import ClusterAccess
from guestfence.host.clusters import GuestBinding, parse_metadata_tag, tag_from_domain_xml
from guestfence.host.config import parse_config
from guestfence.host.keyring import (
    FailureLimiter,
    KeyFileWatcher,
    KeyRing,
    KeySource,
    ScanBudget,
    ScanRefused,
    sources_from_config,
)
from guestfence.host.keys import fingerprint
from guestfence.host.server import FenceService, Request
from guestfence.virt.wire import FenceRequest, HashType, HostRecord, Op, Result, verify_request
from tests.unit.day2_fakes import Sink

WEB1 = "11111111-1111-1111-1111-000000000001"
DB1 = "22222222-2222-2222-2222-000000000001"


def request(domain: str = "web1", hash_type: HashType = HashType.SHA256) -> FenceRequest:
    return FenceRequest(op=Op.OFF, domain=domain, hash_type=hash_type, flags=0,
                        address=ipaddress.IPv4Address("10.0.0.5"), port=1229, seqno=7,
                        random=b"\x01\x02\x03\x04\x05\x06")


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def two_clusters(tmp_path: Path) -> tuple[list[KeySource], bytes, bytes]:
    a, b = os.urandom(4096), os.urandom(4096)
    write(tmp_path / "a.key", a)
    write(tmp_path / "b.key", b)
    sources = [
        KeySource("A", str(tmp_path / "a.key"), str(tmp_path / "a.key.next"),
                  GuestBinding(names=frozenset({"web1"}))),
        KeySource("B", str(tmp_path / "b.key"), str(tmp_path / "b.key.next"),
                  GuestBinding(patterns=("db*",))),
    ]
    return sources, a, b


# ------------------------------------------------------------------ key ring


@pytest.mark.parametrize("hash_type", [HashType.SHA1, HashType.SHA256, HashType.SHA512])
def test_ring_names_the_cluster_whose_key_signed(two_clusters: tuple[list[KeySource], bytes,
                                                 bytes], hash_type: HashType) -> None:
    sources, a, b = two_clusters
    ring = KeyRing.load(sources, strict=True)
    for key, cluster in ((a, "A"), (b, "B")):
        block = request(hash_type=hash_type).sign(key)
        req, found = ring.identify(block, HashType.SHA1)
        assert found is not None and found.cluster == cluster and found.key == key
        assert req == verify_request(block, key, HashType.SHA1)  # same decoding as one key


def test_ring_refuses_unknown_key_weak_hash_and_bad_padding(
        two_clusters: tuple[list[KeySource], bytes, bytes]) -> None:
    sources, a, _ = two_clusters
    ring = KeyRing.load(sources, strict=True)
    with pytest.raises(AuthError, match="does not match any of the 2 keys"):
        ring.identify(request().sign(os.urandom(4096)), HashType.SHA256)
    with pytest.raises(AuthError, match="weaker"):
        ring.identify(request(hash_type=HashType.SHA1).sign(a), HashType.SHA256)
    with pytest.raises(AuthError, match="unsigned"):
        ring.identify(request(hash_type=HashType.NONE).sign(a), HashType.NONE)
    block = bytearray(request().sign(a))
    block[-1] ^= 1  # the zero padding after a SHA-256 digest must stay zero
    with pytest.raises(AuthError):
        ring.identify(bytes(block), HashType.SHA256)


def test_ring_hint_is_an_order_not_a_permission(
        two_clusters: tuple[list[KeySource], bytes, bytes]) -> None:
    sources, a, b = two_clusters
    ring = KeyRing.load(sources, strict=True)
    assert ring.identify(request().sign(b), HashType.SHA256, hint="10.0.0.5")[1].cluster == "B"
    # the same requester now signs with A: the hinted key B fails, the scan finds A
    assert ring.identify(request().sign(a), HashType.SHA256, hint="10.0.0.5")[1].cluster == "A"


def test_successor_verifies_beside_the_current_key(tmp_path: Path,
                                                   two_clusters: tuple[list[KeySource], bytes,
                                                                       bytes]) -> None:
    sources, a, _ = two_clusters
    new = os.urandom(4096)
    write(tmp_path / "a.key.next", new)
    ring = KeyRing.load(sources, strict=True)
    roles = {k.role for k in ring.keys if k.cluster == "A"}
    assert roles == {"current", "successor"}
    for key in (a, new):
        assert ring.identify(request().sign(key), HashType.SHA256)[1].cluster == "A"
    assert f"A successor {fingerprint(new)}" in ring.describe()


def test_one_key_for_two_clusters_is_refused(tmp_path: Path,
                                             two_clusters: tuple[list[KeySource], bytes,
                                                                 bytes]) -> None:
    sources, a, _ = two_clusters
    write(tmp_path / "b.key.next", a)  # B's successor is A's key: who would be asking?
    with pytest.raises(KeyFileError, match="same key is used by several clusters"):
        KeyRing.load(sources, strict=True)
    ring = KeyRing.load(sources, strict=False)  # on reload: that key works for nobody
    assert all(k.key != a for k in ring.keys)
    with pytest.raises(AuthError):
        ring.identify(request().sign(a), HashType.SHA256)


def test_insecure_or_missing_key_fails_closed_on_reload(
        tmp_path: Path, two_clusters: tuple[list[KeySource], bytes, bytes]) -> None:
    sources, _, _ = two_clusters
    (tmp_path / "a.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="0600"):
        KeyRing.load(sources, strict=True)
    ring = KeyRing.load(sources, strict=False)
    assert [k.cluster for k in ring.keys] == ["B"]
    (tmp_path / "b.key").unlink()
    assert KeyRing.load(sources, strict=False).keys == ()


def test_watcher_sees_a_retirement_rename(tmp_path: Path,
                                          two_clusters: tuple[list[KeySource], bytes,
                                                              bytes]) -> None:
    sources, _, _ = two_clusters
    watcher = KeyFileWatcher(sources)
    assert not watcher.changed()
    write(tmp_path / "a.key.next", os.urandom(4096))
    assert watcher.changed()
    assert not watcher.changed()
    os.replace(tmp_path / "a.key.next", tmp_path / "a.key")
    assert watcher.changed()


def test_failure_limiter_mutes_a_flooding_source_only() -> None:
    limiter = FailureLimiter(rate=10, burst=5)
    for _ in range(5):
        assert limiter.allows("10.0.0.66", 100.0)
        limiter.failed("10.0.0.66", 100.0)
    assert not limiter.allows("10.0.0.66", 100.0)
    assert limiter.allows("10.0.0.5", 100.0)  # another source is not affected
    for _ in range(1000):  # a long flood does not mute the source for long after it
        limiter.failed("10.0.0.66", 100.0)
    assert limiter.allows("10.0.0.66", 100.2)  # refilled: 2 tokens after 0.2 s


def test_scan_budget_spares_known_requesters(
        two_clusters: tuple[list[KeySource], bytes, bytes]) -> None:
    sources, a, b = two_clusters
    ring = KeyRing.load(sources, strict=True)
    budget = ScanBudget(rate=10, burst=2)
    assert ring.identify(request().sign(a), HashType.SHA256, hint="10.0.0.5",
                         may_scan=lambda: budget.take(0.0))[1].cluster == "A"  # learnt
    forged = request().sign(os.urandom(4096))
    with pytest.raises(AuthError):
        ring.identify(forged, HashType.SHA256, "10.0.0.66", lambda: budget.take(0.0))
    with pytest.raises(ScanRefused):  # budget spent: unknown requesters wait
        ring.identify(request().sign(b), HashType.SHA256, "10.0.0.7",
                      lambda: budget.take(0.0))
    # the known requester is tried with its own key first and never waits
    assert ring.identify(request().sign(a), HashType.SHA256, hint="10.0.0.5",
                         may_scan=lambda: budget.take(0.0))[1].cluster == "A"
    assert budget.take(0.2)  # refilled


def test_reloaded_ring_keeps_what_it_learnt(
        tmp_path: Path, two_clusters: tuple[list[KeySource], bytes, bytes]) -> None:
    sources, a, _ = two_clusters
    old = KeyRing.load(sources, strict=True)
    old.identify(request().sign(a), HashType.SHA256, hint="10.0.0.5")
    write(tmp_path / "b.key.next", os.urandom(4096))
    new = KeyRing.load(sources, strict=True)
    new.adopt_hints(old)
    assert new.identify(request().sign(a), HashType.SHA256, "10.0.0.5",
                        may_scan=lambda: False)[1].cluster == "A"


def test_fifty_keys_verify_fast(tmp_path: Path) -> None:
    """The bound the flood defence relies on: one trial per key, about a microsecond each."""
    import time

    sources = []
    for i in range(50):
        path = write(tmp_path / f"k{i}.key", os.urandom(4096))
        sources.append(KeySource(f"c{i}", str(path), f"{path}.next",
                                 GuestBinding(names=frozenset({f"vm{i}"}))))
    ring = KeyRing.load(sources, strict=True)
    forged = request().sign(os.urandom(4096))
    started = time.perf_counter()
    for _ in range(200):
        with pytest.raises(AuthError):
            ring.identify(forged, HashType.SHA256)
    per_datagram = (time.perf_counter() - started) / 200
    assert per_datagram < 0.002, f"{per_datagram * 1e6:.0f} us per forged datagram"


# ------------------------------------------------------------------ bindings


def test_binding_matches_names_uuids_patterns_and_tags() -> None:
    b = GuestBinding(names=frozenset({"web1"}), uuids=frozenset({WEB1}),
                     patterns=("web-*",), tags=frozenset({"web"}))
    assert b.matches("web1", DB1)
    assert b.matches("other", WEB1.upper())  # UUIDs without regard to case
    assert b.matches("web-7", DB1)
    assert b.matches("x", DB1, tag="web")
    assert not b.matches("WEB1", DB1)  # libvirt names are case-sensitive
    assert not b.matches("db1", DB1, tag="db")
    assert not b.matches("webx-1", DB1)


def test_metadata_tag_parsing() -> None:
    element = '<guestfence:cluster xmlns:guestfence="https://guestfence.dev/xmlns/1" name="A"/>'
    assert parse_metadata_tag(element) == "A"
    assert parse_metadata_tag("<other/>") is None
    assert parse_metadata_tag("not xml") is None
    domain = f"<domain><name>x</name><metadata>{element}</metadata></domain>"
    assert tag_from_domain_xml(domain) == "A"
    assert tag_from_domain_xml("<domain/>") is None


# ------------------------------------------------------------------ configuration

BASE = ('fence_virtd { listener = "multicast"; backend = "libvirt"; }\n'
        'backends { libvirt { uri = "test:///default"; } }\n')


def conf(clusters: str, listener: str = "") -> str:
    return BASE + (listener or 'listeners { multicast { interface = "lo"; } }\n') + clusters


def test_clusters_block_parses() -> None:
    cfg = parse_config(conf(
        'clusters {\n'
        '  web {\n'
        '    key_file = "/k/web.key";\n'
        '    guests = "web1 web2, web3";\n'
        f'    uuids = "{WEB1.upper()}";\n'
        '    pattern = "web-*";\n'
        '    tag = "web";\n'
        '  }\n'
        '  db { key_file = "/k/db.key"; successor_key_file = "/k/db.new"; guest = "db1"; }\n'
        '}\n'), "f")
    web, db = cfg.clusters
    assert web.name == "web" and web.key_file == "/k/web.key"
    assert web.successor_key_file == "/k/web.key.next"
    assert web.binding.names == {"web1", "web2", "web3"}
    assert web.binding.uuids == {WEB1} and web.binding.patterns == ("web-*",)
    assert web.binding.tags == {"web"}
    assert db.successor_key_file == "/k/db.new" and db.binding.names == {"db1"}
    assert [s.cluster for s in sources_from_config(cfg.clusters, "/unused")] == ["web", "db"]


def test_old_single_key_config_has_no_clusters() -> None:
    cfg = parse_config(conf(""), "f")
    assert cfg.clusters == ()
    (src,) = sources_from_config(cfg.clusters, cfg.listener.key_file)
    assert src.cluster is None and src.binding is None
    assert src.successor_file == "/etc/cluster/fence_xvm.key.next"


@pytest.mark.parametrize(("clusters", "message"), [
    ('clusters {\n web {\n guests = "web1";\n }\n}\n', "f:5: no key_file in clusters/web"),
    ('clusters {\n web {\n key_file = "/k";\n }\n}\n', "f:5: clusters/web binds no guests"),
    ('clusters {\n web {\n key_file = "/k"; guests = "a";\n gests = "b";\n }\n}\n',
     "f:7: unknown key 'gests' in clusters/web"),
    ('clusters {\n web { key_file = "/k"; uuids = "nope"; }\n}\n',
     "f:5: uuid 'nope' in clusters/web"),
    ('clusters {\n web { key_file = "/k"; pattern = "*"; }\n}\n',
     "f:5: pattern '*' in clusters/web matches every guest"),
    ('clusters {\n web { key_file = "/k"; guests = "a"; }\n'
     ' WEB { key_file = "/j"; guests = "b"; }\n}\n',
     "f:6: a second cluster named 'WEB'; expected unique cluster names (the first is at "
     "line 5)"),
    ('clusters {\n web { key_file = "/k"; guests = "a"; }\n'
     ' db { key_file = "/k"; guests = "b"; }\n}\n',
     "f:6: key file /k of cluster 'db' is also used by cluster 'web' (line 5)"),
    ('clusters {\n key_file = "/k";\n}\n', "f:5: key 'key_file' directly in the clusters"),
    ('clusters {\n}\n', "f:4: a clusters block without any cluster"),
])
def test_clusters_block_errors_name_file_and_line(clusters: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(conf(clusters), "f")
    assert str(e.value).startswith(message), str(e.value)


def test_clusters_need_signed_requests_and_replace_the_listener_key() -> None:
    with pytest.raises(ConfigError, match='f:4: per-cluster keys with hash = "none"'):
        parse_config(conf('clusters { web { key_file = "/k"; guests = "a"; } }\n',
                          'listeners { multicast { hash = "none"; } }\n'), "f")
    cfg = parse_config(conf('clusters { web { key_file = "/k"; guests = "a"; } }\n',
                            'listeners { multicast { key_file = "/old"; } }\n'), "f")
    assert any("key_file of the listener is not used" in w for w in cfg.warnings)


# ------------------------------------------------------------------ access decisions


@dataclass
class Info:
    name: str
    uuid: str
    state: int = 1


class Backend:
    name = "fake"

    def __init__(self) -> None:
        self.domains = {"web1": WEB1, "db1": DB1,
                        "tagged": "33333333-3333-3333-3333-000000000001"}
        self.executed: list[tuple[int, str]] = []

    def lookup(self, target: str) -> Info | None:
        for name, uuid in self.domains.items():
            if target in (name, uuid):
                return Info(name, uuid)
        return None

    def owns(self, target: str) -> bool:
        return self.lookup(target) is not None

    def cluster_tag(self, uuid: str) -> str | None:
        return "A" if uuid.startswith("3333") else None

    def cluster_tags(self) -> dict[str, str]:
        return {"33333333-3333-3333-3333-000000000001": "A"}

    def execute(self, op: int, target: str) -> int:
        self.executed.append((op, target))
        return Result.SUCCESS

    def host_list(self) -> list[HostRecord]:
        return [HostRecord(n, u, 1) for n, u in sorted(self.domains.items())]

    def close(self) -> None:
        pass


def clustered_service(backend: Backend) -> FenceService:
    cfg = parse_config(conf(
        'clusters {\n'
        '  A { key_file = "/a"; guests = "web1"; tag = "A"; }\n'
        '  B { key_file = "/b"; pattern = "db*"; }\n'
        '}\n'), "f")
    svc = FenceService(backend, AccessMap([]), b"", HashType.NONE, HashType.NONE)
    svc.cluster_access = ClusterAccess(cfg.clusters)
    return svc


def serve(svc: FenceService, req: Request) -> bytes:
    sink = Sink()
    asyncio.run(svc.serve(req, sink, None, authenticate=False))
    return sink.sent


def test_a_cluster_fences_its_own_guests_only() -> None:
    backend = Backend()
    svc = clustered_service(backend)
    mine = Request("multicast", "10.0.0.5", Op.OFF, "web1", 1, cluster="A")
    by_uuid = Request("multicast", "10.0.0.5", Op.OFF, WEB1, 2, cluster="A")
    tagged = Request("multicast", "10.0.0.5", Op.OFF, "tagged", 3, cluster="A")
    theirs = Request("multicast", "10.0.0.5", Op.OFF, "db1", 4, cluster="A")
    unknown = Request("multicast", "10.0.0.5", Op.OFF, "nosuch", 5, cluster="A")
    nobody = Request("multicast", "10.0.0.5", Op.OFF, "web1", 6, cluster=None)
    assert serve(svc, mine) == bytes([Result.SUCCESS])
    assert serve(svc, by_uuid) == bytes([Result.SUCCESS])
    assert serve(svc, tagged) == bytes([Result.SUCCESS])
    for req in (theirs, unknown, nobody):
        assert serve(svc, req) == bytes([Result.PERM])
    # the guest that was checked is the one acted on: by its UUID
    assert backend.executed == [(Op.OFF, WEB1), (Op.OFF, WEB1),
                                (Op.OFF, "33333333-3333-3333-3333-000000000001")]


def test_list_shows_a_cluster_its_own_guests() -> None:
    backend = Backend()
    svc = clustered_service(backend)
    listed = serve(svc, Request("tcp", "127.0.0.1", Op.HOSTLIST, "", 1, cluster="A"))
    names = {r.name for r in _records(listed)}
    assert names == {"web1", "tagged"}
    listed = serve(svc, Request("tcp", "127.0.0.1", Op.HOSTLIST, "", 2, cluster="B"))
    assert {r.name for r in _records(listed)} == {"db1"}
    assert _records(serve(svc, Request("tcp", "127.0.0.1", Op.HOSTLIST, "", 3))) == []


def test_serial_requester_cluster_is_the_requesting_guests() -> None:
    backend = Backend()
    svc = clustered_service(backend)
    # the guest db1 (cluster B) asks through its serial socket
    assert serve(svc, Request("serial", DB1, Op.OFF, "db1", 1)) == bytes([Result.SUCCESS])
    assert serve(svc, Request("serial", DB1, Op.OFF, "web1", 2)) == bytes([Result.PERM])
    # a guest bound to no cluster may fence nothing
    backend.domains = {**backend.domains, "stray": "44444444-4444-4444-4444-000000000001"}
    assert serve(svc, Request("serial", "44444444-4444-4444-4444-000000000001", Op.OFF,
                              "web1", 3)) == bytes([Result.PERM])


def test_without_clusters_everything_is_allowed_as_before() -> None:
    backend = Backend()
    svc = FenceService(backend, AccessMap([]), b"", HashType.NONE, HashType.NONE)
    assert serve(svc, Request("tcp", "127.0.0.1", Op.OFF, "db1", 1)) == bytes([Result.SUCCESS])
    assert len(_records(serve(svc, Request("tcp", "127.0.0.1", Op.HOSTLIST, "", 2)))) == 3


def _records(stream: bytes) -> list[HostRecord]:
    from guestfence.virt.wire import HOST_RECORD_SIZE, parse_host_record

    assert stream[0] == Result.HOSTLIST
    out = []
    for at in range(1, len(stream) - 1, HOST_RECORD_SIZE):
        record = parse_host_record(stream[at:at + HOST_RECORD_SIZE])
        if record is None:
            break
        out.append(record)
    return out


def test_groups_still_apply_on_top_of_clusters() -> None:
    from guestfence.host.config import Group

    backend = Backend()
    svc = clustered_service(backend)
    svc.access = AccessMap([Group("only-web1", ("10.0.0.5",), ("web1",))])
    # cluster A may fence web1 and tagged; the groups map allows this requester web1 only
    assert serve(svc, Request("tcp", "10.0.0.5", Op.OFF, "web1", 1, cluster="A")) == \
        bytes([Result.SUCCESS])
    assert serve(svc, Request("tcp", "10.0.0.5", Op.OFF, "tagged", 2, cluster="A")) == \
        bytes([Result.PERM])
    assert serve(svc, Request("tcp", "10.0.0.9", Op.OFF, "web1", 3, cluster="A")) == \
        bytes([Result.PERM])
    assert backend.executed == [(Op.OFF, WEB1)]
