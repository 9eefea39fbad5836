"""PrClient against the in-memory SPC-4 target: fence_scsi's sequences, UAs, errors."""

from __future__ import annotations

import pytest

from guestfence.scsi import pr
from guestfence.scsi.pr import PrType, Reservation, ScsiProtocolError
from guestfence.scsi.prclient import PrClient
from guestfence.scsi.sense import (
    BadStatus,
    IllegalRequest,
    ReservationConflict,
    Sense,
    SenseKey,
    UnitAttention,
)
from guestfence.scsi.transport import ScsiResult, ScsiTransportError, Status
from tests.unit.fake_pr_target import FakePrTarget, FakeTransport

K1, K2, K3 = 0x6C9D0000, 0x6C9D0001, 0x6C9D0002
WERO = PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
WRITE_10 = bytes([0x2A]) + bytes(9)
READ_10 = bytes([0x28]) + bytes(9)


def node(target: FakePrTarget, n: int, **kw: bool) -> tuple[PrClient, FakeTransport]:
    transport = target.connect(f"iqn.2024-01.lab:node{n}", **kw)
    return PrClient(transport), transport


def write(transport: FakeTransport) -> int:
    """WRITE(10) retried past unit attentions, as the kernel's SCSI layer does."""
    for _ in range(5):
        result = transport.execute(WRITE_10)
        if result.status != Status.CHECK_CONDITION or result.sense[2] != SenseKey.UNIT_ATTENTION:
            break
    return result.status


def ua(asc: int, ascq: int) -> ScsiResult:
    return ScsiResult(Status.CHECK_CONDITION, Sense(SenseKey.UNIT_ATTENTION, asc, ascq).encode())


@pytest.fixture
def cluster() -> tuple[FakePrTarget, list[PrClient], list[FakeTransport]]:
    """node1 and node2 unfenced (registered), node1 holds WERO; node3 not registered."""
    target = FakePrTarget()
    pairs = [node(target, i) for i in (1, 2, 3)]
    clients, transports = [p[0] for p in pairs], [p[1] for p in pairs]
    clients[0].register_and_ignore(K1)
    clients[1].register_and_ignore(K2)
    clients[0].reserve(K1, WERO)
    return target, clients, transports


def test_unfence_and_fence_like_fence_scsi(cluster: tuple[FakePrTarget, list[PrClient],
                                                          list[FakeTransport]]) -> None:
    _, (_, n2, n3), (t1, t2, t3) = cluster
    assert write(t2) == Status.GOOD  # registrants may write under WERO
    assert write(t3) == Status.RESERVATION_CONFLICT  # node3 not registered yet
    assert t3.execute(READ_10).status == Status.GOOD  # but may read

    # node3 fences node2 (spec 2.6, recorded sequence)
    n3.test_unit_ready()
    assert K2 in n3.read_keys().keys
    n3.register_and_ignore(K3)
    n3.preempt_and_abort(K3, K2, WERO)
    assert t3.commands[-1] == pr.pr_out_cdb(pr.PrOut.PREEMPT_AND_ABORT, 5, 24)
    keys = n3.read_keys()
    assert K2 not in keys.keys and set(keys.keys) == {K1, K3}
    assert n3.read_reservation().reservation == Reservation(K1, WERO)  # still there

    # node2's next command meets REGISTRATIONS PREEMPTED, then its writes conflict
    assert t2.execute(WRITE_10) == ua(0x2A, 0x05)
    assert write(t2) == Status.RESERVATION_CONFLICT
    assert n2.read_keys().keys == keys.keys
    assert write(t1) == Status.GOOD and write(t3) == Status.GOOD


