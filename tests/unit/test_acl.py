"""The groups access map: names exact (libvirt is case-sensitive), UUIDs and addresses not."""

from __future__ import annotations

from guestfence.host.acl import AccessMap
from guestfence.host.config import Group

UUID = "11111111-1111-1111-1111-000000000001"


def test_no_groups_allows_everything() -> None:
    assert AccessMap([]).allows("10.0.0.9", "anything")


def test_names_are_exact_uuids_and_addresses_fold_case() -> None:
    acl = AccessMap([Group("g", ("192.0.2.1", "FD00::1"), ("web1", UUID.upper()))])
    assert acl.allows("192.0.2.1", "web1")
    assert not acl.allows("192.0.2.1", "WEB1")  # another domain: libvirt names are exact
    assert acl.allows("fd00::1", UUID.lower())
    assert not acl.allows("192.0.2.2", "web1")


def test_serial_requester_is_a_vm_uuid() -> None:
    acl = AccessMap([Group("self", (), (UUID, "web1"))])
    assert acl.allows(UUID.upper(), "web1")
    assert acl.shows(UUID, "other", UUID)
    assert not acl.shows(UUID, "other", "22222222-2222-2222-2222-000000000002")
