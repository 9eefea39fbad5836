"""The libvirt backend's safety rules, against a scripted fake connection.

The real test driver cannot make a destroy fail silently, a domain refuse to
start, or libvirtd disappear, so those paths are driven here.
"""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from guestfence.host.backends import libvirt as backend_mod
from guestfence.host.backends.libvirt import LibvirtBackend
from guestfence.virt.wire import Op, Result

RUNNING, SHUTOFF = 1, 5


def no_domain() -> libvirt.libvirtError:
    err = libvirt.libvirtError("no domain")
    err.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "no domain", 0, "", "", "", 0, 0)
    return err


class FakeDomain:
    def __init__(self, name: str, state: int = RUNNING, *, stays_on: bool = False,
                 start_fails: bool = False, transient: bool = False) -> None:
        self._name, self.st = name, state
        self.stays_on, self.start_fails, self.transient = stays_on, start_fails, transient
        self.gone = False
        self.calls: list[str] = []

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return "11111111-1111-1111-1111-000000000001"

    def state(self) -> list[int]:
        if self.gone:
            raise no_domain()
        return [self.st, 0]

    def destroy(self) -> None:
        self.calls.append("destroy")
        if self.transient:
            self.gone = True
        elif not self.stays_on:
            self.st = SHUTOFF

    def create(self) -> None:
        self.calls.append("create")
        if self.start_fails:
            raise libvirt.libvirtError("cannot start")
        self.st = RUNNING

    def XMLDesc(self, flags: int) -> str:
        return "<domain/>"

    def isPersistent(self) -> bool:
        return not self.transient


class FakeConn:
    def __init__(self, *domains: FakeDomain) -> None:
        self.domains = {d.name(): d for d in domains}
        self.alive = True
        self.created: list[str] = []

    def lookupByName(self, name: str) -> FakeDomain:
        if not self.alive:
            raise libvirt.libvirtError("connection closed")
        if name not in self.domains:
            raise no_domain()
        return self.domains[name]

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:
        for d in self.domains.values():
            if d.UUIDString() == uuid:
                return d
        raise no_domain()

    def isAlive(self) -> bool:
        return self.alive

    def listAllDomains(self, flags: int) -> list[FakeDomain]:
        return list(self.domains.values())

    def createXML(self, xml: str, flags: int) -> FakeDomain:
        self.created.append(xml)
        return FakeDomain("again")

    def getLibVersion(self) -> int:
        if not self.alive:
            raise libvirt.libvirtError("connection closed")
        return 9000000

    def close(self) -> int:
        return 0


def make(monkeypatch: pytest.MonkeyPatch, *conns: FakeConn) -> LibvirtBackend:
    queue = list(conns)
    monkeypatch.setattr(LibvirtBackend, "_open", staticmethod(lambda uri: queue.pop(0)))
    monkeypatch.setattr(backend_mod, "POLL_INTERVAL", 0.001)
    return LibvirtBackend(["test:///fake"], power_timeout=0.05)