def test_fencing_the_holder_moves_the_reservation(cluster: tuple[
        FakePrTarget, list[PrClient], list[FakeTransport]]) -> None:
    _, (n1, n2, _), (t1, _, _) = cluster
    n2.preempt_and_abort(K2, K1, WERO)
    assert n2.read_reservation().reservation == Reservation(K2, WERO)
    assert n2.read_keys().keys == (K2,)
    with pytest.raises(ReservationConflict, match="PERSISTENT RESERVE OUT / RESERVE"):
        n1.reserve(K1, WERO)  # fenced: its registration is gone (after the UA)
    assert [(s.asc, s.ascq) for s in n1.unit_attentions] == [(0x2A, 0x05)]
    assert write(t1) == Status.RESERVATION_CONFLICT


def test_tgt_rejects_preempt_and_abort_and_preempt_still_fences() -> None:
    target = FakePrTarget(reject_preempt_and_abort=True)
    (n1, _), (n2, t2) = node(target, 1), node(target, 2)
    n1.register_and_ignore(K1)
    n2.register_and_ignore(K2)
    n1.reserve(K1)
    with pytest.raises(IllegalRequest) as info:
        n1.preempt_and_abort(K1, K2)
    assert info.value.unsupported
    assert str(info.value) == (
        f"{target.name}: PERSISTENT RESERVE OUT / PREEMPT AND ABORT: "
        "ILLEGAL REQUEST: INVALID FIELD IN CDB (24/00)")
    assert target.keys == [K1, K2]  # nothing happened
    n1.preempt(K1, K2)
    assert target.keys == [K1] and write(t2) == Status.RESERVATION_CONFLICT


def test_isid_dance_non_holder_must_register_again() -> None:
    """fence_scsi register_dev after a reconnect: self-preempt, then re-register
    if the preempt took our new registration too (we are not the holder)."""
    target = FakePrTarget()
    n1, _ = node(target, 1)
    n1.register_and_ignore(K1)
    n1.reserve(K1)
    node(target, 2)[0].register_and_ignore(K2)  # node2's first session ...
    again, _ = node(target, 2)  # ... and after a reconnect: a new I_T nexus
    again.register_and_ignore(K2)
    assert again.read_keys().keys == (K1, K2, K2)
    again.preempt(K2, K2, WERO)
    assert target.keys == [K1]  # both K2 registrations gone, ours included
    res = again.read_reservation().reservation
    assert res is not None and res.key != K2
    again.register_and_ignore(K2)
    assert target.keys == [K1, K2]


def test_isid_dance_holder_keeps_registration_and_reservation() -> None:
    target = FakePrTarget()
    old, _ = node(target, 1)
    old.register_and_ignore(K1)
    old.reserve(K1)
    new, t_new = node(target, 1)
    new.register_and_ignore(K1)
    new.preempt(K1, K1, WERO)  # SARK is the holder's key: stale nexus removed, we take over
    assert target.keys == [K1]
    assert new.read_reservation().reservation == Reservation(K1, WERO)
    assert write(t_new) == Status.GOOD


def test_read_full_status_shows_every_nexus() -> None:
    target = FakePrTarget()
    n1, _ = node(target, 1)
    n1.register_and_ignore(K1)
    n1.reserve(K1)
    node(target, 1)[0].register_and_ignore(K1)  # a second session, same key
    status = n1.read_full_status()
    assert [(d.key, d.holder) for d in status.descriptors] == [(K1, True), (K1, False)]
    assert status.descriptors[0].type == WERO
    isids = [d.initiator.rsplit(",i,", 1)[1] for d in status.descriptors]
    assert isids[0] != isids[1]
    assert status.descriptors[0].initiator.startswith("iSCSI iqn.2024-01.lab:node1,i,0x")
    with pytest.raises(IllegalRequest) as info:
        PrClient(FakePrTarget(read_full_status=False).connect()).read_full_status()
    assert info.value.unsupported


def test_report_capabilities() -> None:
    caps = PrClient(FakePrTarget(ptpl_c=False).connect()).report_capabilities()
    assert caps.supports(WERO) and not caps.ptpl_c and not caps.atp_c


