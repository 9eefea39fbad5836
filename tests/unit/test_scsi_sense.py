"""Sense decoding (fixed and descriptor), readable text, and check()'s error mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestfence.errors import GuestfenceError
from guestfence.scsi.pr import ScsiProtocolError
from guestfence.scsi.sense import (
    BadStatus,
    CheckCondition,
    FieldPointer,
    IllegalRequest,
    ReservationConflict,
    ScsiError,
    Sense,
    SenseKey,
    UnitAttention,
    check,
    decode_sense,
)
from guestfence.scsi.transport import ScsiResult, Status

DEV = "iscsi://127.0.0.1/iqn.2024-01.lab.fence:pr/1"
PAA = "PERSISTENT RESERVE OUT / PREEMPT AND ABORT"


def fixed(key: int, asc: int, ascq: int, sks: bytes = bytes(3), code: int = 0x70) -> bytes:
    """18-byte fixed format: ADDITIONAL SENSE LENGTH 0Ah, ASC/ASCQ at 12/13, SKS at 15-17."""
    return bytes([code, 0, key, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, asc, ascq, 0]) + sks


def test_fixed_sense_as_tgt_sends_it() -> None:
    sense = decode_sense(fixed(0x5, 0x24, 0x00))
    assert sense == Sense(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
    assert not sense.descriptor_format and sense.field_pointer is None
    assert sense.describe() == "ILLEGAL REQUEST: INVALID FIELD IN CDB (24/00)"


def test_fixed_sense_information_and_field_pointer() -> None:
    # VALID + INFORMATION 12345678h; SKSV, C/D=1, BPV, bit 4, FIELD POINTER 0002h
    data = bytearray(fixed(0x5, 0x24, 0x00, bytes([0xCC, 0x00, 0x02])))
    data[0] |= 0x80
    data[3:7] = bytes.fromhex("12345678")
    sense = decode_sense(bytes(data))
    assert sense.information == 0x12345678
    assert sense.field_pointer == FieldPointer(in_cdb=True, byte=2, bit=4)
    # parameter-list pointer without a bit pointer
    sense = decode_sense(fixed(0x5, 0x26, 0x00, bytes([0x80, 0x00, 0x14])))
    assert sense.field_pointer == FieldPointer(in_cdb=False, byte=20, bit=None)


def test_fixed_sense_ignores_bytes_past_additional_length() -> None:
    # ADDITIONAL SENSE LENGTH 0: ASC/ASCQ in the buffer are padding, not sense
    data = bytes([0x70, 0, 0x6, 0, 0, 0, 0, 0]) + bytes([0] * 4) + b"\x2a\x05" + bytes(4)
    assert decode_sense(data) == Sense(SenseKey.UNIT_ATTENTION)
    assert decode_sense(b"\x70\x00\x02") == Sense(SenseKey.NOT_READY)  # key only


def test_descriptor_sense() -> None:
    assert decode_sense(bytes.fromhex("7206 2a05 000000 00")) == Sense(
        SenseKey.UNIT_ATTENTION, 0x2A, 0x05, response_code=0x72)
    # information descriptor (00h) and sense key specific descriptor (02h)
    info = bytes.fromhex("000a 8000 0000000000001000")
    sks = bytes.fromhex("0206 0000 c00001 00")
    data = bytes([0x72, 0x05, 0x24, 0x00, 0, 0, 0, len(info + sks)]) + info + sks
    sense = decode_sense(data)
    assert sense.descriptor_format
    assert sense.information == 0x1000
    assert sense.field_pointer == FieldPointer(in_cdb=True, byte=1, bit=None)


def test_descriptor_sense_keeps_key_when_descriptors_are_cut() -> None:
    data = bytes.fromhex("7205 2400 000000 0a" "020600") + bytes(3)  # descriptor claims 8
    sense = decode_sense(data)
    assert (sense.key, sense.asc, sense.ascq, sense.sense_key_specific) == (5, 0x24, 0, None)


def test_deferred_sense() -> None:
    sense = decode_sense(fixed(0x3, 0x0C, 0x00, code=0x71))
    assert sense.deferred
    assert sense.describe() == (
        "MEDIUM ERROR: UNKNOWN ADDITIONAL SENSE CODE (0C/00) [deferred error]")
    assert decode_sense(bytes.fromhex("73 04 44 00 00 00 00 00")).deferred


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"), (b"\x70\x00", "no sense key"), (b"\x72\x05\x24", "too short"),
    (b"\x7f\x00\x05" + bytes(15), "response code 7Fh"), (bytes(18), "response code 00h")])
def test_unreadable_sense(data: bytes, message: str) -> None:
    with pytest.raises(ScsiProtocolError, match=message):
        decode_sense(data)


@pytest.mark.parametrize(("key", "asc", "ascq", "text"), [
    (5, 0x24, 0x00, "ILLEGAL REQUEST: INVALID FIELD IN CDB (24/00)"),
    (5, 0x20, 0x00, "ILLEGAL REQUEST: INVALID COMMAND OPERATION CODE (20/00)"),
    (5, 0x26, 0x04, "ILLEGAL REQUEST: INVALID RELEASE OF PERSISTENT RESERVATION (26/04)"),
    (5, 0x1A, 0x00, "ILLEGAL REQUEST: PARAMETER LIST LENGTH ERROR (1A/00)"),
    (6, 0x2A, 0x03, "UNIT ATTENTION: RESERVATIONS PREEMPTED (2A/03)"),
    (6, 0x2A, 0x04, "UNIT ATTENTION: RESERVATIONS RELEASED (2A/04)"),
    (6, 0x2A, 0x05, "UNIT ATTENTION: REGISTRATIONS PREEMPTED (2A/05)"),
    (6, 0x29, 0x00, "UNIT ATTENTION: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00)"),
    (6, 0x29, 0x07, "UNIT ATTENTION: I_T NEXUS LOSS OCCURRED (29/07)"),
    (2, 0x04, 0x0B,
     "NOT READY: LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE (04/0B)"),
    (7, 0x44, 0x01, "DATA PROTECT: PERSISTENT RESERVATION INFORMATION LOST (44/01)"),
    (5, 0x55, 0x04, "ILLEGAL REQUEST: INSUFFICIENT REGISTRATION RESOURCES (55/04)"),
    (0xB, 0x80, 0x01, "ABORTED COMMAND: VENDOR SPECIFIC ADDITIONAL SENSE CODE (80/01)"),
    (0xC, 0x00, 0x00, "SENSE KEY Ch: NO ADDITIONAL SENSE INFORMATION (00/00)"),
])
def test_describe(key: int, asc: int, ascq: int, text: str) -> None:
    assert decode_sense(fixed(key, asc, ascq)).describe() == text


# --- check() ------------------------------------------------------------------


def cc(sense: bytes) -> ScsiResult:
    return ScsiResult(Status.CHECK_CONDITION, sense)


def test_good_returns_the_data() -> None:
    assert check(ScsiResult(Status.GOOD, data=b"abc"), DEV, PAA) == b"abc"
    # RECOVERED ERROR / NO SENSE: the command completed (sg3_utils agrees)
    assert check(ScsiResult(Status.CHECK_CONDITION, fixed(1, 0x17, 0x01), b"x"), DEV, PAA) == b"x"
    assert check(cc(fixed(0, 0, 0)), DEV, PAA) == b""


def test_illegal_request_names_device_and_command() -> None:
    with pytest.raises(IllegalRequest) as info:
        check(cc(fixed(5, 0x24, 0)), DEV, PAA)
    err = info.value
    assert str(err) == (
        "iscsi://127.0.0.1/iqn.2024-01.lab.fence:pr/1: PERSISTENT RESERVE OUT / PREEMPT AND ABORT: "
        "ILLEGAL REQUEST: INVALID FIELD IN CDB (24/00)")
    assert (err.device, err.command) == (DEV, PAA)
    assert err.unsupported  # tgt's answer: no field pointer
    assert isinstance(err, ScsiError) and isinstance(err, GuestfenceError)


@pytest.mark.parametrize(("sense", "unsupported"), [
    (fixed(5, 0x20, 0), True),
    (fixed(5, 0x24, 0, bytes([0xC0, 0, 1])), True),  # points at SERVICE ACTION
    (fixed(5, 0x24, 0, bytes([0xC0, 0, 2])), False),  # points at SCOPE/TYPE
    (fixed(5, 0x24, 0, bytes([0x80, 0, 1])), False),  # in the parameter list
    (fixed(5, 0x26, 0), False),
    (fixed(5, 0x1A, 0), False),
])
def test_unsupported(sense: bytes, unsupported: bool) -> None:
    with pytest.raises(IllegalRequest) as info:
        check(cc(sense), DEV, PAA)
    assert info.value.unsupported is unsupported


def test_other_statuses() -> None:
    with pytest.raises(ReservationConflict, match=f"{PAA}: RESERVATION CONFLICT$"):
        check(ScsiResult(Status.RESERVATION_CONFLICT), DEV, PAA)
    with pytest.raises(UnitAttention, match=r"REGISTRATIONS PREEMPTED \(2A/05\)$") as ua:
        check(cc(bytes.fromhex("7206 2a05 00000000")), DEV, "TEST UNIT READY")
    assert ua.value.sense.asc == 0x2A and ua.value.attempts == 1
    with pytest.raises(BadStatus, match=r"status BUSY \(08h\)") as busy:
        check(ScsiResult(Status.BUSY), DEV, PAA)
    assert busy.value.status == Status.BUSY
    with pytest.raises(BadStatus, match=r"status unknown \(7Eh\)"):
        check(ScsiResult(0x7E), DEV, PAA)


def test_check_condition_for_the_rest() -> None:
    with pytest.raises(CheckCondition, match=r"NOT READY: .*\(04/02\)") as nr:
        check(cc(fixed(2, 0x04, 0x02)), DEV, PAA)
    assert nr.value.sense is not None and nr.value.sense.key == SenseKey.NOT_READY
    with pytest.raises(CheckCondition, match="DATA PROTECT"):
        check(cc(fixed(7, 0x44, 0x01)), DEV, PAA)
    with pytest.raises(CheckCondition, match="without sense data") as empty:
        check(cc(b""), DEV, PAA)
    assert empty.value.sense is None
    with pytest.raises(CheckCondition, match="unreadable sense data"):
        check(cc(b"\x00\x01\x02"), DEV, PAA)
    # a deferred error belongs to an earlier command: never "unsupported", never retried
    with pytest.raises(CheckCondition, match="deferred"):
        check(cc(fixed(6, 0x29, 0, code=0x71)), DEV, PAA)


# --- properties -----------------------------------------------------------------

senses = st.builds(
    Sense, key=st.integers(0, 15), asc=st.integers(0, 255), ascq=st.integers(0, 255),
    deferred=st.booleans(), information=st.none() | st.integers(0, 2**32 - 1),
    sense_key_specific=st.none() | st.binary(min_size=3, max_size=3).map(
        lambda b: bytes([b[0] | 0x80]) + b[1:]))


@given(senses, st.booleans())
def test_encode_decode_round_trip(sense: Sense, descriptor: bool) -> None:
    decoded = decode_sense(sense.encode(descriptor=descriptor))
    expected_code = (0x72 if descriptor else 0x70) + sense.deferred
    assert decoded == Sense(sense.key, sense.asc, sense.ascq, sense.deferred, expected_code,
                            sense.information, sense.sense_key_specific)


@given(st.binary(max_size=64))
def test_garbage_sense_raises_only_protocol_errors(data: bytes) -> None:
    try:
        sense = decode_sense(data)
    except ScsiProtocolError:
        return
    sense.describe()  # whatever decoded must also describe itself


@given(st.integers(0, 255), st.binary(max_size=40))
def test_check_never_fails_with_anything_but_scsi_errors(status: int, sense: bytes) -> None:
    try:
        check(ScsiResult(status, sense, b"d"), DEV, PAA)
    except ScsiError as exc:
        assert str(exc).startswith(f"{DEV}: {PAA}: ")
