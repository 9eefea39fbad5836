"""The pure location table: migrations, membership, fencing, static maps, stale input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from guestfence.tracking import (
    Ambiguous,
    DomainState,
    Kind,
    LocationTable,
    Migrating,
    Migration,
    Owner,
    OwnerGone,
    StaticMap,
    Unknown,
    acting_host,
    from_libvirt,
    responder,
    role_of,
)
from guestfence.tracking.locations import PAUSED, RUNNING, SHUTOFF

U1 = "6f1c1e0a-2b4d-4c1e-9f00-000000000001"
U2 = "6f1c1e0a-2b4d-4c1e-9f00-000000000002"


def running(name: str, uuid: str, state: int = RUNNING,
            migrating: Migration | None = None) -> dict[str, DomainState]:
    return {uuid: DomainState(name, uuid, state, migrating)}


def two_hosts() -> LocationTable:
    t = LocationTable()
    t.host_joined("a", 0.0)
    t.host_joined("b", 0.0)
    t.announce("a", running("g1", U1), 0.0, seq=1)
    t.announce("b", {}, 0.0, seq=1)
    return t


def owner_host(t: LocationTable, target: str = "g1") -> str | None:
    return acting_host(t.owner(target))


# -- live migration, in the lab's event order -----------------------------------------


def test_migration_event_order_from_the_lab() -> None:
    t = two_hosts()
    assert t.owner("g1") == Owner("a", U1, "g1", RUNNING)
    t.event("b", U1, "g1", Kind.STARTED, "MIGRATED", 0.344)
    d = t.owner("g1")
    assert d == Migrating("a", "b", "a", U1, "g1")  # STARTED never moves ownership
    t.event("a", U1, "g1", Kind.SUSPENDED, "MIGRATED", 0.357)
    assert t.owner("g1") == Migrating("a", "b", "a", U1, "g1")  # source still owns
    t.event("b", U1, "g1", Kind.RESUMED, "MIGRATED", 0.368)
    assert t.owner("g1") == Migrating("a", "b", "b", U1, "g1")  # destination owns
    t.event("a", U1, "g1", Kind.STOPPED, "MIGRATED", 0.580)
    assert t.owner("g1") == Owner("b", U1, "g1", RUNNING)
    assert t.hosts_listing(U1) == ["b"]


def test_source_stopped_migrated_gives_ownership_even_without_resumed() -> None:
    t = two_hosts()
    t.event("b", U1, "g1", "started", "migrated", 0.3)
    t.event("a", U1, "g1", "suspended", "migrated", 0.31)
    t.event("a", U1, "g1", "stopped", "migrated", 0.5)  # RESUMED on b was lost
    assert t.owner("g1") == Owner("b", U1, "g1", RUNNING)


def test_failed_migration_leaves_the_guest_on_the_source() -> None:
    t = two_hosts()
    t.event("b", U1, "g1", Kind.STARTED, "MIGRATED", 0.3)
    t.event("a", U1, "g1", Kind.SUSPENDED, "MIGRATED", 0.31)
    t.event("b", U1, "g1", Kind.STOPPED, "FAILED", 0.4)
    assert t.owner("g1") == Owner("a", U1, "g1", PAUSED)
    t.event("a", U1, "g1", Kind.RESUMED, "MIGRATED", 0.41)
    assert t.owner("g1") == Owner("a", U1, "g1", RUNNING)


def test_migration_seen_through_announcements_only() -> None:
    """Host-cluster mode: each host re-announces its full list after every event."""
    t = two_hosts()
    t.announce("b", running("g1", U1, PAUSED, Migration.IN), 0.344, seq=2)
    assert owner_host(t) == "a"
    t.announce("a", running("g1", U1, PAUSED, Migration.OUT), 0.357, seq=2)
    assert owner_host(t) == "a"
    t.announce("b", running("g1", U1), 0.368, seq=3)
    assert t.owner("g1") == Migrating("a", "b", "b", U1, "g1")
    t.announce("a", {}, 0.580, seq=3)
    assert t.owner("g1") == Owner("b", U1, "g1", RUNNING)


def test_announcements_without_hints_use_where_it_last_ran() -> None:
    t = two_hosts()
    t.announce("b", running("g1", U1, PAUSED), 0.344, seq=2)  # incoming, paused
    assert t.owner("g1") == Migrating("a", "b", "a", U1, "g1")
    t.announce("a", running("g1", U1, PAUSED), 0.357, seq=2)  # both paused
    assert owner_host(t) == "a"
    t.announce("b", running("g1", U1), 0.368, seq=3)
    assert t.owner("g1") == Migrating("a", "b", "b", U1, "g1")


# -- membership and fencing -------------------------------------------------------------


def test_owner_gone_is_not_success_until_fenced() -> None:
    t = two_hosts()
    t.host_left("a", 5.0)
    assert t.owner("g1") == OwnerGone("a", False, U1, "g1")
    assert responder(t.owner("g1"), t.members()) == "b"
    t.host_fenced("a", 9.0)
    assert t.owner("g1") == OwnerGone("a", True, U1, "g1")
    assert t.owner(U1.upper()) == OwnerGone("a", True, U1, "g1")


def test_guest_restarted_elsewhere_after_its_host_left() -> None:
    """Host cluster (strict): the departed host may still run a copy until it is fenced."""
    t = two_hosts()
    t.host_left("a", 5.0)
    t.event("b", U1, "g1", Kind.STARTED, "BOOTED", 6.0)
    assert isinstance(t.owner("g1"), Ambiguous)
    t.host_fenced("a", 7.0)
    assert t.owner("g1") == Owner("b", U1, "g1", RUNNING)


def test_without_a_host_cluster_a_reachable_running_copy_is_acted_on() -> None:
    t = LocationTable(trust_running_member=True)
    t.announce("a", running("g1", U1), 0.0)
    t.announce("b", {}, 0.0)
    t.host_left("a", 5.0)  # unreachable
    t.event("b", U1, "g1", Kind.STARTED, "BOOTED", 6.0)
    assert t.owner("g1") == Owner("b", U1, "g1", RUNNING)


def test_owner_leaves_during_migration_before_switch_over() -> None:
    t = two_hosts()
    t.event("b", U1, "g1", Kind.STARTED, "MIGRATED", 0.3)
    t.event("a", U1, "g1", Kind.SUSPENDED, "MIGRATED", 0.31)
    t.host_left("a", 1.0)
    assert t.owner("g1") == OwnerGone("a", False, U1, "g1")


def test_partition_then_rejoin_announcements_take_over() -> None:
    t = two_hosts()
    t.announce("a", running("g1", U1), 1.0, seq=7)
    t.host_left("a", 2.0)
    assert t.announce("a", {}, 2.5, seq=8) is False  # late word from a departed host
    assert isinstance(t.owner("g1"), OwnerGone)
    t.host_joined("a", 3.0)
    assert t.announce("a", running("g1", U1), 3.0, seq=1)  # restarted daemon counts from 1
    assert t.owner("g1") == Owner("a", U1, "g1", RUNNING)
    assert t.announce("a", {}, 4.0, seq=2)
    assert t.owner("g1") == Unknown("g1")


def test_fenced_host_rejoining_starts_empty() -> None:
    t = two_hosts()
    t.host_fenced("a", 2.0)
    t.host_joined("a", 30.0)
    assert t.listing("a") == {}
    assert t.owner("g1") == Unknown("g1")


def test_stale_announcements_are_ignored() -> None:
    t = two_hosts()
    assert t.announce("a", {}, 1.0, seq=5)
    assert t.announce("a", running("g1", U1), 1.1, seq=4) is False
    assert t.announce("a", running("g1", U1), 1.1, seq=5) is False
    assert t.owner("g1") == Unknown("g1")
    assert t.event("a", U1, "g1", Kind.STARTED, "BOOTED", 1.2, seq=3) is False
    assert t.event("a", U1, "g1", Kind.STARTED, "BOOTED", 1.2, seq=6)
    assert owner_host(t) == "a"


# -- ambiguity, names, UUIDs --------------------------------------------------------------


def test_running_on_two_hosts_outside_a_migration_is_ambiguous() -> None:
    t = two_hosts()
    t.event("b", U1, "g1", Kind.STARTED, "BOOTED", 1.0)
    d = t.owner("g1")
    assert d == Ambiguous(("a", "b"), "g1")
    assert acting_host(d) is None
    assert [role_of(h, d, t.members()) for h in ("a", "b")] == ["answer", "silent"]


def test_names_are_case_insensitive_and_uuids_canonical() -> None:
    t = two_hosts()
    for target in ("G1", "g1", U1, U1.upper(), U1.replace("-", ""), "{" + U1 + "}"):
        assert owner_host(t, target) == "a", target
    assert t.owner("nosuch") == Unknown("nosuch")


def test_same_name_different_uuids() -> None:
    t = two_hosts()
    t.event("b", U2, "g1", Kind.DEFINED, "ADDED", 1.0)  # a shut-off namesake
    assert owner_host(t) == "a"
    assert t.owner(U2) == Owner("b", U2, "g1", SHUTOFF)
    t.event("b", U2, "g1", Kind.STARTED, "BOOTED", 2.0)
    assert t.owner("g1") == Ambiguous(("a", "b"), "g1")
    assert owner_host(t, U1) == "a"
    assert owner_host(t, U2) == "b"


def test_rename_and_undefine() -> None:
    t = two_hosts()
    t.event("b", U2, "old", Kind.DEFINED, "ADDED", 1.0)
    t.event("b", U2, "new", Kind.DEFINED, "RENAMED", 1.1)
    assert t.owner("old") == Unknown("old")
    assert owner_host(t, "NEW") == "b"
    t.event("b", U2, "new", Kind.UNDEFINED, "REMOVED", 1.2)
    assert t.owner("new") == Unknown("new")


def test_destroy_leaves_it_off_on_its_host() -> None:
    t = two_hosts()
    t.event("a", U1, "g1", Kind.SHUTDOWN, "HOST", 1.0)
    t.event("a", U1, "g1", Kind.STOPPED, "DESTROYED", 1.003)
    assert t.owner("g1") == Owner("a", U1, "g1", SHUTOFF)


def test_from_libvirt_numbers() -> None:
    assert from_libvirt(2, 1) == (Kind.STARTED, "MIGRATED")
    assert from_libvirt(5, 3) == (Kind.STOPPED, "MIGRATED")
    assert from_libvirt(4, 99) == (Kind.RESUMED, "UNKNOWN")


def test_responder_is_the_lowest_member_and_silent_when_the_owner_answers() -> None:
    t = two_hosts()
    assert responder(t.owner("g1"), ["b", "a"]) is None
    assert responder(Unknown("x"), ["c", "b"]) == "b"
    assert responder(Unknown("x"), []) is None
    assert role_of("a", t.owner("g1"), ["a", "b"]) == "execute"
    assert role_of("b", t.owner("g1"), ["a", "b"]) == "silent"


# -- static mode ----------------------------------------------------------------------------


def test_static_map_violations_and_decisions() -> None:
    t = two_hosts()
    t.event("b", U2, "g2", Kind.STARTED, "BOOTED", 1.0)
    smap = StaticMap({"a": {"g1"}, "b": {"G2", "g3"}})
    assert smap.check(t) == []
    assert smap.decide(t, "g1") == Owner("a", U1, "g1", RUNNING)
    t.event("a", U2, "g2", Kind.STARTED, "MIGRATED", 2.0)  # g2 migrating to a
    kinds = sorted((v.kind, v.host) for v in smap.check(t))
    assert kinds == [("migrating", "a,b"), ("unmapped", "a")]
    assert isinstance(smap.decide(t, "g2"), Ambiguous)
    t.event("a", U2, "g2", Kind.RESUMED, "MIGRATED", 2.1)
    t.event("b", U2, "g2", Kind.STOPPED, "MIGRATED", 2.2)
    assert [(v.kind, v.host) for v in smap.check(t)] == [("unmapped", "a")]
    assert smap.decide(t, "g2") == Ambiguous(("a", "b"), "g2")  # runs on a, mapped to b
    assert smap.decide(t, "g3") == Unknown("g3")


def test_static_map_given_twice() -> None:
    smap = StaticMap({"a": {"g1"}, "b": {U1}})
    t = two_hosts()
    assert any(v.kind == "mapped-twice" for v in smap.check(t))
    assert isinstance(smap.decide(t, "g1"), Ambiguous)


# -- property: random input never raises, never two owners ----------------------------------

HOSTS = ("a", "b", "c")
UUIDS = (U1, U2)
NAMES = {U1: "g1", U2: "g2"}

op = st.one_of(
    st.tuples(st.just("event"), st.sampled_from(HOSTS), st.sampled_from(UUIDS),
              st.sampled_from(list(Kind)), st.sampled_from(
                  ["MIGRATED", "BOOTED", "DESTROYED", "FAILED", "PAUSED", "UNPAUSED",
                   "ADDED", "REMOVED", "POSTCOPY", "RENAMED"])),
    st.tuples(st.just("announce"), st.sampled_from(HOSTS),
              st.dictionaries(st.sampled_from(UUIDS), st.tuples(
                  st.sampled_from([RUNNING, PAUSED, SHUTOFF, 3, 7]),
                  st.sampled_from([None, Migration.IN, Migration.OUT])), max_size=2),
              st.integers(0, 6)),
    st.tuples(st.just("join"), st.sampled_from(HOSTS)),
    st.tuples(st.just("left"), st.sampled_from(HOSTS)),
    st.tuples(st.just("fenced"), st.sampled_from(HOSTS)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_random_sequences_never_raise_and_never_give_two_owners(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    t = LocationTable()
    for now, item in enumerate(ops):
        kind = item[0]
        if kind == "event":
            _, host, u, k, detail = item
            t.event(host, u, NAMES[u], k, detail, float(now))
        elif kind == "announce":
            _, host, doms, seq = item
            t.announce(host, {u: DomainState(NAMES[u], u, s, m) for u, (s, m) in doms.items()},
                       float(now), seq=seq)
        elif kind == "join":
            t.host_joined(item[1], float(now))
        elif kind == "left":
            t.host_left(item[1], float(now))
        else:
            t.host_fenced(item[1], float(now))
        members = t.members()
        for u in UUIDS:
            for target in (u, NAMES[u], NAMES[u].upper(), "absent"):
                d = t.owner(target)
                executors = [h for h in HOSTS if role_of(h, d, members) == "execute"]
                answerers = [h for h in HOSTS if role_of(h, d, members) != "silent"]
                assert len(executors) <= 1
                assert len(answerers) <= 1 or not members
                actor = acting_host(d)
                if actor is not None:
                    assert t.is_member(actor), d
                if isinstance(d, OwnerGone):
                    assert not t.is_member(d.host)
                    if d.fenced:
                        assert not t.is_member(d.host)
                if isinstance(d, Migrating):
                    assert d.src != d.dst and d.owner in (d.src, d.dst)
