"""PR CDBs, parameter lists and PR IN parsers: byte vectors from SPC-4, round trips, garbage."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestfence.errors import ProtocolError
from guestfence.scsi import pr
from guestfence.scsi.pr import (
    Capabilities,
    FullStatus,
    FullStatusDescriptor,
    PrIn,
    PrOut,
    PrType,
    ReadKeys,
    ReadReservation,
    Reservation,
    ScsiProtocolError,
)

K1, K2 = 0x6C9D0001, 0x6C9D0002
u64 = st.integers(0, pr.MAX_KEY)
u32 = st.integers(0, 2**32 - 1)


# --- CDBs and parameter lists -------------------------------------------------


def test_cdbs_are_byte_exact() -> None:
    assert pr.test_unit_ready_cdb() == bytes(6)
    # sg_persist's default ALLOCATION LENGTH 8192 = 2000h in bytes 7-8
    assert pr.pr_in_cdb(PrIn.READ_KEYS, 8192).hex() == "5e000000000000200000"
    assert pr.pr_in_cdb(PrIn.READ_FULL_STATUS, 0xFFFF).hex() == "5e030000000000ffff00"
    # the lab's pr_client.py layout: 5F sa (scope<<4|type) 00 00 00 00 00 18 00
    assert pr.pr_out_cdb(PrOut.PREEMPT_AND_ABORT, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                         24).hex() == "5f050500000000001800"
    assert pr.pr_out_cdb(PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, 0, 24).hex() == (
        "5f060000000000001800")
    # PARAMETER LIST LENGTH is 32 bits (bytes 5-8); SCOPE in the high nibble of byte 2
    assert pr.pr_out_cdb(PrOut.REGISTER, 0, 0x01020304, scope=2).hex() == "5f002000000102030400"


def test_basic_parameter_list_is_byte_exact() -> None:
    # fence_scsi step 5: sg_persist -o -A -T 5 -K 6c9d0002 -S 6c9d0001
    assert pr.pr_out_parameters(K2, K1).hex() == (
        "000000006c9d0002" "000000006c9d0001" "00000000" "00" "00" "0000")
    assert pr.pr_out_parameters(0, K1, aptpl=True)[20] == 0x01
    assert pr.pr_out_parameters(0, K1, all_tg_pt=True)[20] == 0x04
    assert len(pr.pr_out_parameters(K1, K2, aptpl=True, all_tg_pt=True)) == 24


def test_spec_i_pt_appends_transport_ids_with_their_length() -> None:
    tid = pr.iscsi_transport_id("iqn.2024-01.lab:node3")
    data = pr.pr_out_parameters(0, K1, spec_i_pt=True, transport_ids=(tid, tid))
    assert data[20] == 0x08
    assert struct.unpack_from(">I", data, 24)[0] == 2 * len(tid)
    assert data[28:] == tid + tid
    with pytest.raises(ValueError, match="SPEC_I_PT"):
        pr.pr_out_parameters(0, K1, transport_ids=(tid,))


@pytest.mark.parametrize(("call", "what"), [
    (lambda: pr.pr_in_cdb(0x20, 8), "service action"),
    (lambda: pr.pr_in_cdb(0, 0x10000), "allocation length"),
    (lambda: pr.pr_out_cdb(0, 16, 24), "type"),
    (lambda: pr.pr_out_cdb(0, 5, 24, scope=16), "scope"),
    (lambda: pr.pr_out_cdb(0, 5, -1), "parameter list length"),
    (lambda: pr.pr_out_parameters(2**64, 0), "reservation key"),
    (lambda: pr.pr_out_parameters(0, -1), "service action reservation key"),
])
def test_builders_reject_out_of_range_fields(call: object, what: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=what):
        call()


@given(u64, u64, st.booleans(), st.booleans())
def test_parameter_list_fields_land_where_spc4_says(rk: int, sark: int, aptpl: bool,
                                                    all_tg_pt: bool) -> None:
    data = pr.pr_out_parameters(rk, sark, aptpl=aptpl, all_tg_pt=all_tg_pt)
    assert struct.unpack(">QQ4xB3x", data) == (rk, sark, aptpl | all_tg_pt << 2)


def test_command_names_for_messages() -> None:
    assert pr.command_name(pr.pr_out_cdb(PrOut.PREEMPT_AND_ABORT, 5, 24)) == (
        "PERSISTENT RESERVE OUT / PREEMPT AND ABORT")
    assert pr.command_name(pr.pr_in_cdb(PrIn.READ_KEYS, 8)) == "PERSISTENT RESERVE IN / READ KEYS"
    assert pr.command_name(pr.pr_out_cdb(0x1F, 0, 24)) == (
        "PERSISTENT RESERVE OUT / SERVICE ACTION 1Fh")
    assert pr.command_name(pr.test_unit_ready_cdb()) == "TEST UNIT READY"
    assert pr.command_name(bytes([0x2A] + [0] * 9)) == "WRITE(10)"
    assert pr.command_name(b"\xc1") == "OPERATION CODE C1h"
    assert pr.command_name(b"") == "empty CDB"


def test_type_names() -> None:
    assert PrType(5).short == "WR_EX_RO"
    assert PrType(5).label == "Write Exclusive, registrants only"
    assert pr.type_name(5) == "Write Exclusive, registrants only (5h)"
    assert pr.type_name(2) == "obsolete type 2h"
    assert pr.type_name(0xB) == "reserved type Bh"
    assert [t for t in PrType if t.all_registrants] == [7, 8]


# --- READ KEYS ----------------------------------------------------------------


def test_read_keys() -> None:
    data = bytes.fromhex("00000003" "00000018" "00000000000000a1" "00000000000000b2"
                         "00000000000000a1")
    assert pr.parse_read_keys(data) == ReadKeys(3, (0xA1, 0xB2, 0xA1))  # one per nexus
    assert pr.parse_read_keys(bytes.fromhex("0000000700000000")) == ReadKeys(7, ())
    # bytes past ADDITIONAL LENGTH are buffer padding
    assert pr.parse_read_keys(bytes.fromhex("0000000700000000") + bytes(32)).keys == ()


@pytest.mark.parametrize(("hex_data", "message"), [
    ("", "need at least 8"),
    ("00000001000000", "need at least 8"),
    ("0000000100000010" "00000000000000a1", "truncated"),
    ("000000010000000c" "00000000000000a1" "00000000", "not a multiple of 8"),
])
def test_read_keys_rejects(hex_data: str, message: str) -> None:
    with pytest.raises(ScsiProtocolError, match=message):
        pr.parse_read_keys(bytes.fromhex(hex_data))


def test_protocol_error_is_the_project_protocol_error() -> None:
    assert issubclass(ScsiProtocolError, ProtocolError)


def test_required_length_reads_the_header() -> None:
    cut = bytes.fromhex("0000000100000018" "00000000000000a1")
    assert pr.required_length(PrIn.READ_KEYS, cut) == 32
    assert pr.required_length(PrIn.READ_KEYS, cut[:7]) is None
    assert pr.required_length(PrIn.REPORT_CAPABILITIES, b"\x00\x08") == 8
    assert pr.required_length(PrIn.REPORT_CAPABILITIES, b"\x00") is None


# --- READ RESERVATION ---------------------------------------------------------


def test_read_reservation() -> None:
    none = bytes.fromhex("0000000900000000")
    assert pr.parse_read_reservation(none) == ReadReservation(9, None)
    held = bytes.fromhex("00000009" "00000010" "000000006c9d0001" "00000000" "00" "05" "0000")
    result = pr.parse_read_reservation(held)
    assert result == ReadReservation(9, Reservation(K1, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY))
    assert result.reservation is not None
    assert result.reservation.type is PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    assert str(result.reservation) == "key 0x6c9d0001, Write Exclusive, registrants only (5h)"
    # an obsolete type and a non-LU scope are reported as sent, not refused
    odd = pr.parse_read_reservation(held[:21] + b"\x12" + held[22:]).reservation
    assert odd == Reservation(K1, 2, 1)


def test_read_reservation_rejects_other_lengths() -> None:
    with pytest.raises(ScsiProtocolError, match=r"expected 0 \(none\) or 16"):
        pr.parse_read_reservation(bytes.fromhex("0000000000000008") + bytes(8))
    with pytest.raises(ScsiProtocolError, match="truncated"):
        pr.parse_read_reservation(bytes.fromhex("0000000000000010") + bytes(8))


# --- REPORT CAPABILITIES ------------------------------------------------------


def test_report_capabilities_of_tgt() -> None:
    # recorded from tgt 1.0.85 (spec/lab-scsi-pacemaker.md)
    caps = pr.parse_report_capabilities(bytes.fromhex("00080080ea010000"))
    assert caps.tmv and not (caps.ptpl_c or caps.atp_c or caps.sip_c or caps.crh or caps.rlr_c)
    assert caps.supported_types == frozenset({1, 3, 5, 6, 7, 8})
    assert caps.supports(PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY) is True
    assert caps.encode().hex() == "00080080ea010000"


def test_report_capabilities_flags_and_mask_bits() -> None:
    caps = pr.parse_report_capabilities(bytes.fromhex("00089d" "d1" "2000" "0000"))
    assert caps == Capabilities(rlr_c=True, crh=True, sip_c=True, atp_c=True, ptpl_c=True,
                                tmv=True, allow_commands=5, ptpl_a=True, type_mask=0x2000)
    assert caps.supported_types == frozenset({PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY})
    assert caps.supports(1) is False
    no_mask = pr.parse_report_capabilities(bytes.fromhex("00080000ffff0000"))
    assert no_mask.supported_types is None  # TMV=0: the mask says nothing
    assert no_mask.supports(5) is None


@pytest.mark.parametrize(("hex_data", "message"), [
    ("0008008000", "need 8"), ("00040080ea010000", "LENGTH is 4")])
def test_report_capabilities_rejects(hex_data: str, message: str) -> None:
    with pytest.raises(ScsiProtocolError, match=message):
        pr.parse_report_capabilities(bytes.fromhex(hex_data))


# --- READ FULL STATUS and TransportIDs ----------------------------------------

TID1 = pr.iscsi_transport_id("iqn.2024-01.lab:node1", 0x23D000000001)


def test_iscsi_transport_id_layout() -> None:
    # FORMAT CODE 01b, PROTOCOL IDENTIFIER 5h; name padded with NULs to a multiple of 4
    assert TID1[0] == 0x45 and len(TID1) % 4 == 0
    name = b"iqn.2024-01.lab:node1,i,0x23d000000001\0"
    assert TID1[2:4] == (len(TID1) - 4).to_bytes(2, "big")
    assert TID1[4:4 + len(name)] == name
    short = pr.iscsi_transport_id("iqn.x")
    assert short[0] == 0x05 and len(short) == 24  # at least 24 bytes


def test_describe_transport_id() -> None:
    assert pr.describe_transport_id(TID1) == "iSCSI iqn.2024-01.lab:node1,i,0x23d000000001"
    fc = bytes([0x00]) + bytes(7) + bytes.fromhex("21000024ff4b81a0") + bytes(8)
    assert pr.describe_transport_id(fc) == "FC 0x21000024ff4b81a0"
    sas = bytes([0x06]) + bytes(3) + bytes.fromhex("5000c50012345678") + bytes(12)
    assert pr.describe_transport_id(sas) == "SAS 0x5000c50012345678"
    assert pr.describe_transport_id(b"\x0a\x00\x00\x00") == "protocol Ah TransportID 0a000000"
    assert pr.describe_transport_id(b"") == "TransportID (empty)"


def test_read_full_status() -> None:
    tid2 = pr.iscsi_transport_id("iqn.2024-01.lab:node2", 0x23D000000002)
    d1 = (struct.pack(">Q4xBB4xHI", K1, 0x01, 0x05, 1, len(TID1)) + TID1)
    d2 = (struct.pack(">Q4xBB4xHI", K2, 0x02, 0x00, 0, len(tid2)) + tid2)
    data = struct.pack(">II", 4, len(d1) + len(d2)) + d1 + d2
    status = pr.parse_read_full_status(data)
    assert status.generation == 4
    first, second = status.descriptors
    assert first == FullStatusDescriptor(K1, True, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 0,
                                         False, 1, TID1)
    assert first.initiator == "iSCSI iqn.2024-01.lab:node1,i,0x23d000000001"
    assert (second.key, second.holder, second.all_tg_pt) == (K2, False, True)
    assert status.encode() == data


def test_read_full_status_rejects_overruns() -> None:
    desc = struct.pack(">Q4xBB4xHI", K1, 1, 5, 1, len(TID1)) + TID1
    with pytest.raises(ScsiProtocolError, match="runs past"):
        pr.parse_read_full_status(struct.pack(">II", 0, len(desc) - 4) + desc)
    with pytest.raises(ScsiProtocolError, match="cut by ADDITIONAL LENGTH"):
        pr.parse_read_full_status(struct.pack(">II", 0, 20) + desc)
    with pytest.raises(ScsiProtocolError, match="truncated"):
        pr.parse_read_full_status(struct.pack(">II", 0, len(desc) + 8) + desc)


# --- properties -----------------------------------------------------------------

nibble = st.integers(0, 15)
descriptors = st.builds(
    FullStatusDescriptor, key=u64, holder=st.booleans(), type=nibble, scope=nibble,
    all_tg_pt=st.booleans(), relative_target_port=st.integers(0, 0xFFFF),
    transport_id=st.binary(max_size=64))


@given(u32, st.lists(u64, max_size=40))
def test_read_keys_round_trip(generation: int, keys: list[int]) -> None:
    value = ReadKeys(generation, tuple(keys))
    assert pr.parse_read_keys(value.encode()) == value


@given(u32, st.none() | st.builds(Reservation, u64, nibble, nibble))
def test_read_reservation_round_trip(generation: int, res: Reservation | None) -> None:
    value = ReadReservation(generation, res)
    assert pr.parse_read_reservation(value.encode()) == value


@given(st.builds(Capabilities, st.booleans(), st.booleans(), st.booleans(), st.booleans(),
                 st.booleans(), st.booleans(), st.integers(0, 7), st.booleans(),
                 st.integers(0, 0xFFFF)))
def test_report_capabilities_round_trip(caps: Capabilities) -> None:
    assert pr.parse_report_capabilities(caps.encode()) == caps


@given(u32, st.lists(descriptors, max_size=6))
def test_read_full_status_round_trip(generation: int, descs: list[FullStatusDescriptor]) -> None:
    value = FullStatus(generation, tuple(descs))
    assert pr.parse_read_full_status(value.encode()) == value


PARSERS = [pr.parse_read_keys, pr.parse_read_reservation, pr.parse_report_capabilities,
           pr.parse_read_full_status]


@pytest.mark.parametrize("parse", PARSERS)
@given(data=st.binary(max_size=120))
def test_parsers_raise_only_protocol_errors_on_garbage(parse: object, data: bytes) -> None:
    assert callable(parse)
    with contextlib.suppress(ScsiProtocolError):
        parse(data)


@given(u32, st.lists(u64, min_size=1, max_size=10), st.data())
def test_cut_read_keys_is_refused_not_misread(generation: int, keys: list[int],
                                              data: st.DataObject) -> None:
    full = ReadKeys(generation, tuple(keys)).encode()
    cut = data.draw(st.integers(0, len(full) - 1))
    with pytest.raises(ScsiProtocolError):
        pr.parse_read_keys(full[:cut])