def test_unit_attention_retries() -> None:
    target = FakePrTarget()
    client, transport = node(target, 1, unit_attention=True)
    client.test_unit_ready()  # consumes 29/00 as sg_turs does
    assert [c[0] for c in transport.commands] == [0x00, 0x00]
    assert client.unit_attentions == [Sense(SenseKey.UNIT_ATTENTION, 0x29, 0x00)]

    transport.fail_next(ua(0x29, 0x07), ua(0x2A, 0x05), ua(0x2A, 0x03))
    assert client.read_keys().keys == ()  # three UAs, three retries, then success
    transport.fail_next(*[ua(0x29, 0x00)] * 4)
    with pytest.raises(UnitAttention, match=r"\(29/00\) \(still pending after 4 attempts\)") as e:
        client.register_and_ignore(K1)
    assert e.value.attempts == 4 and target.keys == []

    strict = PrClient(transport, ua_retries=0)
    transport.fail_next(ua(0x2A, 0x04))
    with pytest.raises(UnitAttention):
        strict.test_unit_ready()


def test_other_errors_are_not_retried() -> None:
    client, transport = node(FakePrTarget(), 1)
    transport.fail_next(ScsiResult(Status.BUSY), ScsiResult(Status.GOOD))
    with pytest.raises(BadStatus, match="BUSY"):
        client.register_and_ignore(K1)
    assert len(transport.commands) == 1
    transport.close()
    with pytest.raises(ScsiTransportError, match="closed"):
        client.read_keys()


def test_read_keys_asks_again_when_the_answer_was_cut() -> None:
    target = FakePrTarget()
    for i in range(5):
        PrClient(target.connect(f"iqn.x:n{i}")).register_and_ignore(0x100 + i)
    transport = target.connect()
    keys = PrClient(transport, allocation_length=16).read_keys()
    assert keys.keys == (0x100, 0x101, 0x102, 0x103, 0x104)
    allocs = [int.from_bytes(c[7:9], "big") for c in transport.commands]
    assert allocs == [16, 48]


def test_short_answers_are_protocol_errors_naming_the_device() -> None:
    client, transport = node(FakePrTarget(name="/dev/sdz"), 1)
    transport.fail_next(ScsiResult(Status.GOOD, data=bytes.fromhex("000000010000001000")))
    with pytest.raises(ScsiProtocolError, match=r"^/dev/sdz: PERSISTENT RESERVE IN: READ KEYS: "):
        client.read_keys()
    transport.fail_next(ScsiResult(Status.GOOD, data=b"\x00\x08"))
    with pytest.raises(ScsiProtocolError, match="REPORT CAPABILITIES"):
        client.report_capabilities()


def test_register_unregister_and_key_change() -> None:
    target = FakePrTarget()
    client, _ = node(target, 1)
    client.register(K1)
    with pytest.raises(ReservationConflict):
        client.register(K2)  # RESERVATION KEY must quote the current key
    client.register(K2, current=K1)
    assert target.keys == [K2]
    generation = client.read_keys().generation
    client.unregister(K2)
    assert client.read_keys() == pr.ReadKeys(generation + 1, ())


def test_unregistering_the_holder_releases_with_unit_attention() -> None:
    target = FakePrTarget()
    (n1, _), (n2, _) = node(target, 1), node(target, 2)
    n1.register_and_ignore(K1)
    n2.register_and_ignore(K2)
    n1.reserve(K1)
    n1.unregister(K1)
    assert n2.read_reservation().reservation is None
    assert [(s.asc, s.ascq) for s in n2.unit_attentions] == [(0x2A, 0x04)]


