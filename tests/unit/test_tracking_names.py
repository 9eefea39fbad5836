"""Names across hosts: a request for "db" never acts on a different guest named "DB"."""

from __future__ import annotations

from guestfence.tracking.locations import (
    RUNNING,
    SHUTOFF,
    Ambiguous,
    DomainState,
    LocationTable,
    Owner,
)

A = "6f1c1e0a-2b4d-4c1e-9f00-00000000000a"
B = "6f1c1e0a-2b4d-4c1e-9f00-00000000000b"


def table(**hosts: tuple[str, str, int]) -> LocationTable:
    t = LocationTable()
    for host, (name, uuid, state) in hosts.items():
        t.announce(host, {uuid: DomainState(name, uuid, state)}, 0.0, 1)
    return t


def test_the_guest_with_exactly_the_name_wins_over_its_namesake_in_another_case() -> None:
    t = table(h1=("DB", A, RUNNING), h2=("db", B, SHUTOFF))
    assert t.owner("db") == Owner("h2", B, "db", SHUTOFF)  # off already: not DB on h1
    assert t.owner("DB") == Owner("h1", A, "DB", RUNNING)
    t = table(h1=("DB", A, RUNNING), h2=("db", B, RUNNING))
    assert t.owner("db") == Owner("h2", B, "db", RUNNING)


def test_a_name_known_only_in_another_case_still_matches_like_the_c_backends() -> None:
    assert table(h1=("DB", A, RUNNING)).owner("db") == Owner("h1", A, "DB", RUNNING)
    both = table(h1=("DB", A, RUNNING), h2=("Db", B, RUNNING)).owner("db")
    assert isinstance(both, Ambiguous)  # two guests, neither exactly "db": fail