def test_off_succeeds_only_when_verified_off(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain("vm")
    backend = make(monkeypatch, FakeConn(dom))
    assert backend.execute(Op.OFF, "vm") == Result.SUCCESS
    assert dom.st == SHUTOFF


def test_off_fails_when_the_domain_keeps_running(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain("vm", stays_on=True)
    backend = make(monkeypatch, FakeConn(dom))
    assert backend.execute(Op.OFF, "vm") == Result.FAIL
    assert dom.calls == ["destroy"]


def test_off_of_transient_domain_counts_gone_as_off(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make(monkeypatch, FakeConn(FakeDomain("vm", transient=True)))
    assert backend.execute(Op.OFF, "vm") == Result.SUCCESS


def test_reboot_fails_when_start_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain("vm", start_fails=True)
    backend = make(monkeypatch, FakeConn(dom))
    assert backend.execute(Op.REBOOT, "vm") == Result.FAIL
    assert dom.calls == ["destroy", "create"]


def test_reboot_never_starts_a_domain_that_did_not_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain("vm", stays_on=True)
    backend = make(monkeypatch, FakeConn(dom))
    assert backend.execute(Op.REBOOT, "vm") == Result.FAIL
    assert dom.calls == ["destroy"]


def test_reboot_of_off_domain_leaves_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain("vm", state=SHUTOFF)
    backend = make(monkeypatch, FakeConn(dom))
    assert backend.execute(Op.REBOOT, "vm") == Result.SUCCESS
    assert dom.calls == []


def test_reboot_recreates_transient_domain_from_its_xml(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = FakeConn(FakeDomain("vm", transient=True))
    backend = make(monkeypatch, conn)
    assert backend.execute(Op.REBOOT, "vm") == Result.SUCCESS
    assert conn.created == ["<domain/>"]


@pytest.mark.parametrize("op", [Op.OFF, Op.ON, Op.REBOOT, Op.STATUS])
def test_unknown_domain_is_a_failure_never_off(monkeypatch: pytest.MonkeyPatch, op: Op) -> None:
    backend = make(monkeypatch, FakeConn(FakeDomain("vm")))
    assert backend.execute(op, "nosuch") == Result.FAIL


def test_status_and_uuid_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make(monkeypatch, FakeConn(FakeDomain("vm"), FakeDomain("off", state=SHUTOFF)))
    assert backend.execute(Op.STATUS, "vm") == Result.SUCCESS
    assert backend.execute(Op.STATUS, "off") == Result.OFF
    assert backend.execute(Op.STATUS, "11111111-1111-1111-1111-000000000001") == Result.SUCCESS
    assert backend.execute(Op.NULL, "vm") == Result.FAIL


def test_reconnects_once_when_libvirtd_went_away(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeConn(FakeDomain("vm"))
    second = FakeConn(FakeDomain("vm"))
    backend = make(monkeypatch, first, second)
    first.alive = False
    assert backend.execute(Op.STATUS, "vm") == Result.SUCCESS
    assert backend._conns["test:///fake"] is second


def test_unreachable_libvirtd_is_a_failure_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeConn(FakeDomain("vm"))
    backend = make(monkeypatch, first)

    def refuse(uri: str) -> Any:
        raise backend_mod.BackendError(f"cannot connect to libvirt at {uri}")

    monkeypatch.setattr(LibvirtBackend, "_open", staticmethod(refuse))
    first.alive = False
    assert backend.execute(Op.OFF, "vm") == Result.FAIL
    assert backend.execute(Op.DEVSTATUS, "") == Result.FAIL


class MigratingAway(FakeDomain):
    """destroy() fails (a migration holds the state lock), then the domain is gone."""

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.gone = True
        raise libvirt.libvirtError("cannot acquire state change lock")

    def isPersistent(self) -> bool:
        if self.gone:
            raise no_domain()
        return super().isPersistent()


@pytest.mark.parametrize("transient", [False, True])
def test_failed_destroy_then_vanished_is_not_off(monkeypatch: pytest.MonkeyPatch,
                                                 transient: bool) -> None:
    """Review finding: the domain may have migrated away and run elsewhere."""
    backend = make(monkeypatch, FakeConn(MigratingAway("vm", transient=transient)))
    assert backend.execute(Op.OFF, "vm") == Result.FAIL


class TransientGone(FakeDomain):
    """A real transient domain: after destroy, even isPersistent() says NO_DOMAIN."""

    def isPersistent(self) -> bool:
        if self.gone:
            raise no_domain()
        return super().isPersistent()


def test_destroyed_transient_domain_that_vanished_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make(monkeypatch, FakeConn(TransientGone("vm", transient=True)))
    assert backend.execute(Op.OFF, "vm") == Result.SUCCESS


def test_shut_off_copy_is_not_claimed_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: a host that kept a migrated domain's definition must stay silent."""
    conn = FakeConn(FakeDomain("away", state=SHUTOFF), FakeDomain("here"))
    backend = make(monkeypatch, conn)
    assert backend.owns("away") and backend.owns("here")
    backend.claim_shut_off = False
    assert not backend.owns("away") and backend.owns("here") and not backend.owns("nosuch")