def test_reserve_release_rules() -> None:
    target = FakePrTarget()
    (n1, _), (n2, _) = node(target, 1), node(target, 2)
    n1.register_and_ignore(K1)
    n2.register_and_ignore(K2)
    n1.reserve(K1)
    n1.reserve(K1)  # same holder, same type: no change
    with pytest.raises(ReservationConflict):
        n2.reserve(K2)
    with pytest.raises(ReservationConflict):
        n1.reserve(K1, PrType.EXCLUSIVE_ACCESS)
    n2.release(K2)  # not the holder: GOOD, nothing happens
    with pytest.raises(IllegalRequest, match=r"INVALID RELEASE .*\(26/04\)") as info:
        n1.release(K1, PrType.EXCLUSIVE_ACCESS)
    assert not info.value.unsupported
    with pytest.raises(IllegalRequest, match="24/00"):
        n1.reserve(K1, 2)  # obsolete type
    n1.release(K1)
    assert target.reservation is None and target.keys == [K1, K2]
    assert [(s.asc, s.ascq) for s in n2.unit_attentions] == []  # not yet seen by node2
    n2.test_unit_ready()
    assert [(s.asc, s.ascq) for s in n2.unit_attentions] == [(0x2A, 0x04)]


def test_clear_drops_everything() -> None:
    target = FakePrTarget(descriptor_sense=True)
    (n1, _), (n2, _) = node(target, 1), node(target, 2)
    n1.register_and_ignore(K1)
    n2.register_and_ignore(K2)
    n1.reserve(K1)
    with pytest.raises(ReservationConflict):
        node(target, 3)[0].clear(K3)  # not registered
    n2.clear(K2)
    assert n1.read_keys().keys == () and target.reservation is None
    assert n1.unit_attentions[0].descriptor_format and n1.unit_attentions[0].ascq == 0x03


def test_all_registrants_reservation() -> None:
    target = FakePrTarget()
    (n1, _), (n2, t2), (n3, t3) = node(target, 1), node(target, 2), node(target, 3)
    for client, key in ((n1, K1), (n2, K2), (n3, K3)):
        client.register_and_ignore(key)
    n1.reserve(K1, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    assert n2.read_reservation().reservation == Reservation(0, 7)  # key 0: everyone holds it
    assert write(t2) == Status.GOOD
    n1.preempt(K1, K2, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)  # removes K2 only
    assert write(t2) == Status.RESERVATION_CONFLICT and write(t3) == Status.GOOD
    with pytest.raises(IllegalRequest, match="24/00"):
        n1.preempt(K1, 0, 0)  # taking the reservation over needs a valid TYPE
    n1.preempt(K1, 0, WERO)  # SARK 0 under all-registrants: everyone else out, WERO for us
    assert target.keys == [K1] and n1.read_reservation().reservation == Reservation(K1, WERO)


def test_preempt_errors() -> None:
    target = FakePrTarget()
    (n1, _), (n2, _) = node(target, 1), node(target, 2)
    n1.register_and_ignore(K1)
    n1.reserve(K1)
    with pytest.raises(ReservationConflict):
        n2.preempt_and_abort(K2, K1)  # node2 not registered
    n2.register_and_ignore(K2)
    with pytest.raises(ReservationConflict):
        n2.preempt_and_abort(K2, K3)  # no such registration
    with pytest.raises(IllegalRequest, match="INVALID FIELD IN PARAMETER LIST"):
        n2.preempt_and_abort(K2, 0)


def test_aptpl_survives_power_cycle_only_when_set() -> None:
    target = FakePrTarget()
    client, _ = node(target, 1)
    client.register_and_ignore(K1, aptpl=True)
    assert client.report_capabilities().ptpl_a
    target.power_cycle()
    assert client.read_keys().keys == (K1,)
    client.register_and_ignore(K1)  # APTPL 0 now
    target.power_cycle()
    assert client.read_keys().keys == ()
    with pytest.raises(IllegalRequest, match="26/00"):
        PrClient(FakePrTarget(ptpl_c=False).connect()).register_and_ignore(K1, aptpl=True)


def test_client_argument_checks() -> None:
    transport = FakePrTarget().connect()
    with pytest.raises(ValueError, match="ua_retries"):
        PrClient(transport, ua_retries=-1)
    with pytest.raises(ValueError, match="allocation_length"):
        PrClient(transport, allocation_length=4)
    assert PrClient(transport).name == transport.name
