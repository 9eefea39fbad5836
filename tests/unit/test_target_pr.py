"""The target's persistent-reservation state machine (SPC-4 5.13, 6.15, 6.16)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfence.scsi import pr
from guestfence.scsi.pr import PrIn, PrOut, PrType
from guestfence.scsi.sense import SenseKey, decode_sense
from guestfence.scsi.transport import Status
from guestfence.target.lun import Nexus
from guestfence.target.pr import (
    UA_REGISTRATIONS_PREEMPTED,
    UA_RESERVATIONS_PREEMPTED,
    UA_RESERVATIONS_RELEASED,
    Outcome,
    Reservations,
)
from guestfence.target.pr_access import Access, classify

A = Nexus("iqn.2024-01.lab:node1", bytes.fromhex("23d000000001"))
B = Nexus("iqn.2024-01.lab:node2", bytes.fromhex("23d000000002"))
C = Nexus("iqn.2024-01.lab:node3", bytes.fromhex("23d000000003"))
K1, K2, K3 = 0x1111, 0x2222, 0x3333

READ_10 = bytes([0x28]) + bytes(9)
WRITE_10 = bytes([0x2A]) + bytes(9)
ALL_TYPES = [1, 3, 5, 6, 7, 8]


def out(r: Reservations, nexus: Nexus, sa: int, rk: int = 0, sark: int = 0, type: int = 0,
        *, scope: int = 0, **flags: bool) -> Outcome:
    params = pr.pr_out_parameters(rk, sark, **flags)  # type: ignore[arg-type]
    return r.pr_out(nexus, pr.pr_out_cdb(sa, type, len(params), scope), params)


def register(r: Reservations, nexus: Nexus, key: int, aptpl: bool = False) -> Outcome:
    o = out(r, nexus, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, 0, key, aptpl=aptpl)
    assert o.status == Status.GOOD
    return o


def reserve(r: Reservations, nexus: Nexus, key: int, type: int) -> Outcome:
    return out(r, nexus, PrOut.RESERVE, key, 0, type)


def read(r: Reservations, nexus: Nexus, sa: int, alloc: int = 8192) -> bytes:
    o = r.pr_in(nexus, pr.pr_in_cdb(sa, alloc))
    assert o.status == Status.GOOD
    return o.data


def keys(r: Reservations) -> pr.ReadKeys:
    return pr.parse_read_keys(read(r, A, PrIn.READ_KEYS))


def reservation(r: Reservations) -> pr.ReadReservation:
    return pr.parse_read_reservation(read(r, A, PrIn.READ_RESERVATION))


def sense_of(o: Outcome) -> tuple[int, int, int]:
    assert o.status == Status.CHECK_CONDITION
    s = decode_sense(o.sense)
    return s.key, s.asc, s.ascq


def illegal(o: Outcome, asc: int, ascq: int = 0) -> None:
    assert sense_of(o) == (SenseKey.ILLEGAL_REQUEST, asc, ascq)


# --- PR IN -------------------------------------------------------------------


def test_empty_state() -> None:
    r = Reservations()
    assert keys(r) == pr.ReadKeys(0, ())
    assert reservation(r) == pr.ReadReservation(0, None)
    assert pr.parse_read_full_status(read(r, A, PrIn.READ_FULL_STATUS)) == pr.FullStatus(0, ())


def test_read_keys_lists_one_key_per_nexus_in_registration_order() -> None:
    r = Reservations()
    register(r, B, K2)
    register(r, A, K1)
    register(r, C, K2)
    assert keys(r) == pr.ReadKeys(3, (K2, K1, K2))


def test_read_keys_truncated_reports_full_additional_length() -> None:
    # libiscsi PrinReadKeys.Truncate: ALLOCATION LENGTH 8 gives the header only.
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    data = read(r, A, PrIn.READ_KEYS, 8)
    assert data == struct.pack(">II", 2, 16)
    assert read(r, A, PrIn.READ_KEYS, 12) == struct.pack(">II", 2, 16) + bytes(4)
    assert read(r, A, PrIn.READ_KEYS, 0) == b""


def test_read_keys_simple_additional_length_matches_data() -> None:
    r = Reservations()
    register(r, A, K1)
    data = read(r, A, PrIn.READ_KEYS, 16384)
    assert struct.unpack(">I", data[4:8])[0] == len(data) - 8


@pytest.mark.parametrize("sa", range(4, 0x20))
def test_pr_in_reserved_service_actions_are_invalid_field_in_cdb(sa: int) -> None:
    # libiscsi PrinServiceactionRange: SA 0-3 succeed, 4-1Fh fail, and not with
    # 20/00 (which it reads as "PR IN not implemented").
    o = Reservations().pr_in(A, pr.pr_in_cdb(sa, 16384))
    illegal(o, 0x24)
    pointer = decode_sense(o.sense).field_pointer
    assert pointer is not None and (pointer.in_cdb, pointer.byte, pointer.bit) == (True, 1, 4)


@pytest.mark.parametrize("sa", range(4))
def test_pr_in_defined_service_actions_succeed(sa: int) -> None:
    assert Reservations().pr_in(A, pr.pr_in_cdb(sa, 1)).status == Status.GOOD


def test_report_capabilities() -> None:
    r = Reservations()
    caps = pr.parse_report_capabilities(read(r, A, PrIn.REPORT_CAPABILITIES))
    assert caps == pr.Capabilities(crh=False, sip_c=False, atp_c=True, ptpl_c=True, tmv=True,
                                   allow_commands=3, ptpl_a=False, type_mask=0x8000 | 0x4000
                                   | 0x2000 | 0x0800 | 0x0200 | 0x0001)
    assert caps.supported_types == frozenset(PrType)
    register(r, A, K1, aptpl=True)
    assert pr.parse_report_capabilities(read(r, A, PrIn.REPORT_CAPABILITIES)).ptpl_a
    assert len(read(r, A, PrIn.REPORT_CAPABILITIES, 4)) == 4


def test_report_capabilities_then_every_advertised_type() -> None:
    # libiscsi PrinReportCapabilities: reserve, verify and release every type in the mask.
    r = Reservations()
    register(r, A, K1)
    caps = pr.parse_report_capabilities(read(r, A, PrIn.REPORT_CAPABILITIES))
    assert caps.supported_types is not None
    for t in sorted(caps.supported_types):
        assert reserve(r, A, K1, t).status == Status.GOOD
        expected = 0 if PrType(t).all_registrants else K1
        assert reservation(r).reservation == pr.Reservation(expected, t)
        assert out(r, A, PrOut.RELEASE, K1, 0, t).status == Status.GOOD
        assert reservation(r).reservation is None
    assert out(r, A, PrOut.REGISTER, K1, 0).status == Status.GOOD
    assert keys(r).keys == ()


def test_read_full_status_has_iscsi_transport_ids_with_isid() -> None:
    r = Reservations()
    register(r, A, K1)
    out(r, B, PrOut.REGISTER, 0, K2, all_tg_pt=True)
    reserve(r, A, K1, 5)
    status = pr.parse_read_full_status(read(r, A, PrIn.READ_FULL_STATUS))
    assert status.generation == 2
    a, b = status.descriptors
    assert (a.key, a.holder, a.type, a.all_tg_pt, a.relative_target_port) == (K1, True, 5,
                                                                              False, 1)
    assert a.transport_id == pr.iscsi_transport_id(A.initiator, 0x23D000000001)
    assert a.transport_id[0] == 0x45  # FORMAT CODE 01b, iSCSI
    assert a.initiator == "iSCSI iqn.2024-01.lab:node1,i,0x23d000000001"
    assert (b.key, b.holder, b.type, b.all_tg_pt) == (K2, False, 0, True)


def test_read_full_status_all_registrants_marks_every_registrant_holder() -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    reserve(r, B, K2, 8)
    status = pr.parse_read_full_status(read(r, A, PrIn.READ_FULL_STATUS))
    assert [(d.holder, d.type) for d in status.descriptors] == [(True, 8), (True, 8)]
    data = read(r, A, PrIn.READ_FULL_STATUS, 10)
    assert len(data) == 10 and struct.unpack(">I", data[4:8])[0] > 2


# --- REGISTER ------------------------------------------------------------------


def test_register_simple() -> None:
    # libiscsi ProutRegister.Simple
    r = Reservations()
    register(r, A, K1)
    assert keys(r).keys == (K1,)
    # REGISTER with RK 0 from a registered nexus: RESERVATION CONFLICT
    assert out(r, A, PrOut.REGISTER, 0, K1 + 1).status == Status.RESERVATION_CONFLICT
    assert out(r, A, PrOut.REGISTER, K1, 0).status == Status.GOOD
    assert keys(r) == pr.ReadKeys(2, ())


def test_register_rules() -> None:
    r = Reservations()
    assert out(r, A, PrOut.REGISTER, K1, K2).status == Status.RESERVATION_CONFLICT
    assert r.generation == 0
    assert out(r, A, PrOut.REGISTER, 0, 0).status == Status.GOOD  # no-op, still counted
    assert r.generation == 1 and keys(r).keys == ()
    assert out(r, A, PrOut.REGISTER, 0, K1).status == Status.GOOD
    assert out(r, A, PrOut.REGISTER, K1, K2).status == Status.GOOD  # change key
    assert keys(r).keys == (K2,)
    assert out(r, A, PrOut.REGISTER, K1, K3).status == Status.RESERVATION_CONFLICT
    assert out(r, A, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, 0xDEAD, K3).good
    assert keys(r) == pr.ReadKeys(4, (K3,))


def test_relogin_with_same_initiator_and_isid_keeps_registration() -> None:
    r = Reservations()
    register(r, A, K1)
    again = Nexus(A.initiator, bytes(A.isid), A.target_port)
    assert out(r, again, PrOut.REGISTER, K1, K2).good
    other_isid = Nexus(A.initiator, bytes.fromhex("23d000000099"))
    assert out(r, other_isid, PrOut.REGISTER, K2, K3).status == Status.RESERVATION_CONFLICT


def test_all_tg_pt_registration_covers_other_target_ports() -> None:
    r = Reservations()
    assert out(r, A, PrOut.REGISTER, 0, K1, all_tg_pt=True).good
    other_port = Nexus(A.initiator, A.isid, 2)
    assert out(r, other_port, PrOut.RESERVE, K1, 0, 1).good
    assert r.is_holder(A) and r.is_holder(other_port)
    plain = Reservations()
    register(plain, A, K1)
    assert out(plain, other_port, PrOut.RESERVE, K1, 0, 1).status == Status.RESERVATION_CONFLICT


def test_unregistering_the_holder_releases_the_reservation() -> None:
    for t, ua in [(1, False), (3, False), (5, True), (6, True)]:
        r = Reservations()
        register(r, A, K1)
        register(r, B, K2)
        reserve(r, A, K1, t)
        o = out(r, A, PrOut.REGISTER, K1, 0)
        assert o.good and reservation(r).reservation is None
        assert dict(o.unit_attentions) == ({B: UA_RESERVATIONS_RELEASED} if ua else {})


@pytest.mark.parametrize("t", [7, 8])
def test_all_registrants_reservation_survives_while_a_registrant_remains(t: int) -> None:
    # libiscsi ProutReserve.Ownership{WEAR,EAAR}
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    assert reserve(r, A, K1, t).good
    o = out(r, A, PrOut.REGISTER, K1, 0)
    assert o.good and not o.unit_attentions
    assert reservation(r).reservation == pr.Reservation(0, t)
    assert out(r, B, PrOut.RELEASE, K2, 0, t).good
    assert reservation(r).reservation is None
    assert out(r, B, PrOut.REGISTER, K2, 0).good


def test_all_registrants_reservation_ends_with_the_last_registrant() -> None:
    r = Reservations()
    register(r, A, K1)
    reserve(r, A, K1, 7)
    out(r, A, PrOut.REGISTER, K1, 0)
    assert reservation(r).reservation is None


@pytest.mark.parametrize("t", [1, 3, 5, 6])
def test_ownership_single_holder(t: int) -> None:
    # libiscsi ProutReserve.Ownership{EA,WE,EARO,WERO}
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    reserve(r, A, K1, t)
    assert out(r, A, PrOut.REGISTER, K1, 0).good
    assert reservation(r).reservation is None
    assert out(r, B, PrOut.REGISTER, K2, 0).good


# --- parameter list and CDB checks -------------------------------------------


def test_parameter_list_length_must_be_24() -> None:
    r = Reservations()
    params = pr.pr_out_parameters(0, K1)
    for length in (0, 23, 25, 32):
        data = params.ljust(length, b"\0")[:length]
        o = r.pr_out(A, pr.pr_out_cdb(PrOut.REGISTER, 0, length), data)
        illegal(o, 0x1A)
    # fewer bytes delivered than the CDB says
    illegal(r.pr_out(A, pr.pr_out_cdb(PrOut.REGISTER, 0, 24), params[:20]), 0x1A)
    assert r.generation == 0 and keys(r).keys == ()


def test_spec_i_pt_is_not_supported() -> None:
    r = Reservations()
    tid = pr.iscsi_transport_id(B.initiator, 0x23D000000002)
    params = pr.pr_out_parameters(0, K1, spec_i_pt=True, transport_ids=(tid,))
    o = r.pr_out(A, pr.pr_out_cdb(PrOut.REGISTER, 0, len(params)), params)
    illegal(o, 0x26)
    pointer = decode_sense(o.sense).field_pointer
    assert pointer is not None and (pointer.in_cdb, pointer.byte, pointer.bit) == (False, 20, 3)


@pytest.mark.parametrize("sa", [0x08, 0x09, 0x1F])
def test_unsupported_pr_out_service_actions(sa: int) -> None:
    params = pr.pr_out_parameters(0, K1)
    o = Reservations().pr_out(A, pr.pr_out_cdb(sa, 1, 24), params)
    illegal(o, 0x24)
    pointer = decode_sense(o.sense).field_pointer
    assert pointer is not None and (pointer.byte, pointer.bit) == (1, 4)


def test_short_cdbs() -> None:
    r = Reservations()
    illegal(r.pr_in(A, b"\x5e\x00"), 0x24)
    illegal(r.pr_out(A, b"\x5f", b""), 0x24)


@pytest.mark.parametrize("sa", [PrOut.RESERVE, PrOut.RELEASE])
def test_scope_and_type_are_checked(sa: int) -> None:
    r = Reservations()
    register(r, A, K1)
    for t in (0, 2, 4, 9, 15):
        o = out(r, A, sa, K1, 0, t)
        illegal(o, 0x24)
        fp = decode_sense(o.sense).field_pointer
        assert fp is not None and (fp.byte, fp.bit) == (2, 3)
    o = out(r, A, sa, K1, 0, 5, scope=1)
    illegal(o, 0x24)
    fp = decode_sense(o.sense).field_pointer
    assert fp is not None and (fp.byte, fp.bit) == (2, 7)


# --- RESERVE / RELEASE --------------------------------------------------------


def test_reserve_simple_every_type() -> None:
    # libiscsi ProutReserve.Simple
    r = Reservations()
    register(r, A, K1)
    gen = r.generation
    for t in ALL_TYPES:
        assert reserve(r, A, K1, t).good
        assert reserve(r, A, K1, t).good  # again, same type: no change
        assert reservation(r).reservation == pr.Reservation(
            0 if PrType(t).all_registrants else K1, t)
        assert out(r, A, PrOut.RELEASE, K1, 0, t).good
    assert r.generation == gen  # RESERVE and RELEASE do not count


def test_reserve_conflicts() -> None:
    r = Reservations()
    assert reserve(r, A, 0, 1).status == Status.RESERVATION_CONFLICT  # unregistered
    register(r, A, K1)
    register(r, B, K2)
    assert reserve(r, A, K2, 1).status == Status.RESERVATION_CONFLICT  # wrong key
    assert reserve(r, A, K1, 1).good
    assert reserve(r, A, K1, 3).status == Status.RESERVATION_CONFLICT  # holder, other type
    assert reserve(r, B, K2, 1).status == Status.RESERVATION_CONFLICT  # not the holder
    out(r, A, PrOut.RELEASE, K1, 0, 1)
    reserve(r, A, K1, 7)
    assert reserve(r, B, K2, 7).good  # every registrant holds an all-registrants one
    assert reserve(r, B, K2, 8).status == Status.RESERVATION_CONFLICT


def test_release_rules() -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    assert out(r, A, PrOut.RELEASE, K1, 0, 5).good  # nothing reserved
    reserve(r, A, K1, 5)
    assert out(r, B, PrOut.RELEASE, K2, 0, 5).good  # not the holder: no effect
    assert reservation(r).reservation is not None
    assert out(r, C, PrOut.RELEASE, 0, 0, 5).status == Status.RESERVATION_CONFLICT
    assert out(r, A, PrOut.RELEASE, K2, 0, 5).status == Status.RESERVATION_CONFLICT
    illegal(out(r, A, PrOut.RELEASE, K1, 0, 6), 0x26, 0x04)
    o = out(r, A, PrOut.RELEASE, K1, 0, 5)
    assert o.good and dict(o.unit_attentions) == {B: UA_RESERVATIONS_RELEASED}
    assert keys(r).keys == (K1, K2)


@pytest.mark.parametrize(("t", "ua"), [(1, False), (3, False), (5, True), (6, True),
                                       (7, True), (8, True)])
def test_release_unit_attentions(t: int, ua: bool) -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    reserve(r, A, K1, t)
    o = out(r, A, PrOut.RELEASE, K1, 0, t)
    assert dict(o.unit_attentions) == ({B: UA_RESERVATIONS_RELEASED} if ua else {})


# --- CLEAR --------------------------------------------------------------------


def test_clear_simple() -> None:
    # libiscsi ProutClear.Simple
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    old = keys(r).generation
    assert reserve(r, A, K1, 3).good
    assert reservation(r).reservation == pr.Reservation(K1, 3)
    o = out(r, A, PrOut.CLEAR, K1)
    assert o.good and dict(o.unit_attentions) == {B: UA_RESERVATIONS_PREEMPTED}
    assert reservation(r).reservation is None
    assert keys(r) == pr.ReadKeys(old + 1, ())


def test_clear_needs_a_registered_key() -> None:
    r = Reservations()
    register(r, A, K1)
    assert out(r, B, PrOut.CLEAR, 0).status == Status.RESERVATION_CONFLICT
    assert out(r, A, PrOut.CLEAR, K2).status == Status.RESERVATION_CONFLICT
    assert keys(r).keys == (K1,)


# --- PREEMPT ------------------------------------------------------------------


def test_preempt_removes_registration() -> None:
    # libiscsi ProutPreempt.RemoveRegistration
    r = Reservations()
    register(r, A, K1)
    assert out(r, A, PrOut.CLEAR, K1).good
    register(r, A, K1)
    register(r, B, K2)
    old = keys(r).generation
    o = out(r, B, PrOut.PREEMPT, K2, K1, 3)
    assert o.good and dict(o.unit_attentions) == {A: UA_REGISTRATIONS_PREEMPTED}
    assert not o.abort_nexuses
    assert keys(r) == pr.ReadKeys(old + 1, (K2,))
    assert reservation(r).reservation is None  # no reservation was preempted, none made


def test_fencing_sequence_preempt_and_abort_type_5() -> None:
    r = Reservations()
    for n, k in ((A, K1), (B, K2), (C, K3)):
        register(r, n, k)
    assert reserve(r, A, K1, 5).good
    for n in (A, B, C):
        assert r.check_access(n, WRITE_10)
    # B fences C
    o = out(r, B, PrOut.PREEMPT_AND_ABORT, K2, K3, 5)
    assert o.good
    assert o.abort_nexuses == frozenset({C})
    assert dict(o.unit_attentions) == {C: UA_REGISTRATIONS_PREEMPTED}
    assert not r.check_access(C, WRITE_10)
    assert r.check_access(C, READ_10)  # type 5: the fenced node may still read
    assert r.check_access(A, WRITE_10) and r.check_access(B, WRITE_10)
    assert keys(r).keys == (K1, K2)
    assert reservation(r).reservation == pr.Reservation(K1, 5)
    # B fences the holder A: the reservation moves to B
    o = out(r, B, PrOut.PREEMPT_AND_ABORT, K2, K1, 5)
    assert o.abort_nexuses == frozenset({A})
    assert reservation(r).reservation == pr.Reservation(K2, 5)
    assert not r.check_access(A, WRITE_10) and r.check_access(B, WRITE_10)
    # the victim's PR OUT with its old key conflicts; it can re-register only by IGNORE
    assert out(r, C, PrOut.REGISTER, K3, K3).status == Status.RESERVATION_CONFLICT


def test_preempt_holder_removes_all_nexuses_with_that_key_but_the_sender() -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K1)
    register(r, C, K2)
    reserve(r, A, K1, 1)
    o = out(r, B, PrOut.PREEMPT, K1, K1, 3)  # RK == SARK, sender not the holder
    assert o.good and dict(o.unit_attentions) == {
        A: UA_REGISTRATIONS_PREEMPTED, C: UA_RESERVATIONS_RELEASED}
    assert r.registrations == {B: K1, C: K2}
    assert reservation(r).reservation == pr.Reservation(K1, 3)
    assert r.is_holder(B)


def test_preempt_non_holder_key_removes_the_sender_too() -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    register(r, C, K2)
    reserve(r, A, K1, 5)
    o = out(r, B, PrOut.PREEMPT, K2, K2, 1)
    assert o.good and dict(o.unit_attentions) == {C: UA_REGISTRATIONS_PREEMPTED}
    assert r.registrations == {A: K1}
    assert reservation(r).reservation == pr.Reservation(K1, 5)  # type ignored


def test_preempt_errors() -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    assert out(r, C, PrOut.PREEMPT, 0, K1, 5).status == Status.RESERVATION_CONFLICT
    assert out(r, A, PrOut.PREEMPT, K1, K3, 5).status == Status.RESERVATION_CONFLICT
    illegal(out(r, A, PrOut.PREEMPT, K1, 0, 5), 0x26)
    reserve(r, A, K1, 5)
    illegal(out(r, A, PrOut.PREEMPT, K1, 0, 5), 0x26)
    illegal(out(r, B, PrOut.PREEMPT, K2, K1, 2), 0x24)  # creating a reservation of bad type
    assert r.generation == 2 and r.registrations == {A: K1, B: K2}


def test_preempt_all_registrants_with_key_zero() -> None:
    r = Reservations()
    for n, k in ((A, K1), (B, K2), (C, K3)):
        register(r, n, k)
    reserve(r, A, K1, 7)
    o = out(r, B, PrOut.PREEMPT_AND_ABORT, K2, 0, 5)
    assert o.abort_nexuses == frozenset({A, C})
    assert dict(o.unit_attentions) == {A: UA_REGISTRATIONS_PREEMPTED,
                                       C: UA_REGISTRATIONS_PREEMPTED}
    assert r.registrations == {B: K2}
    assert reservation(r).reservation == pr.Reservation(K2, 5)


def test_preempt_all_registrants_with_a_key_removes_registrations_only() -> None:
    r = Reservations()
    for n, k in ((A, K1), (B, K2), (C, K3)):
        register(r, n, k)
    reserve(r, A, K1, 8)
    o = out(r, B, PrOut.PREEMPT, K2, K1, 5)
    assert dict(o.unit_attentions) == {A: UA_REGISTRATIONS_PREEMPTED}
    assert reservation(r).reservation == pr.Reservation(0, 8)
    assert r.check_access(B, WRITE_10) and not r.check_access(A, READ_10)


# --- REGISTER AND MOVE ---------------------------------------------------------


def move(r: Reservations, nexus: Nexus, rk: int, sark: int, dest: Nexus, type: int = 5,
         *, unreg: bool = False, port: int = 1, tid: bytes | None = None) -> Outcome:
    if tid is None:
        tid = pr.iscsi_transport_id(dest.initiator, int.from_bytes(dest.isid, "big"))
    params = struct.pack(">QQxBHI", rk, sark, unreg << 1, port, len(tid)) + tid
    return r.pr_out(nexus, pr.pr_out_cdb(PrOut.REGISTER_AND_MOVE, type, len(params)), params)


def test_register_and_move() -> None:
    r = Reservations()
    register(r, A, K1)
    reserve(r, A, K1, 5)
    gen = r.generation
    assert move(r, A, K1, K2, B, unreg=True).good
    assert r.registrations == {B: K2}
    assert reservation(r).reservation == pr.Reservation(K2, 5)
    assert r.generation == gen + 1


def test_register_and_move_errors() -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, C, K3)
    assert move(r, A, K1, K2, B).status == Status.RESERVATION_CONFLICT  # nothing reserved
    reserve(r, A, K1, 5)
    assert move(r, C, K3, K2, B).status == Status.RESERVATION_CONFLICT  # not the holder
    illegal(move(r, A, K1, 0, B), 0x26)
    illegal(move(r, A, K1, K2, A), 0x26)  # to itself
    illegal(move(r, A, K1, K2, B, port=9), 0x26)
    illegal(move(r, A, K1, K2, B, tid=pr.iscsi_transport_id(B.initiator)), 0x26)
    assert move(r, A, K1, K2, C).good  # registered destination keeps its key
    assert r.registrations == {A: K1, C: K3}
    assert reservation(r).reservation == pr.Reservation(K3, 5)
    params = struct.pack(">QQxBHI", K3, K1, 0, 1, 100)
    illegal(r.pr_out(C, pr.pr_out_cdb(PrOut.REGISTER_AND_MOVE, 5, len(params)), params), 0x1A)


# --- access -------------------------------------------------------------------


@pytest.mark.parametrize(("t", "reg_read", "reg_write", "unreg_read", "unreg_write"), [
    (3, False, False, False, False),  # libiscsi ProutReserve.AccessEA
    (1, True, False, True, False),  # WE
    (6, True, True, False, False),  # EARO
    (5, True, True, True, False),  # WERO
    (8, True, True, False, False),  # EAAR
    (7, True, True, True, False),  # WEAR
])
def test_reserve_access(t: int, reg_read: bool, reg_write: bool, unreg_read: bool,
                        unreg_write: bool) -> None:
    r = Reservations()
    register(r, A, K1)
    register(r, B, K2)
    assert reserve(r, A, K1, t).good
    assert r.check_access(A, READ_10) and r.check_access(A, WRITE_10)
    assert r.check_access(B, READ_10) == reg_read
    assert r.check_access(B, WRITE_10) == reg_write
    assert out(r, B, PrOut.REGISTER, K2, 0).good
    assert r.check_access(B, READ_10) == unreg_read
    assert r.check_access(B, WRITE_10) == unreg_write
    assert out(r, A, PrOut.RELEASE, K1, 0, t).good
    assert out(r, A, PrOut.REGISTER, K1, 0).good
    assert r.check_access(B, WRITE_10)


@pytest.mark.parametrize("cdb", [
    bytes([0x12, 0, 0, 0, 36, 0]), bytes([0xA0]) + bytes(11), bytes(6),
    bytes([0x03, 0, 0, 0, 18, 0]), pr.pr_in_cdb(0, 8), pr.pr_out_cdb(0, 0, 24),
    bytes([0x25]) + bytes(9), bytes([0x9E, 0x10]) + bytes(14), bytes([0xA3, 0x0A]) + bytes(10),
])
def test_always_allowed_commands(cdb: bytes) -> None:
    r = Reservations()
    register(r, A, K1)
    reserve(r, A, K1, 3)
    assert classify(cdb) is Access.ALLOWED
    assert r.check_access(B, cdb)


@pytest.mark.parametrize("op", [0x0A, 0x2A, 0xAA, 0x8A, 0x41, 0x93, 0x35, 0x91, 0x42, 0x89,
                                0x2E, 0x04, 0x15, 0x55, 0x3B, 0xC0])
def test_write_class_commands_conflict(op: int) -> None:
    r = Reservations()
    register(r, A, K1)
    reserve(r, A, K1, 1)
    cdb = bytes([op]) + bytes(15)
    assert classify(cdb) is Access.CONFLICT
    assert not r.check_access(B, cdb) and r.check_access(A, cdb)


@pytest.mark.parametrize("op", [0x08, 0x28, 0xA8, 0x88, 0x2F, 0x34, 0x1A, 0x5A])
def test_read_class_commands(op: int) -> None:
    cdb = bytes([op]) + bytes(15)
    for t, ok in ((1, True), (3, False), (5, True), (6, False)):
        r = Reservations()
        register(r, A, K1)
        reserve(r, A, K1, t)
        assert r.check_access(C, cdb) == ok


def test_start_stop_unit_and_spc2_reserve() -> None:
    r = Reservations()
    assert r.check_access(B, bytes([0x16]) + bytes(5))  # RESERVE(6) without PR state
    register(r, A, K1)
    assert not r.check_access(A, bytes([0x16]) + bytes(5))  # CRH=0: conflict once registered
    reserve(r, A, K1, 1)
    assert r.check_access(B, bytes([0x1B, 0, 0, 0, 0x01, 0]))
    assert not r.check_access(B, bytes([0x1B, 0, 0, 0, 0x00, 0]))
    assert not r.check_access(B, b"")


# --- APTPL --------------------------------------------------------------------


def test_aptpl_round_trip() -> None:
    r = Reservations()
    register(r, A, K1, aptpl=True)
    out(r, B, PrOut.REGISTER, 0, K2, all_tg_pt=True, aptpl=True)
    reserve(r, A, K1, 6)
    assert r.persistent
    back = Reservations.from_bytes(r.to_bytes())
    assert back.persistent and back.generation == 0  # a power on resets PRGENERATION
    assert back.registrations == r.registrations
    assert back.reservation == pr.Reservation(K1, 6)
    assert back.is_holder(A) and not back.is_holder(B)
    assert pr.parse_read_full_status(read(back, A, PrIn.READ_FULL_STATUS)).descriptors == \
        pr.parse_read_full_status(read(r, A, PrIn.READ_FULL_STATUS)).descriptors
    assert back.to_bytes() == r.to_bytes()


def test_aptpl_all_registrants_round_trip() -> None:
    r = Reservations()
    register(r, A, K1, aptpl=True)
    reserve(r, A, K1, 8)
    assert Reservations.from_bytes(r.to_bytes()).reservation == pr.Reservation(0, 8)


def test_last_aptpl_zero_means_nothing_survives() -> None:
    r = Reservations()
    register(r, A, K1, aptpl=True)
    register(r, B, K2, aptpl=False)
    assert not r.persistent
    back = Reservations.from_bytes(r.to_bytes())
    assert back.registrations == {} and not back.persistent


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"version": 2}',
                                  b'{"version": 1, "aptpl": true, "registrations": [{}]}',
                                  b'{"version": 1, "aptpl": true, "registrations": [],'
                                  b' "reservation": {"type": 5, "holder": 0}}'])
def test_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        Reservations.from_bytes(data)


# --- random sequences ------------------------------------------------------------

NEXUSES = [A, B, C, Nexus(A.initiator, A.isid, 2)]
_key = st.sampled_from([0, K1, K2, K3, 2**64 - 1])
_pr_out = st.tuples(
    st.sampled_from(NEXUSES), st.integers(0, 0x1F), st.integers(0, 0xFF), _key, _key,
    st.integers(0, 0xFF), st.sampled_from([24, 24, 24, 0, 23, 28, 60]),
    st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.lists(_pr_out, max_size=25), st.binary(max_size=16))
def test_random_sequences_never_raise(steps: list[tuple[Nexus, int, int, int, int, int, int,
                                                        bytes]], junk_cdb: bytes) -> None:
    r = Reservations()
    for nexus, sa, scope_type, rk, sark, flags, length, tail in steps:
        params = struct.pack(">QQ4xB3x", rk, sark, flags) + tail
        cdb = struct.pack(">BBB2xIB", 0x5F, sa, scope_type, length, 0)
        before = r.to_bytes(), r.generation
        o = r.pr_out(nexus, cdb, params)
        assert o.status in (Status.GOOD, Status.CHECK_CONDITION, Status.RESERVATION_CONFLICT)
        if not o.good:
            assert (r.to_bytes(), r.generation) == before and not o.unit_attentions
        assert nexus not in o.unit_attentions
        # invariants
        res = r.reservation
        if res is not None:
            assert r.registrations
            if not PrType(res.type).all_registrants:
                assert res.key in r.registrations.values()
        for sa_in in range(5):
            r.pr_in(nexus, pr.pr_in_cdb(sa_in, 8192))
        r.check_access(nexus, junk_cdb)
        r.pr_in(nexus, junk_cdb)
        r.pr_out(nexus, junk_cdb, tail)
        assert Reservations.from_bytes(r.to_bytes()).registrations == (
            r.registrations if r.persistent else {})
